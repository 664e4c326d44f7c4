"""Attributions beyond the input gradient: any method, boundary attributions, saliency quality.

Beyond the paper (Etmann et al. 2019 study the input gradient only; ../shared/paper.md §8):

* :func:`attribute`: the map of ``"gradient"``, ``"input_x_gradient"``,
  ``"integrated_gradients"``, ``"smoothgrad"``, ``"boundary_gradient"``,
  ``"boundary_integrated_gradients"`` or any captum attribution method, for the logit Ψ^i, the
  binarized logit Ψ^i − Ψ^j (the nearest rival by default, picked by the one rival machinery
  of :mod:`salign.quantities`) or the shift-invariant log-softmax / margin targets; batched,
  memory-bounded, eval mode restored, no parameter gradient touched. captum is the dependency
  (the ``attributions`` extra); no captum method is re-implemented here.
* :func:`attribution_alignment`: α and α_bin of any of those maps (via
  ``salign.alignment(None, x, saliency=...)``).
* :func:`boundary_attributions`: the saliency, α and IG at and from the boundary points an
  attack found (Wang, Fredrikson & Datta, ICML 2022), as :class:`BoundaryAttribution`.
* :func:`saliency_quality`: does a map look like the digit (claim C4), as
  :class:`SaliencyQuality`.

Layout (private modules; this namespace is the API): ``_targets`` (the scalar f, the one-output
wrapper captum attributes), ``_captum`` (binding, argument checks), ``_methods``
(``attribute``), ``_alignment``, ``_boundary``, ``_quality``. Theory and oracles:
docs/theory.md, "Attributions".
"""

from __future__ import annotations

from salign.attributions._alignment import attribution_alignment
from salign.attributions._boundary import BoundaryAttribution, boundary_attributions
from salign.attributions._methods import BOUNDARY_METHODS, METHODS, attribute
from salign.attributions._quality import SaliencyQuality, saliency_quality
from salign.attributions._targets import MODES, AttributionMode

__all__ = [
    "BOUNDARY_METHODS",
    "METHODS",
    "MODES",
    "AttributionMode",
    "BoundaryAttribution",
    "SaliencyQuality",
    "attribute",
    "attribution_alignment",
    "boundary_attributions",
    "saliency_quality",
]

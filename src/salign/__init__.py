"""salign: measure how adversarial robustness and saliency-map alignment are connected.

Reference implementation of Etmann, Lunz, Maass & Schönlieb, "On the Connection Between
Adversarial Robustness and Saliency Map Interpretability" (ICML 2019, arXiv 1905.04172).

Quick tour::

    import salign
    model = salign.models.build("smallnet")
    x, y = salign.data.load("mnist", "test")
    a = salign.analyze(model, x[:256], y[:256])          # α, α_bin, ρ̃, β, ... per sample
    r = salign.robustness(model, x[:64], budget="fast")  # ρ(x) by a verified attack ensemble
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _distribution_version
from typing import Any

try:  # pyproject.toml is the one source of the version; the installed metadata carries it
    __version__ = _distribution_version("saliency-alignment")
except PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

_LAZY = {
    # core quantities
    "saliency": "salign.quantities",
    "alignment": "salign.quantities",
    "linearized_robustness": "salign.quantities",
    "effective_bias": "salign.quantities",
    "bias_shifted_input": "salign.quantities",
    "analyze": "salign.quantities",
    "Analysis": "salign.quantities",
    # attributions beyond the gradient (captum)
    "attribute": "salign.attributions",
    "attribution_alignment": "salign.attributions",
    "boundary_attributions": "salign.attributions",
    "saliency_quality": "salign.attributions",
    # robustness by attacks
    "robustness": "salign.attacks",
    "AttackResult": "salign.attacks",
}
_SUBMODULES = {"attacks", "attributions", "data", "models", "training", "experiments", "report", "errors"}

__all__ = sorted([*_LAZY, *_SUBMODULES, "__version__"])


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import salign` fast and free of optional dependencies (matplotlib, ...).
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        return importlib.import_module(f"salign.{name}")
    raise AttributeError(f"module 'salign' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__

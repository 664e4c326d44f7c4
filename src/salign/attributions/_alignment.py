"""α and α_bin of any attribution method: the attribution scored by :func:`salign.alignment`."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from salign.attacks.result import AttackResult
from salign.attributions._methods import attribute
from salign.attributions._targets import AttributionMode
from salign.quantities import alignment


def attribution_alignment(
    model: nn.Module,
    x: Tensor,
    method: str | object = "gradient",
    target: Tensor | None = None,
    *,
    mode: AttributionMode = "binarized",
    rival: Any = None,
    boundary: Tensor | AttackResult | None = None,
    normalized: bool = False,
    origin: Tensor | None = None,
    batch_size: int | None = None,
    candidates: int | None = None,
    check_range: bool = True,
    norm: float | str = 2,
    **method_options: Any,
) -> Tensor:
    """Alignment of x with the attribution of ``method`` (Etmann et al. 2019, D3/D4, any map).

    α = |⟨x − o, a(x)⟩| / ‖a(x)‖_q with a = :func:`attribute` (x, ``method``, ...): α for
    ``mode="logit"`` and α_bin for ``mode="binarized"`` (the default), computed by
    ``salign.alignment(None, x, saliency=a)``, the one definition of α. ``method="gradient"``
    gives :func:`salign.alignment`'s own value.

    Args: as :func:`attribute` (the map) and :func:`salign.alignment` (``normalized``,
    ``origin``, ``norm``).

    Returns:
        (N,) tensor on x's device; NaN (with a counted warning) where the map is zero.
    """
    attr = attribute(
        model,
        x,
        method,
        target,
        mode=mode,
        rival=rival,
        boundary=boundary,
        batch_size=batch_size,
        candidates=candidates,
        check_range=check_range,
        norm=norm,
        **method_options,
    )
    return alignment(
        None, x, saliency=attr, normalized=normalized, origin=origin, norm=norm, check_range=check_range
    )

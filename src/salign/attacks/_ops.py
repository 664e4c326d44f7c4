"""Small tensor operations shared by the attacks: per-sample norms, broadcasting, the logit
margin, quantisation and the adversarial test."""

from __future__ import annotations

import torch
from torch import Tensor

from salign.errors import InputError


def batch_view(t: Tensor, like: Tensor) -> Tensor:
    """Reshape a per-sample vector ``t`` (n,) to broadcast against ``like`` (n, ...)."""
    return t.view(-1, *([1] * (like.ndim - 1)))


def l2_norm(t: Tensor) -> Tensor:
    """Per-sample L2 norm of a batch."""
    return t.flatten(1).norm(p=2, dim=1)


def quantize(x: Tensor, levels: int | None) -> Tensor:
    """Round ``x`` in [0, 1] to ``levels`` evenly spaced values (identity when ``levels`` is None)."""
    if levels is None:
        return x
    return (x * (levels - 1)).round() / (levels - 1)


def adversarial(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(is_adversarial, finite): prediction differs from ``labels`` and all logits are finite."""
    finite = torch.isfinite(logits).all(1)
    return (logits.argmax(1) != labels) & finite, finite


def logit_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """``Ψ_y − max_{j≠y} Ψ_j`` per sample: positive while the label is predicted."""
    label_logit = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.scatter(1, labels[:, None], float("-inf")).amax(1)
    return label_logit - other


def check_positive(value: object, name: str, *, integer: bool = False, allow_zero: bool = False) -> None:
    """Raise an InputError naming ``name`` unless ``value`` is a positive (or non-negative) number."""
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (value >= 0 if allow_zero else value > 0):  # type: ignore[operator]
        kind = "integer" if integer else "number"
        raise InputError(
            f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}"
        )


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    """Raise an InputError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")

"""Argument types and checks, and the small per-sample numerics every quantity shares."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from salign._norms import dual_exponent
from salign._validation import check_inputs, check_labels, check_model
from salign.errors import InputError, InputTypeError

Mode = Literal["logit", "binarized", "loss"]
Rival = Literal["nearest", "runner_up"] | Tensor
Strategy = Literal["auto", "loop", "batched", "vmap"]


# --------------------------------------------------------------------------------------------
# Argument checks
# --------------------------------------------------------------------------------------------


def check_model_and_inputs(model: object, x: object, check_range: bool) -> None:
    """Validate x (type, shape, finiteness, range) and the model (type, device)."""
    check_inputs(x, check_range=check_range)
    assert isinstance(x, Tensor)
    check_model(model, x)
    assert isinstance(model, nn.Module)


def check_mode(mode: str) -> None:
    if mode not in ("logit", "binarized", "loss"):
        raise InputError(f"mode must be 'logit', 'binarized' or 'loss', got {mode!r}")


def check_rival_arg(rival: object) -> None:
    if isinstance(rival, Tensor):
        return
    if rival not in ("nearest", "runner_up"):
        raise InputError(f"rival must be 'nearest', 'runner_up' or a tensor of class indices, got {rival!r}")


def check_candidates(candidates: object) -> int | None:
    """``candidates``: how many rival classes the nearest-rival search tries (None = all)."""
    if candidates is None:
        return None
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InputError(f"candidates must be a positive int (or None for all classes), got {candidates!r}")
    return candidates


def check_origin(origin: object, x: Tensor) -> Tensor | None:
    if origin is None:
        return None
    if not isinstance(origin, Tensor):
        raise InputTypeError(
            f"origin must be a tensor broadcastable to x or None, got {type(origin).__name__}"
        )
    try:
        torch.broadcast_shapes(origin.shape, x.shape)
    except RuntimeError as exc:
        raise InputError(
            f"origin of shape {tuple(origin.shape)} does not broadcast to x of shape {tuple(x.shape)}"
        ) from exc
    return origin.to(device=x.device, dtype=x.dtype)


def resolve_target(target: object, logits: Tensor, *, name: str = "target") -> Tensor:
    """The class i per sample: ``target`` checked against K, or the predicted class i*."""
    if target is None:
        return logits.detach().argmax(1)
    return check_labels(target, logits.shape[0], logits.shape[1], name=name).to(logits.device)


# --------------------------------------------------------------------------------------------
# Per-sample numerics (every tensor is (N, ...) and reduced over all but the first dimension)
# --------------------------------------------------------------------------------------------


def flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def dot(a: Tensor, b: Tensor) -> Tensor:
    """⟨a_n, b_n⟩ per sample."""
    return (flat(a) * flat(b)).sum(1)


def norm(a: Tensor, p: float = 2.0) -> Tensor:
    """‖a_n‖_p per sample (Euclidean by default)."""
    if p == 2:
        return torch.linalg.vector_norm(flat(a), dim=1)
    return torch.linalg.vector_norm(flat(a), ord=p, dim=1)


def dual_norm(a: Tensor, p: float = 2.0) -> Tensor:
    """‖a_n‖_q per sample, q the dual exponent of p (1/p + 1/q = 1): the norm that turns an
    inner product with a gradient into an Lp distance (docs/theory.md, Lemma P)."""
    return norm(a, dual_exponent(p))


def div_or_nan(num: Tensor, den: Tensor) -> tuple[Tensor, int]:
    """num / den with NaN where den == 0 (never a silent inf); also returns how many."""
    zero = den == 0
    out = num / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.full_like(out, math.nan), out), int(zero.sum())


def projection(centred: Tensor, direction: Tensor, p: float = 2.0) -> tuple[Tensor, int]:
    """|⟨x − o, s⟩| / ‖s‖_q per sample (the alignment α_p of D3 / D3_p; ‖s‖ for p = 2), NaN where
    s = 0, and how many."""
    return div_or_nan(dot(centred, direction).abs(), dual_norm(direction, p))


def logit_gap(logits: Tensor, target: Tensor, other: Tensor) -> Tensor:
    """Ψ^i − Ψ^j per sample: ``target`` (N,) holds i, ``other`` (N,) or (N, M) holds j."""
    cols = other if other.ndim == 2 else other[:, None]
    gap = logits.gather(1, target[:, None]) - logits.gather(1, cols)
    return gap if other.ndim == 2 else gap[:, 0]


def one_hot_rows(classes: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """(N, M) class indices → (M, N, K) one-hot cotangents."""
    return torch.nn.functional.one_hot(classes.t(), k).to(dtype)

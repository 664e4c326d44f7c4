"""Alignment α (D3, D4), linearised robustness ρ̃ (D6), effective bias β and the bias-shifted
input (D7): the scalar quantities built on a saliency map."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._validation import check_inputs, warn_count
from salign.errors import InputError, InputTypeError
from salign.quantities._common import (
    Mode,
    Rival,
    Strategy,
    check_origin,
    div_or_nan,
    dot,
    dual_norm,
    projection,
)
from salign.quantities._common import norm as lp_norm
from salign.quantities._saliency import Map, saliency_map


def alignment(
    model: nn.Module | None,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Mode = "binarized",
    rival: Rival = "nearest",
    normalized: bool = False,
    origin: Tensor | None = None,
    saliency: Tensor | None = None,
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
    norm: float | str = 2,
) -> Tensor:
    """Alignment of an input with its saliency map (Etmann et al. 2019, D3/D4).

    α(x) = |⟨x − origin, s(x)⟩| / ‖s(x)‖, the length of the projection of x − origin onto the
    saliency direction. It has the units of a distance: for a bias-free linear model and the
    binarized map of the nearest rival, α(x) equals the distance ρ(x) to the decision boundary
    (T1/T2). ``normalized=True`` divides by ‖x − origin‖, giving |cos∠(x − origin, s(x))|.

    With ``norm=p`` (``"inf"`` or 1) it is the dual-norm alignment α_p = |⟨x − origin, s⟩| /
    ‖s‖_q, q the dual exponent, which equals the Lp distance ρ_p for bias-free linear models
    (docs/theory.md, D3_p, T2_p); the nearest rival is then the nearest in Lp, and
    ``normalized=True`` divides by ‖x − origin‖_p (a value in [0, 1] by Hölder).

    A zero saliency map (or, when normalized, x = origin) gives NaN and a warning that counts
    the samples; never an inf.

    Args:
        model: classifier returning logits; may be None when ``saliency`` is given.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample (N,); None = predicted class.
        mode: which saliency map, as in :func:`saliency`.
        rival: the rival class of the binarized map, as in :func:`saliency`.
        candidates: the number of rival classes searched for ``rival="nearest"``.
        strategy: gradient strategy for several classes, as in :func:`saliency`.
        normalized: divide by ‖x − origin‖ (D4).
        origin: reference point, a tensor broadcastable to x (e.g. the data mean, as the paper
            used for ImageNet); None = 0.
        saliency: a precomputed attribution of x's shape to score instead of computing one
            (``model``, ``target``, ``mode`` and ``rival`` are then ignored). Any attribution
            works, e.g. Captum's::

                from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
                attr = Saliency(model).attribute(x, target=y, abs=False)   # = saliency(mode="logit")
                a_sal = salign.alignment(None, x, saliency=attr)
                ig = IntegratedGradients(model).attribute(x, target=y, n_steps=32)
                a_ig = salign.alignment(None, x, saliency=ig)
                sg = NoiseTunnel(Saliency(model)).attribute(
                    x, nt_type="smoothgrad", nt_samples=16, stdevs=0.1, target=y, abs=False)
                a_sg = salign.alignment(None, x, saliency=sg, normalized=True)

        check_range: reject inputs outside [0, 1].
        norm: 2 (default, the paper's), ``"inf"`` / ``float("inf")`` or 1.

    Returns:
        (N,) tensor on x's device.
    """
    p = parse_norm(norm)
    if saliency is not None:
        check_inputs(x, check_range=check_range)
        if not isinstance(saliency, Tensor):
            raise InputTypeError(f"saliency must be a tensor of x's shape, got {type(saliency).__name__}")
        if saliency.shape != x.shape:
            raise InputError(f"saliency must have x's shape {tuple(x.shape)}, got {tuple(saliency.shape)}")
        s = saliency.detach().to(device=x.device, dtype=x.dtype)
    else:
        if model is None:
            raise InputTypeError("model is None: pass a model, or a precomputed attribution as saliency=")
        s = saliency_map(model, x, target, mode, rival, candidates, strategy, check_range, norm=p).grad
    org = check_origin(origin, x)
    centred = x.detach() if org is None else x.detach() - org
    alpha, n_zero = projection(centred, s, p)
    warn_count(n_zero, x.shape[0], "the saliency map is zero, so the alignment is NaN")
    if normalized:
        alpha, n_zero_x = div_or_nan(alpha, lp_norm(centred, p))
        warn_count(n_zero_x, x.shape[0], "x equals the origin, so the normalized alignment is NaN")
    return alpha


def linearized_robustness(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    rival: Rival = "nearest",
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
    norm: float | str = 2,
) -> Tensor:
    """Linearised robustness ρ̃(x) (Etmann et al. 2019, D6).

    ρ̃(x) = min_{j≠i} (Ψ^i(x) − Ψ^j(x)) / ‖∇Ψ^i(x) − ∇Ψ^j(x)‖ with ``rival="nearest"``: the
    distance to the nearest decision boundary of the linearisation of Ψ at x (exact for
    bias-free linear models, T2; DeepFool's first step). With ``rival="runner_up"`` or a tensor
    of classes, the same ratio for that one pair (an upper bound on the nearest-rival value).

    Signed: negative where the target is not the predicted class. A zero binarized gradient
    gives NaN with a warning.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample (N,); None = the predicted class i*.
        rival: "nearest", "runner_up" or a tensor (N,) of rival classes.
        candidates: for "nearest", the number of rival classes searched, the highest-logit
            ones (None = all K − 1).
        strategy: gradient strategy; see :data:`STRATEGIES`.
        check_range: reject inputs outside [0, 1].
        norm: 2 (default); ``"inf"`` or 1 give ρ̃_p = (Ψ^i − Ψ^j) / ‖g_j‖_q, the Lp distance to
            the nearest linearised boundary (docs/theory.md, D6_p).

    Returns:
        (N,) tensor on x's device.
    """
    p = parse_norm(norm)
    sal = saliency_map(model, x, target, "binarized", rival, candidates, strategy, check_range, norm=p)
    rho, n_zero = div_or_nan(sal.value, dual_norm(sal.grad, p))
    warn_count(n_zero, x.shape[0], "the binarized gradient is zero, so ρ̃ is NaN")
    return rho


def effective_bias(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Literal["logit", "binarized"] = "binarized",
    rival: Rival = "nearest",
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
    norm: float | str = 2,
) -> Tensor:
    """Effective bias β(x) = Ψ(x) − ⟨∇Ψ(x), x⟩ (Etmann et al. 2019, D7 / T3).

    For piecewise-linear networks (ReLU, max/avg-pool, affine layers, BatchNorm in eval mode)
    Euler's theorem gives Ψ(x) = ⟨∇Ψ(x), x⟩ + β(x) where β collects every bias-like term;
    β ≡ 0 for bias-free networks. ``mode="logit"`` uses Ψ = Ψ^i (β^i); ``mode="binarized"``
    uses the pair Ψ^i − Ψ^j (β_j = β^i − β^j), with j chosen by ``rival``.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample (N,); None = the predicted class i*.
        mode: "logit" or "binarized".
        rival: rival choice for ``mode="binarized"``, see :func:`saliency`.
        candidates: the number of rival classes searched for ``rival="nearest"``.
        strategy: gradient strategy for several classes, see :func:`saliency`.
        check_range: reject inputs outside [0, 1].
        norm: the norm in which ``rival="nearest"`` is nearest (β itself has no norm).

    Returns:
        (N,) tensor on x's device.
    """
    p = parse_norm(norm)
    if mode not in ("logit", "binarized"):
        raise InputError(
            f"effective_bias needs mode 'logit' or 'binarized' (the loss is not homogeneous), got {mode!r}"
        )
    sal = saliency_map(model, x, target, mode, rival, candidates, strategy, check_range, norm=p)
    return _beta(sal, x)


def bias_shifted_input(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Literal["logit", "binarized"] = "binarized",
    rival: Rival = "nearest",
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
) -> Tensor:
    """The bias-shifted input x' = x + β(x) g(x)/‖g(x)‖² (Etmann et al. 2019, D7).

    It folds the effective bias into the image: ⟨g, x'⟩ = ⟨g, x⟩ + β = Ψ (the logit or the
    binarized logit), so a bias-free reading of x' reproduces the model's value. Rows with a
    zero gradient are returned unchanged, with a warning that counts them. The result may
    leave [0, 1].

    Args: as :func:`effective_bias`.

    Returns:
        Tensor of x's shape.
    """
    if mode not in ("logit", "binarized"):
        raise InputError(f"bias_shifted_input needs mode 'logit' or 'binarized', got {mode!r}")
    sal = saliency_map(model, x, target, mode, rival, candidates, strategy, check_range)
    scale, n_zero = div_or_nan(_beta(sal, x), lp_norm(sal.grad) ** 2)
    warn_count(n_zero, x.shape[0], "the gradient is zero, so the input is returned unshifted")
    return x.detach() + torch.nan_to_num(scale, nan=0.0).view(-1, *([1] * (x.ndim - 1))) * sal.grad


def _beta(sal: Map, x: Tensor) -> Tensor:
    """β = Ψ − ⟨∇Ψ, x⟩ (D7) of the value ``sal`` differentiates, per sample."""
    return sal.value - dot(sal.grad, x.detach())

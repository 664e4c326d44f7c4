"""Input-gradient (local Lipschitz) penalties: double backpropagation and its finite-difference proxy.

The paper (Etmann et al., 2019, §4; ``/work/shared/paper.md`` §4) makes models of growing
robustness by adding ``λ · mean_i ‖∇_x CE(Ψ(x_i), y_i)‖₂²`` to the cross-entropy
(double backpropagation, Drucker & LeCun 1992; Ross & Doshi-Velez 2018). Finlay & Oberman
(2019, "Scaleable input gradient regularization for adversarial robustness") replace the double
backward by a finite difference along the normalised gradient direction.

Everything here is a pure, batched, device-agnostic function. These functions are meant to be
called inside a training step, so, unlike the measurement functions of :mod:`salign`, they use
the model in whatever mode it is in (train mode: Dropout on, BatchNorm with batch statistics,
as the authors did) and build a graph through which the caller back-propagates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._validation import check_inputs, check_labels, check_model, check_model_on
from salign.errors import InputError

Method = Literal["double_backprop", "finite_difference"]
Target = Literal["loss", "logit", "binarized"]
Scaling = Literal["per_example", "batch_mean"]

METHODS: tuple[str, ...] = ("double_backprop", "finite_difference")
TARGETS: tuple[str, ...] = ("loss", "logit", "binarized")
SCALINGS: tuple[str, ...] = ("per_example", "batch_mean")


class SameRandomness:
    """Replays the random-number state so a second forward draws the first forward's Dropout masks.

    The finite difference ``(s(x + h d) − s(x)) / h`` compares two forwards of the same network;
    in train mode, Dropout would otherwise draw a new mask for the second one and the
    difference would measure the change of mask (O(1)/h), not the gradient. Created just
    before the first forward; :meth:`replay` just before the second. The state after the
    second forward is then the state after the first, as if the step had one forward.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.accelerator: Tensor | None = None
        if device.type == "cuda":
            self.accelerator = torch.cuda.get_rng_state(device)
        elif device.type == "mps":
            self.accelerator = torch.mps.get_rng_state()

    def replay(self) -> None:
        torch.set_rng_state(self.cpu)
        if self.accelerator is None:
            return
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(self.accelerator, self.device)
        else:
            torch.mps.set_rng_state(self.accelerator)


@dataclass(frozen=True)
class PenaltyTerms:
    """Per-example pieces of a regularised step, all of shape (N,).

    Attributes:
        penalty: the per-example penalty ``‖∇_x s_i‖_p^p`` (already divided by ``B^p`` under
            ``scaling="batch_mean"``), differentiable w.r.t. the model parameters.
        cross_entropy: per-example cross-entropy at the clean inputs, differentiable.
        grad_norm: detached per-example ``‖∇_x s_i‖₂`` (unscaled), for logging.
        correct: detached boolean, prediction equals label.
    """

    penalty: Tensor
    cross_entropy: Tensor
    grad_norm: Tensor
    correct: Tensor


def _target_scalar(logits: Tensor, y: Tensor, target: str) -> tuple[Tensor, Tensor]:
    """Per-example cross-entropy and the per-example scalar whose input gradient is penalised."""
    ce = F.cross_entropy(logits, y, reduction="none")
    if target == "loss":
        return ce, ce
    true_logit = logits.gather(1, y[:, None]).squeeze(1)
    if target == "logit":
        return ce, true_logit
    # binarized: Ψ^y − Ψ^j with j the highest-scoring other class (the runner-up to the label).
    others = logits.detach().clone()
    others.scatter_(1, y[:, None], float("-inf"))
    rival = others.argmax(1)
    return ce, true_logit - logits.gather(1, rival[:, None]).squeeze(1)


def _norm_power(g: Tensor, p: float) -> Tensor:
    """Per-example ``‖g_i‖_p^p`` for finite p, ``‖g_i‖_∞`` for p = ∞."""
    flat = g.flatten(1)
    if math.isinf(p):
        return flat.abs().amax(1)
    if p == 2:
        return flat.pow(2).sum(1)
    if p == 1:
        return flat.abs().sum(1)
    return flat.abs().pow(p).sum(1)


def _dual_direction(g: Tensor, p: float) -> tuple[Tensor, Tensor]:
    """Unit direction d with ⟨g, d⟩ = ‖g‖_p and ‖d‖_{p*} = 1 (Hölder), and ‖g‖_p; both detached."""
    flat = g.detach().flatten(1)
    tiny = torch.finfo(flat.dtype).tiny
    if p == 2:
        norm = flat.norm(dim=1)
        d = flat / norm.clamp_min(tiny)[:, None]
    elif p == 1:
        norm = flat.abs().sum(1)
        d = flat.sign()
    else:
        norm = flat.norm(p=p, dim=1)
        d = flat.sign() * (flat.abs() / norm.clamp_min(tiny)[:, None]).pow(p - 1)
    return d.view_as(g), norm


def penalty_terms(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    p: float = 2.0,
    method: Method = "double_backprop",
    target: Target = "loss",
    scaling: Scaling = "per_example",
    h: float = 1e-2,
    batch_size: int | None = None,
    step_model: nn.Module | None = None,
) -> PenaltyTerms:
    """Per-example penalty and cross-entropy from one forward pass (the trainer's building block).

    Arguments as in :func:`gradient_norm_penalty`; ``batch_size`` is the B of
    ``scaling="batch_mean"`` (default ``len(x)``; the trainer passes the global batch size so
    the value does not depend on the number of DDP ranks or on ``penalty_fraction``).
    ``step_model`` runs the extra finite-difference forward (default ``model``; under DDP the
    trainer passes the unwrapped module so that DDP sees one forward per backward).
    Inputs are assumed valid (the public function checks them).
    """
    n = x.shape[0]
    scale = 1.0
    if scaling == "batch_mean":
        b = float(batch_size if batch_size is not None else n)
        scale = 1.0 / b if math.isinf(p) else b ** (-p)  # ‖g/B‖_p^p = ‖g‖_p^p / B^p
    randomness = SameRandomness(x.device) if method == "finite_difference" else None

    x_req = x.detach().requires_grad_(True)
    logits = model(x_req)
    ce, scalar = _target_scalar(logits, y, target)
    correct = (logits.detach().argmax(1) == y).detach()

    if method == "double_backprop":
        # One backward w.r.t. the inputs only (no parameter gradients), keeping its graph so
        # that the caller's backward differentiates through it (the double backward).
        (g,) = torch.autograd.grad(scalar.sum(), x_req, create_graph=True)
        pen = _norm_power(g, p) * scale
        grad_norm = g.detach().flatten(1).norm(dim=1)
        return PenaltyTerms(pen, ce, grad_norm, correct)

    # Finite difference (Finlay & Oberman 2019): ‖∇s(x)‖_p ≈ (s(x + h·d) − s(x)) / h with d the
    # detached dual-norm direction of the gradient. The gradient is taken w.r.t. the inputs only
    # and without create_graph: no double backward.
    (g,) = torch.autograd.grad(scalar.sum(), x_req, retain_graph=True)
    d, _ = _dual_direction(g, p)
    x_step = (x.detach() + h * d).detach()
    if randomness is not None:
        randomness.replay()  # the same Dropout masks as the first forward
    logits_step = (step_model if step_model is not None else model)(x_step)
    _, scalar_step = _target_scalar(logits_step, y, target)
    directional = (scalar_step - scalar) / h
    pen = directional.abs().pow(p) * scale if p != 2 else directional.pow(2) * scale
    grad_norm = g.flatten(1).norm(dim=1)
    return PenaltyTerms(pen, ce, grad_norm, correct)


def gradient_norm_penalty(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    p: float = 2.0,
    method: Method = "double_backprop",
    target: Target = "loss",
    scaling: Scaling = "per_example",
    h: float = 1e-2,
    batch_size: int | None = None,
    return_loss: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Input-gradient penalty ``mean_i ‖∇_x s(x_i, y_i)‖_p^p`` (without the factor λ).

    With ``method="double_backprop"`` this is the regulariser of Etmann et al. (2019, §4; the
    objective ``CE + λ·mean_i ‖∇_x CE_i‖₂²`` of double backpropagation, Drucker & LeCun 1992):

    .. math::  R(θ) = \frac{1}{N}\sum_i \lVert \nabla_x s_θ(x_i, y_i) \rVert_p^p .

    The returned tensor is differentiable w.r.t. the model parameters (its graph contains the
    input gradient), so ``(ce + lam * penalty).backward()`` performs the double backward.

    **Scaling.** ``scaling="per_example"`` is the formula above. The authors' code instead
    differentiates the *batch-mean* loss, ``G = ∇_x (1/B) Σ_k CE_k``, so ``G_i = ∇_x CE_i / B``
    and their penalty ``λ·mean_i ‖G_i‖₂²`` equals ``(λ/B²)·mean_i ‖∇_x CE_i‖₂²``: their λ = 10
    at batch 100 is an effective per-example weight of 1e-3 (paper.md §4, pitfall 9.1).
    ``scaling="batch_mean"`` divides the per-example value by ``B^p`` so the authors' λ values
    can be used as they are (``B = batch_size``, default ``len(x)``).

    **Method.** ``"finite_difference"`` is the approximation of Finlay & Oberman (2019): with
    ``d`` the detached unit direction of the gradient (for p = 2, ``d = g/‖g‖₂``; for other p
    the Hölder dual direction, so ``⟨g, d⟩ = ‖g‖_p``), ``‖g‖_p ≈ (s(x + h d) − s(x)) / h``.
    It needs one input-gradient backward and one extra forward, and no double backward; the
    extra forward replays the random state of the first, so in train mode both see the same
    Dropout masks (otherwise the difference measures the change of mask). The
    error is O(h) times the curvature of ``s`` along ``d``; for piecewise-linear (ReLU) models
    it is exact while ``x + h d`` stays in the same linear region. Not defined for p = ∞.
    Measured step costs of both methods (against a plain step and against the floor of
    two forwards and two backwards): docs/benchmarks/training.md.

    Args:
        model: a classifier returning logits (N, K). Used in its current mode: in train mode
            Dropout is active and BatchNorm uses (and couples through) batch statistics, as in
            the authors' code.
        x: inputs (N, C, H, W) or (N, D) in [0, 1]; not modified, need not require grad.
        y: integer labels (N,).
        p: the norm exponent, ``p >= 1`` (2 in the paper); ``float("inf")`` gives ``‖g‖_∞``
            (double_backprop only).
        method: ``"double_backprop"`` (exact) or ``"finite_difference"`` (Finlay & Oberman).
        target: which scalar's input gradient is penalised: ``"loss"`` (cross-entropy, the
            paper), ``"logit"`` (the true-class logit Ψ^y, the authors' "logits" mode) or
            ``"binarized"`` (Ψ^y − Ψ^j, j the highest other logit: the binarized saliency).
        scaling: ``"per_example"`` or ``"batch_mean"`` (see above).
        h: finite-difference step in input units (finite_difference only).
        batch_size: B for ``scaling="batch_mean"`` (default ``len(x)``).
        return_loss: also return the mean cross-entropy of the same forward pass, so a
            regularised step costs one forward.

    Returns:
        The scalar penalty, or ``(penalty, mean cross-entropy)`` when ``return_loss``.

    Raises:
        InputError / InputTypeError: bad ``x``, ``y`` or option values (naming the argument).

    Example::

        penalty, ce = gradient_norm_penalty(model, x, y, return_loss=True)
        (ce + 0.01 * penalty).backward()
        optimizer.step()
    """
    check_model(model, None)
    check_inputs(x, name="x", check_range=True)
    y = check_labels(y, x.shape[0], name="y").to(x.device)
    validate_options(p=p, method=method, target=target, scaling=scaling, h=h)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}")
    check_model(model, x)
    try:
        terms = penalty_terms(
            model, x, y, p=p, method=method, target=target, scaling=scaling, h=h, batch_size=batch_size
        )
    except (RuntimeError, IndexError, TypeError, ValueError):
        # torch's error from inside the model, the loss or autograd: name the argument at fault
        check_model_on(model, x, y, labels_name="y")
        raise
    if not bool(torch.isfinite(terms.cross_entropy).all()):
        check_model_on(model, x, y, labels_name="y")  # NaN/Inf logits: a ModelOutputError
    penalty = terms.penalty.mean()
    if return_loss:
        return penalty, terms.cross_entropy.mean()
    return penalty


def validate_options(*, p: float, method: str, target: str, scaling: str, h: float) -> None:
    """Raise :class:`InputError` naming the first invalid penalty option."""
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if target not in TARGETS:
        raise InputError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    if scaling not in SCALINGS:
        raise InputError(f"scaling must be one of {', '.join(SCALINGS)}, got {scaling!r}")
    if not isinstance(p, (int, float)) or math.isnan(p) or p < 1:
        raise InputError(f"p must be a number >= 1 (or float('inf')), got {p!r}")
    if method == "finite_difference" and math.isinf(p):
        raise InputError("p = inf is not supported with method='finite_difference'; use double_backprop")
    if not isinstance(h, (int, float)) or not (h > 0) or math.isinf(h):
        raise InputError(f"h must be a positive finite step, got {h!r}")

"""Carlini & Wagner L2 attack with a binary search over the trade-off constant (IEEE S&P 2017,
arXiv 1608.04644)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from salign.attacks._core import Tracker, adversarial, check_positive, run_attack
from salign.attacks.fmn import logit_margin
from salign.attacks.result import AttackResult


def _carlini_wagner(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    tracker: Tracker,
    *,
    steps: int = 1000,
    binary_search_steps: int = 9,
    initial_const: float = 1e-3,
    learning_rate: float = 0.01,
    confidence: float = 0.0,
    abort_early: bool = True,
) -> None:
    """C&W iterations on the samples of ``tracker`` (see :func:`carlini_wagner`)."""
    n = x.shape[0]
    eps = 1e-6
    w0 = torch.atanh((2 * x - 1).clamp(-1 + eps, 1 - eps))
    attacked = tracker.active.clone()
    const = torch.full((n,), float(initial_const), device=x.device, dtype=x.dtype)
    lower = torch.zeros_like(const)
    upper = torch.full_like(const, float("inf"))
    beta1, beta2 = 0.9, 0.999
    for _ in range(binary_search_steps):
        idx = attacked.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        xa, lab, c = x[idx], labels[idx], const[idx]
        w = torch.zeros_like(xa)
        m, v = torch.zeros_like(xa), torch.zeros_like(xa)
        succeeded = torch.zeros(idx.numel(), dtype=torch.bool, device=x.device)
        running = torch.ones_like(succeeded)
        prev_loss = torch.full_like(c, float("inf"))
        for t in range(1, steps + 1):
            rows = running.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            wr = w[rows].requires_grad_(True)
            point = (torch.tanh(w0[idx[rows]] + wr) + 1) / 2
            logits = model(point)
            margin = logit_margin(logits, lab[rows])
            dist_sq = (point - xa[rows]).flatten(1).pow(2).sum(1)
            loss = dist_sq + c[rows] * (margin + confidence).clamp(min=0)  # objective (f6)
            (grad,) = torch.autograd.grad(loss.sum(), wr)
            with torch.no_grad():
                is_adv, finite = adversarial(logits, lab[rows])
                tracker.update(idx[rows], point, dist_sq.sqrt(), is_adv, finite)
                succeeded[rows] |= is_adv
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                mr = beta1 * m[rows] + (1 - beta1) * grad  # Adam (Kingma & Ba 2015)
                vr = beta2 * v[rows] + (1 - beta2) * grad * grad
                m[rows], v[rows] = mr, vr
                update = learning_rate * (mr / (1 - beta1**t)) / ((vr / (1 - beta2**t)).sqrt() + 1e-8)
                w[rows] = wr.detach() - update
                if abort_early and t % max(1, steps // 10) == 0:
                    stalled = loss.detach() > 0.9999 * prev_loss[rows]
                    prev_loss[rows] = loss.detach()
                    running[rows[stalled]] = False
        # binary search over c: smaller after success, larger (×10 until bracketed) after failure
        up = torch.where(succeeded, torch.minimum(upper[idx], c), upper[idx])
        lo = torch.where(succeeded, lower[idx], torch.maximum(lower[idx], c))
        upper[idx], lower[idx] = up, lo
        const[idx] = torch.where(torch.isfinite(up), (lo + up) / 2, c * 10)


def carlini_wagner(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    steps: int = 1000,
    binary_search_steps: int = 9,
    initial_const: float = 1e-3,
    learning_rate: float = 0.01,
    confidence: float = 0.0,
    abort_early: bool = True,
    line_search_steps: int = 20,
    polish_steps: int = 2,
    levels: int | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """Carlini & Wagner L2 attack (IEEE S&P 2017, §V) with a binary search over the constant c.

    Optimises ``‖x' − x‖² + c · max(Ψ_y − max_{j≠y} Ψ_j + κ, 0)`` over ``x' = (tanh(w) + 1)/2``
    (so the box [0, 1] holds by construction) with Adam; after each run of ``steps`` steps, c is
    halved towards the last failure where the run succeeded and grown (×10 until bracketed)
    where it failed. The smallest adversarial point visited over all runs is returned.

    Args:
        model: classifier returning logits (N, K) for inputs in [0, 1].
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: classes (N,) to move away from; ``None`` uses the predicted class.
        steps: Adam steps per value of c (each: 1 forward + 1 backward per running sample).
        binary_search_steps: number of values of c tried per sample (9 in the paper).
        initial_const: first value of c (1e-3 in the paper).
        learning_rate: Adam step size (0.01).
        confidence: margin κ required on the logits (0 gives minimal perturbations).
        abort_early: stop a run for a sample when its loss has not decreased by 0.01% over
            ``steps // 10`` steps.
        line_search_steps: bisection steps moving the best point onto the boundary (0: off).
        polish_steps: rounds of the final polish: one DeepFool step from ``x`` with the
            gradients taken at the best point, then a line search (each round: 1 forward,
            up to 10 backwards, ``line_search_steps`` forwards per sample; 0 turns it off).
        levels: quantise adversarial points to this many levels and verify after quantisation.
        batch_size: process the inputs in chunks of this size.

    Returns:
        An :class:`AttackResult` with the smallest verified adversarial point per sample.
    """
    check_positive(steps, "steps", integer=True)
    check_positive(binary_search_steps, "binary_search_steps", integer=True)
    check_positive(initial_const, "initial_const")
    check_positive(learning_rate, "learning_rate")
    return run_attack(
        "carlini_wagner",
        _carlini_wagner,
        model,
        x,
        labels,
        line_search_steps=line_search_steps,
        polish_steps=polish_steps,
        levels=levels,
        batch_size=batch_size,
        steps=steps,
        binary_search_steps=binary_search_steps,
        initial_const=initial_const,
        learning_rate=learning_rate,
        confidence=confidence,
        abort_early=abort_early,
    )


__all__ = ["carlini_wagner"]

"""Decoupled Direction and Norm attack, L2 (Rony et al., CVPR 2019, arXiv 1811.09600)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign.attacks._engine import Attack
from salign.attacks._ops import (
    adversarial,
    batch_view,
    check_choice,
    check_positive,
    cosine_annealing,
    l2_norm,
    logit_margin,
)
from salign.attacks._tracker import ALL, Tracker, step_along_gradient, write_rows
from salign.attacks.result import AttackResult

#: Fraction of the schedule (its tail) that ``loss="ce_then_margin"`` runs on the margin.
MARGIN_TAIL = 0.5

LOSSES = ("ce", "margin", "ce_then_margin")


@dataclass(frozen=True)
class DDN(Attack):
    """Decoupled Direction and Norm (DDN) L2 attack (Rony et al., CVPR 2019, Algorithm 1).

    Decouples the direction and the norm of the perturbation δ: each step moves δ along the
    normalised gradient ``g`` of the cross-entropy of the label, ``δ ← δ + α g/‖g‖``, then
    rescales it to norm ε, where ε shrinks by ``1 − γ`` after an adversarial point and grows by
    ``1 + γ`` otherwise; the step size α follows a cosine schedule from ``alpha_init`` to
    ``alpha_final``; δ is clamped so that x + δ stays in [0, 1]. The smallest adversarial point
    visited is returned (not the last iterate). With the defaults this is the paper's algorithm;
    ours beyond it: ``loss`` other than ``"ce"``, and a random direction where the gradient
    vanishes (flagged ``zero_gradient``).

    Attributes:
        steps: iterations (each: 1 forward + 1 backward per active sample).
        gamma: relative norm change per step (0.05 in the paper).
        init_norm: initial ε (1.0 in the paper).
        alpha_init: initial step size (1.0).
        alpha_final: final step size of the cosine schedule (0.01).
        loss: ``"ce"``: the paper's cross-entropy of the label; ``"margin"``: the logit margin
            ``max_{j≠y} Ψ_j − Ψ_y``; ``"ce_then_margin"``: cross-entropy for the first half of
            the schedule, then the margin (what :func:`~salign.attacks.robustness` uses). Why
            the switch: DDN settles where δ is parallel to the loss gradient. The minimal point
            on the boundary between y and j has δ parallel to ∇(Ψ_j − Ψ_y), the margin's
            gradient, but the cross-entropy's gradient there, Σ_k p_k ∇Ψ_k − ∇Ψ_y, also weighs
            the other classes wherever the softmax is not concentrated on y and j (smooth, e.g.
            gradient-regularised, models); the margin alone only sees the runner-up class
            (docs/benchmarks/attacks.md measures the three).

    A warm start ``start`` sets δ to ``start − x`` and ε to its norm where that norm is positive.
    """

    name: ClassVar[str] = "ddn"
    steps: int = 1000
    gamma: float = 0.05
    init_norm: float = 1.0
    alpha_init: float = 1.0
    alpha_final: float = 0.01
    loss: str = "ce"

    def __post_init__(self) -> None:
        check_positive(self.steps, "steps", integer=True)
        check_positive(self.gamma, "gamma")
        check_positive(self.init_norm, "init_norm")
        check_choice(self.loss, "loss", LOSSES)

    def _objective(self, logits: Tensor, labels: Tensor, position: Tensor | float) -> Tensor:
        """The summed loss whose ascent moves the samples away from their labels."""
        if self.loss == "ce":
            return F.cross_entropy(logits, labels, reduction="sum")
        if self.loss == "margin":
            return -logit_margin(logits, labels).sum()
        tail = position >= (1 - MARGIN_TAIL) * self.steps  # "ce_then_margin"
        if isinstance(tail, bool):  # every sample at the same step
            if tail:
                return -logit_margin(logits, labels).sum()
            return F.cross_entropy(logits, labels, reduction="sum")
        per_sample = torch.where(
            tail, -logit_margin(logits, labels), F.cross_entropy(logits, labels, reduction="none")
        )
        return per_sample.sum()

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        x, labels, steps = tracker.x, tracker.labels, self.steps
        delta = torch.zeros_like(x)
        eps = torch.full((x.shape[0],), float(self.init_norm), device=x.device, dtype=x.dtype)
        if start is not None:
            warm = torch.isfinite(l2_norm(start - x)) & (l2_norm(start - x) > 0)
            delta[warm] = (start[warm] - x[warm]).clamp(-1, 1)
            eps[warm] = l2_norm(delta[warm])
        worst = l2_norm(torch.maximum(x, 1 - x))
        for _, idx, position in tracker.iterations(steps, schedule=True, delta=delta, radius=eps):
            assert position is not None
            alpha = cosine_annealing(position, steps, self.alpha_init, self.alpha_final)
            xa, lab = x[idx], labels[idx]
            d = delta[idx].requires_grad_(True)
            point = xa + d
            logits = model(point)
            (grad,) = torch.autograd.grad(self._objective(logits, lab, position), d)
            with torch.no_grad():
                d = d.detach()
                is_adv, finite = adversarial(logits, lab)
                tracker.update(idx, point, l2_norm(d), is_adv, finite)
                e = eps[idx]
                e = torch.where(is_adv, e * (1 - self.gamma), e * (1 + self.gamma))  # decoupled norm update
                if idx is ALL:
                    e = torch.minimum(e, worst, out=eps)
                else:
                    e = torch.minimum(e, worst[idx])
                    eps[idx] = e
                # in place (d is delta itself while every sample is active): ascent on the loss
                # of the label, then onto the ε-sphere and into the box
                d = step_along_gradient(d, grad, alpha, tracker, idx)
                d.mul_(batch_view(e / l2_norm(d).clamp_min(1e-12), d))
                write_rows(delta, idx, d.add_(xa).clamp_(0, 1).sub_(xa))


def ddn(model: nn.Module, x: Tensor, labels: Tensor | None = None, **options: Any) -> AttackResult:
    """Decoupled Direction and Norm L2 attack (Rony et al., CVPR 2019), the paper's defaults: ``DDN(**opts)(model, x, labels, **settings)``, with
    ``options`` split into the fields of :class:`DDN` and the run settings of :meth:`Attack.__call__`."""
    return DDN.attack(model, x, labels, **options)


__all__ = ["DDN", "ddn"]

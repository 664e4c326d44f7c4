"""Carlini & Wagner L2 attack with a binary search over the trade-off constant (IEEE S&P 2017,
arXiv 1608.04644)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from salign.attacks._engine import Attack
from salign.attacks._ops import adversarial_by_margin, check_positive, logit_margin
from salign.attacks._tracker import ALL, Rows, Tracker, write_rows
from salign.attacks.result import AttackResult

#: Adam's moment decay rates (Kingma & Ba 2015), as in the authors' code.
BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class CarliniWagner(Attack):
    """Carlini & Wagner L2 attack (IEEE S&P 2017, §V) with a binary search over the constant c.

    Optimises ``‖x' − x‖² + c · max(Ψ_y − max_{j≠y} Ψ_j + κ, 0)`` over ``x' = (tanh(w) + 1)/2``
    (so the box [0, 1] holds by construction) with Adam; after each run of ``steps`` steps, c is
    halved towards the last failure where the run succeeded and grown (×10 until bracketed)
    where it failed. The smallest adversarial point visited over all runs is returned. The
    defaults are the authors' (their code: 10,000 steps with early abort, 9 values of c).

    Attributes:
        steps: Adam steps per value of c (each: 1 forward + 1 backward per running sample).
        binary_search_steps: number of values of c tried per sample (9).
        initial_const: first value of c (1e-3).
        learning_rate: Adam step size (0.01).
        confidence: margin κ required on the logits (0 gives minimal perturbations).
        abort_early: stop a run for a sample when its loss has not decreased by 0.01% over
            ``steps // 10`` steps (checked at steps 0, N/10, 2N/10, … of the run, as in the
            authors' code: the first comparison is at N/10).
    """

    name: ClassVar[str] = "carlini_wagner"
    accepts_start: ClassVar[bool] = False
    steps: int = 10000
    binary_search_steps: int = 9
    initial_const: float = 1e-3
    learning_rate: float = 0.01
    confidence: float = 0.0
    abort_early: bool = True

    def __post_init__(self) -> None:
        check_positive(self.steps, "steps", integer=True)
        check_positive(self.binary_search_steps, "binary_search_steps", integer=True)
        check_positive(self.initial_const, "initial_const")
        check_positive(self.learning_rate, "learning_rate")

    def _adam_run(self, model: nn.Module, tracker: Tracker, idx: Tensor, w0: Tensor, c: Tensor) -> Tensor:
        """``steps`` Adam steps at constants ``c`` for the samples ``idx``; which succeeded."""
        xa, lab = tracker.x[idx], tracker.labels[idx]
        beta1, beta2 = BETAS
        w = torch.zeros_like(xa)
        m, v = torch.zeros_like(xa), torch.zeros_like(xa)
        succeeded = torch.zeros(idx.numel(), dtype=torch.bool, device=xa.device)
        running = torch.ones_like(succeeded)
        prev_loss = torch.full_like(c, float("inf"))
        base = w0[idx]
        whole_batch = idx.numel() == tracker.x.shape[0]
        rows = running.nonzero().squeeze(1)  # recomputed only where early abort changes ``running``
        for t in range(1, self.steps + 1):
            if rows.numel() == 0:
                break
            # while every sample runs, views instead of gathers and scatters, and no host sync
            sel: Rows = ALL if rows.numel() == running.numel() else rows
            wr = w[sel].detach().requires_grad_(True)
            point = (torch.tanh(base[sel] + wr) + 1) / 2
            logits = model(point)
            dist_sq = (point - xa[sel]).flatten(1).pow(2).sum(1)
            margin = logit_margin(logits, lab[sel])
            loss = dist_sq + c[sel] * (margin + self.confidence).clamp(min=0)  # (f6)
            (grad,) = torch.autograd.grad(loss.sum(), wr)
            with torch.no_grad():
                is_adv, finite = adversarial_by_margin(margin.detach())
                tracker.update(
                    ALL if whole_batch and sel is ALL else idx[sel], point, dist_sq.sqrt(), is_adv, finite
                )
                succeeded[sel] |= is_adv
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                mr = m[sel].mul_(beta1).add_(grad, alpha=1 - beta1)
                vr = v[sel].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                write_rows(m, sel, mr)
                write_rows(v, sel, vr)
                update = (mr / (1 - beta1**t)).div_((vr / (1 - beta2**t)).sqrt_().add_(1e-8))
                write_rows(w, sel, wr.detach().sub_(update, alpha=self.learning_rate))
                if self.abort_early and (t - 1) % max(1, self.steps // 10) == 0:
                    stalled = loss.detach() > 0.9999 * prev_loss[sel]
                    prev_loss[sel] = loss.detach()
                    running[rows[stalled]] = False
                    rows = running.nonzero().squeeze(1)
        return succeeded

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        x = tracker.x
        w0 = torch.atanh((2 * x - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        attacked = tracker.active.clone()
        const = torch.full((x.shape[0],), float(self.initial_const), device=x.device, dtype=x.dtype)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, float("inf"))
        for _ in range(self.binary_search_steps):
            idx = attacked.nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            c = const[idx]
            succeeded = self._adam_run(model, tracker, idx, w0, c)
            # binary search over c: smaller after success, larger (×10 until bracketed) after failure
            up = torch.where(succeeded, torch.minimum(upper[idx], c), upper[idx])
            lo = torch.where(succeeded, lower[idx], torch.maximum(lower[idx], c))
            upper[idx], lower[idx] = up, lo
            const[idx] = torch.where(torch.isfinite(up), (lo + up) / 2, c * 10)


def carlini_wagner(model: nn.Module, x: Tensor, labels: Tensor | None = None, **options: Any) -> AttackResult:
    """Carlini & Wagner L2 attack (IEEE S&P 2017), the paper's defaults: ``CarliniWagner(**opts)(model, x, labels, **settings)``, with
    ``options`` split into the fields of :class:`CarliniWagner` and the run settings of :meth:`Attack.__call__`."""
    return CarliniWagner.attack(model, x, labels, **options)


__all__ = ["CarliniWagner", "carlini_wagner"]

"""Augmented Lagrangian Method for Adversarial attacks, L2 and L1 (Rony, Granger, Pedersoli &
Ben Ayed, ICCV 2021, arXiv 2011.11857)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from salign.attacks._engine import Attack
from salign.attacks._ops import adversarial, batch_view, check_positive, l2_norm, logit_margin, lp_norm
from salign.attacks._tracker import Rows, Tracker, write_rows
from salign.attacks.result import AttackResult


def logit_ratio(logits: Tensor, labels: Tensor, tolerance: float = 1e-4) -> Tensor:
    """Difference of logits ratio ``(Ψ_y − max_{j≠y} Ψ_j + tol) / (Ψ_π1 − Ψ_π3)`` (Croce & Hein
    2020, made positive while the label is predicted); plain margin + tol for two classes."""
    margin = logit_margin(logits, labels) + tolerance
    if logits.shape[1] < 3:
        return margin
    top = logits.topk(3, dim=1).values
    return margin / (top[:, 0] - top[:, 2] + 1e-8)


def penalty_p2(y: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """Penalty-Lagrangian P2 of Birgin et al. (2005) used by ALMA: ``μy + μρy² + ρ²y³/6`` for
    ``y ≥ 0`` and ``μy / (1 − ρy)`` for ``y < 0``."""
    positive = mu * y + mu * rho * y**2 + rho**2 * y**3 / 6
    negative = mu * y / (1 - rho * y.clamp(max=0))
    return torch.where(y >= 0, positive, negative)


def penalty_p2_derivative(y: Tensor, rho: Tensor, mu: Tensor) -> Tensor:
    """``∂P2/∂y`` in closed form (the multiplier update of eq. 11): ``μ + 2μρy + ρ²y²/2`` for
    ``y ≥ 0`` and ``μ / (1 − ρy)²`` for ``y < 0``."""
    positive = mu + 2 * mu * rho * y + rho**2 * y**2 / 2
    negative = mu / (1 - rho * y.clamp(max=0)) ** 2
    return torch.where(y >= 0, positive, negative)


def _initial_step_size(x: Tensor, direction: Tensor, target: float, norm: float = 2.0) -> Tensor:
    """Per-sample η such that ``‖clamp(x − η·direction) − x‖_p = target`` (doubling, then
    bisection), p = ``norm``."""
    n = x.shape[0]
    lo = torch.zeros(n, device=x.device, dtype=x.dtype)
    hi = torch.ones(n, device=x.device, dtype=x.dtype)

    def dist(eta: Tensor) -> Tensor:
        return lp_norm((x - batch_view(eta, x) * direction).clamp(0, 1) - x, norm)

    above = dist(hi) > target
    for _ in range(60):
        if bool(above.all()):
            break
        lo = torch.where(above, lo, hi)
        hi = torch.where(above, hi, hi * 2)
        above = dist(hi) > target
    for _ in range(20):
        mid = (lo + hi) / 2
        larger = dist(mid) > target
        lo, hi = torch.where(larger, lo, mid), torch.where(larger, mid, hi)
    return (lo + hi) / 2


class _State:
    """ALMA's per-sample state: δ, the RMSProp/momentum buffers, η, μ, ρ and the step of the
    first adversarial point."""

    def __init__(self, attack: ALMA, x: Tensor, start: Tensor | None) -> None:
        per_sample = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        self.delta = torch.zeros_like(x)
        if start is not None:
            warm = l2_norm(start - x) > 0
            self.delta[warm] = start[warm] - x[warm]
        self.square_avg = torch.ones_like(x)
        self.momentum = torch.zeros_like(x)
        self.lr = torch.full_like(per_sample, float(attack.lr_init))
        self.mu = torch.full_like(per_sample, float(attack.mu_init))
        self.rho = torch.full_like(per_sample, float(attack.rho_init))
        self.prev = per_sample
        self.found = torch.zeros_like(per_sample, dtype=torch.bool)
        self.step_found = torch.full_like(per_sample, float(attack.steps + 1))


@dataclass(frozen=True)
class ALMA(Attack):
    """Augmented Lagrangian (ALMA) attack in L2 or L1 (Rony et al., ICCV 2021, Algorithm 1).

    Minimises ``‖δ‖_p + P(c(x + δ), ρ, μ)`` (p = ``norm``; the paper's distances include both)
    where ``c`` is the difference-of-logits ratio
    (adversarial when ``c < 0``) and ``P`` the penalty-Lagrangian P2; the multiplier μ follows an
    exponential moving average of ``∂P/∂c`` (eq. 11), the penalty ρ grows by ``rho_growth``
    every ``check_steps`` steps where the constraint did not improve by a factor ``tau``.
    δ is updated by RMSProp with momentum (both with ``alpha``), whose learning rate decays
    exponentially by ``lr_reduction`` from the step an adversarial point is first found. The
    defaults are the paper's (as in its authors' adv-lib); nothing differs but the best-point
    tracking, which the paper also returns.

    Attributes:
        norm: the Lp norm minimised: 2 (default) or 1. In L1 the distance's gradient is sign(δ),
            which RMSProp normalises per pixel, as in the authors' adv-lib (``distance="l1"``).
        steps: iterations (each: 1 forward + 1 backward per active sample).
        lr_init: initial learning rate η₀ (0.1), used when ``init_lr_distance`` is None.
        lr_reduction: total learning-rate decay factor (0.01).
        init_lr_distance: if given, the first step's learning rate is set per sample so that
            the first step moves by this distance in ``norm`` (the paper's ε-based initialisation;
            :func:`robustness` uses 0.125, chosen on held-out MNIST images:
            docs/benchmarks/attacks.md).
        mu_init: initial Lagrange multiplier μ (1).
        rho_init: initial penalty parameter ρ (1).
        check_steps: steps between checks of constraint improvement (the paper's M = 10).
        tau: required constraint improvement ratio τ (0.95).
        rho_growth: penalty increase factor γ (1.2).
        alpha: EMA weight of μ and the RMSProp/momentum constants (0.9 for the paper's 1000
            steps; its authors use 0.5 for 100 steps, as :func:`robustness` does below 500).
        logit_tolerance: small margin added to the logit difference so that solutions sit
            strictly on the adversarial side (1e-4).

    A warm start ``start`` sets δ to ``start − x``.
    """

    name: ClassVar[str] = "alma"
    norms: ClassVar[tuple[float, ...]] = (1.0, 2.0)
    norm: float = 2.0
    steps: int = 1000
    lr_init: float = 0.1
    lr_reduction: float = 0.01
    init_lr_distance: float | None = None
    mu_init: float = 1.0
    rho_init: float = 1.0
    check_steps: int = 10
    tau: float = 0.95
    rho_growth: float = 1.2
    alpha: float = 0.9
    logit_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        self._parse_norm()
        check_positive(self.steps, "steps", integer=True)
        check_positive(self.lr_init, "lr_init")
        check_positive(self.check_steps, "check_steps", integer=True)
        if self.init_lr_distance is not None:
            check_positive(self.init_lr_distance, "init_lr_distance")

    def _multipliers(self, s: _State, idx: Rows, i: int, constraint: Tensor) -> tuple[Tensor, Tensor]:
        """ρ and μ of the samples ``idx`` for step ``i`` (Algorithm 1 and eq. 11)."""
        r, m = s.rho[idx], s.mu[idx]
        if i == 0:
            s.prev[idx] = constraint
        elif (i + 1) % self.check_steps == 0:
            # grow ρ where the constraint neither holds nor improved by a factor τ (Algorithm 1)
            stalled = ~(s.found[idx] | (constraint < self.tau * s.prev[idx]))
            r = torch.where(stalled, self.rho_growth * r, r)
            s.rho[idx] = r
            s.prev[idx] = constraint
        if i > 0:
            # multiplier update: exponential moving average of ∂P/∂y (eq. 11)
            new_mu = penalty_p2_derivative(constraint, r, m)
            m = torch.lerp(m, new_mu, 1 - self.alpha).clamp(1e-6, 1e12)
            s.mu[idx] = m
        return r, m

    def _step(
        self,
        s: _State,
        tracker: Tracker,
        idx: Rows,
        i: int,
        position: Tensor | float,
        grad: Tensor,
        xa: Tensor,
        d: Tensor,
    ) -> None:
        """RMSProp with momentum on δ, learning rate decaying from the first adversarial step."""
        if i == 0 and self.init_lr_distance is not None:
            zero = l2_norm(grad) <= 1e-12
            g0 = torch.where(batch_view(zero, grad), tracker.random_directions(idx), grad)
            s.lr[idx] = _initial_step_size(xa + d, g0, self.init_lr_distance, self.norm)
        sf = s.step_found[idx]
        decay = self.lr_reduction ** ((position - sf).clamp(min=0) / (self.steps - sf).clamp(min=1))
        step = s.lr[idx] * decay
        # in place (on the state itself while every sample is active)
        sq = s.square_avg[idx].mul_(self.alpha).addcmul_(grad, grad, value=1 - self.alpha)
        write_rows(s.square_avg, idx, sq)
        mom = s.momentum[idx].mul_(self.alpha).addcdiv_(grad, sq.sqrt().add_(1e-8))
        write_rows(s.momentum, idx, mom)
        d = d.addcmul_(batch_view(step, d), mom, value=-1)
        write_rows(s.delta, idx, d.add_(xa).clamp_(0, 1).sub_(xa))

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        x, labels = tracker.x, tracker.labels
        s = _State(self, x, start)
        for i, idx, position in tracker.iterations(self.steps, schedule=True, delta=s.delta):
            assert position is not None
            xa, lab = x[idx], labels[idx]
            d = s.delta[idx].requires_grad_(True)
            point = xa + d
            logits = model(point)
            constraint = logit_ratio(logits, lab, self.logit_tolerance)  # ≤ 0 means adversarial
            r, m = self._multipliers(s, idx, i, constraint.detach())
            dist = lp_norm(d, self.norm)
            loss = penalty_p2(constraint, r, m)
            if i > 0:
                loss = loss + dist
            (grad,) = torch.autograd.grad(loss.sum(), d)
            with torch.no_grad():
                d = d.detach()
                is_adv, finite = adversarial(logits, lab)
                tracker.update(idx, point, dist.detach(), is_adv, finite)
                found = s.found[idx]
                s.step_found[idx] = torch.where(is_adv & ~found, position, s.step_found[idx])
                s.found[idx] = found | is_adv
                grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
                tracker.mark_zero_gradient(idx, l2_norm(grad) <= 1e-12)
                self._step(s, tracker, idx, i, position, grad, xa, d)


def alma(model: nn.Module, x: Tensor, labels: Tensor | None = None, **options: Any) -> AttackResult:
    """Augmented Lagrangian attack in L2 or L1 (Rony et al., ICCV 2021), the paper's defaults: ``ALMA(**opts)(model, x, labels, **settings)``, with
    ``options`` split into the fields of :class:`ALMA` and the run settings of :meth:`Attack.__call__`."""
    return ALMA.attack(model, x, labels, **options)


__all__ = ["ALMA", "alma", "logit_ratio", "penalty_p2", "penalty_p2_derivative"]

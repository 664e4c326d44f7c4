"""Best-point bookkeeping of one attack run, and early exit.

An attack's iterations only *propose* points: they report each visited point to a
:class:`Tracker`, which keeps the smallest adversarial one per sample (never the last iterate),
counts the sanity flags, and says which samples are still worth a step. Early exit lives in
:meth:`Tracker.iterations` and :class:`EarlyExit`, nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from salign.attacks._ops import batch_view, l2_norm


class EarlyExit:
    """Which samples stop, or skip ahead in their step-size schedule, after a step.

    Attacks whose step sizes follow a schedule over ``steps`` (DDN, FMN, ALMA) read each
    sample's position with :meth:`position`. A sample whose best distance stalls early in the
    schedule, while the step size is still large, has not converged: it oscillates around the
    boundary. So instead of stopping it, :meth:`after_step` fast-forwards it to the last
    ``patience`` steps of its schedule (small steps), to restart from its best point; only a
    sample that stalls in that tail, or whose schedule ends, stops. Without a schedule a stalled
    sample stops. Every call drops samples at distance 0.

    Args:
        n: number of samples.
        patience: if given, every ``patience`` steps a sample whose best distance improved by less
            than a relative ``tolerance`` since the last check is fast-forwarded or stops.
        tolerance: relative improvement below which a sample counts as converged.
    """

    def __init__(
        self, n: int, device: torch.device, *, patience: int | None, tolerance: float = 1e-3
    ) -> None:
        self.patience = patience
        self.tolerance = tolerance
        self.steps: int | None = None
        self.offset = torch.zeros(n, dtype=torch.long, device=device)
        self.fast_forwarded = torch.zeros(n, dtype=torch.bool, device=device)  # for reports
        self._reference: Tensor | None = None

    def set_schedule(self, steps: int | None) -> None:
        """Declare that the attack anneals its step sizes over ``steps`` iterations (None: no schedule)."""
        self.steps = steps
        self.offset.zero_()
        self.fast_forwarded.zero_()

    def position(self, idx: Tensor, step: int, dtype: torch.dtype) -> Tensor:
        """Each sample's position in its schedule (in [0, steps)): ``step`` + skipped steps."""
        assert self.steps is not None, "set_schedule() first"
        return (self.offset[idx] + step).clamp(max=self.steps - 1).to(dtype)

    def after_step(self, step: int, best_dist: Tensor, active: Tensor) -> Tensor | None:
        """Update ``active`` in place after iteration ``step``; return the indices fast-forwarded
        now (the attack restarts them from their best point), or None."""
        active &= best_dist > 0
        if self._reference is None:
            self._reference = torch.full_like(best_dist, float("inf"))
        jumped: Tensor | None = None
        if self.patience and (step + 1) % self.patience == 0:
            improved = best_dist < (1 - self.tolerance) * self._reference
            stalled = ~improved & torch.isfinite(best_dist) & active
            if self.steps is None:
                active &= ~stalled
            else:
                tail_start = self.steps - self.patience
                # a sample already fast-forwarded sits at or past tail_start: it cannot skip again
                can_skip = stalled & (self.offset + step + 1 < tail_start)
                self.offset = torch.where(can_skip, tail_start - (step + 1), self.offset)
                self.fast_forwarded |= can_skip
                active &= ~(stalled & ~can_skip)
                if bool(can_skip.any()):
                    jumped = can_skip.nonzero().squeeze(1)
            self._reference = best_dist.clone()
        if self.steps is not None:
            active &= self.offset + step + 1 < self.steps  # this sample's schedule is over
        return jumped


class Tracker:
    """Best adversarial point per sample, the sanity flags, and the samples still active.

    Args:
        x: clean inputs (n, ...).
        labels: classes to move away from (n,).
        attacked: samples to attack (the others, already misclassified, sit at distance 0).
        patience: early-exit window (see :class:`EarlyExit`; None: run every step).
        norm: the Lp norm the distances are measured in (1, 2 or inf).
    """

    def __init__(
        self, x: Tensor, labels: Tensor, attacked: Tensor, *, patience: int | None = None, norm: float = 2.0
    ) -> None:
        n = x.shape[0]
        self.norm = norm
        self.x = x
        self.labels = labels
        self.best_adv = x.clone()
        self.best_dist = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
        self.best_dist[~attacked] = 0
        self.zero_gradient = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.nonfinite = torch.zeros(n, dtype=torch.bool, device=x.device)
        self.active = attacked.clone()
        self.early_exit = EarlyExit(n, x.device, patience=patience)

    @property
    def found(self) -> Tensor:
        return torch.isfinite(self.best_dist)

    def active_indices(self) -> Tensor:
        return self.active.nonzero().squeeze(1)

    def seed(self, adv: Tensor, dist: Tensor) -> None:
        """Start from known, verified adversarial points (``dist`` +inf where there is none)."""
        self.best_dist = dist.clone()
        self.best_adv = adv.clone()

    def absorb(self, adv: Tensor, dist: Tensor) -> None:
        """Take ``adv`` wherever it is closer than this run's best point."""
        better = dist < self.best_dist
        self.best_dist = torch.where(better, dist, self.best_dist)
        self.best_adv = torch.where(batch_view(better, self.x), adv, self.best_adv)

    def update(
        self, idx: Tensor, adv: Tensor, dist: Tensor, is_adv: Tensor, finite: Tensor | None = None
    ) -> None:
        """Record points ``adv`` (rows ``idx``) with distances ``dist``; keep the better adversarial ones."""
        adv, dist = adv.detach(), dist.detach()
        better = is_adv & (dist < self.best_dist[idx])
        if bool(better.any()):
            rows = idx[better]
            self.best_dist[rows] = dist[better]
            self.best_adv[rows] = adv[better]
        if finite is not None:
            self.nonfinite[idx] |= ~finite

    def mark_zero_gradient(self, idx: Tensor, zero: Tensor) -> None:
        self.zero_gradient[idx] |= zero

    def iterations(
        self, steps: int, *, schedule: bool, delta: Tensor | None = None, radius: Tensor | None = None
    ) -> Iterator[tuple[int, Tensor, Tensor | None]]:
        """The attack loop: yields ``(step, active indices, schedule position or None)`` for each
        of ``steps`` iterations while samples are active, applying early exit after each one.
        A sample fast-forwarded by early exit restarts from its best point: ``delta`` (the
        perturbation iterate, (n, ...)) is set to ``best − x`` and ``radius`` (n,) to its norm."""
        self.early_exit.set_schedule(steps if schedule else None)
        for i in range(steps):
            idx = self.active_indices()
            if idx.numel() == 0:
                return
            yield i, idx, (self.early_exit.position(idx, i, self.x.dtype) if schedule else None)
            jumped = self.early_exit.after_step(i, self.best_dist, self.active)
            if jumped is not None and delta is not None:
                delta[jumped] = self.best_adv[jumped] - self.x[jumped]
                if radius is not None:
                    radius[jumped] = self.best_dist[jumped]


def gradient_direction(grad: Tensor, tracker: Tracker, idx: Tensor) -> Tensor:
    """Unit-L2 direction of ``grad`` per sample; random where the gradient vanished (flagged)."""
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    norms = l2_norm(grad)
    zero = norms <= torch.finfo(grad.dtype).tiny * 1e3
    tracker.mark_zero_gradient(idx, zero)
    direction = grad / batch_view(norms.clamp_min(torch.finfo(grad.dtype).tiny), grad)
    if bool(zero.any()):
        noise = torch.randn_like(direction[zero])
        direction[zero] = noise / batch_view(l2_norm(noise), noise)
    return direction

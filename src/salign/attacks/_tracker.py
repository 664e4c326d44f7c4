"""Best-point bookkeeping of one attack run, and early exit.

An attack's iterations only *propose* points: they report each visited point to a
:class:`Tracker`, which keeps the smallest adversarial one per sample (never the last iterate),
counts the sanity flags, and says which samples are still worth a step. Early exit lives in
:meth:`Tracker.iterations` and :class:`EarlyExit`, nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import EllipsisType

import torch
from torch import Tensor

from salign.attacks._ops import batch_view, l2_norm

#: The samples one iteration works on: ``...`` (Ellipsis) while every sample of the batch is
#: active (then ``t[rows]`` is a view and ``t[rows] = v`` a copy, with no gather or scatter;
#: Ellipsis indexes faster than ``slice(None)``), else their indices (n_active,).
Rows = Tensor | EllipsisType
ALL: EllipsisType = ...


def select(rows: Rows, mask: Tensor) -> Tensor:
    """Indices into the whole batch of the samples of ``rows`` where ``mask`` (one entry per
    sample of ``rows``) holds."""
    return mask.nonzero().squeeze(1) if rows is ALL else rows[mask]


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
        self.uniform = True  # no sample has skipped ahead: every position is the step itself
        self._reference: Tensor | None = None

    def set_schedule(self, steps: int | None) -> None:
        """Declare that the attack anneals its step sizes over ``steps`` iterations (None: no schedule)."""
        self.steps = steps
        self.offset.zero_()
        self.fast_forwarded.zero_()
        self.uniform = True

    def position(self, idx: Rows, step: int, dtype: torch.dtype) -> Tensor | float:
        """Each sample's position in its schedule (in [0, steps)): ``step`` + skipped steps; one
        float while no sample has skipped (the attacks then compute one step size, not n)."""
        assert self.steps is not None, "set_schedule() first"
        if self.uniform:
            return float(min(step, self.steps - 1))
        return (self.offset[idx] + step).clamp(max=self.steps - 1).to(dtype)

    def after_step(self, step: int, best_dist: Tensor, active: Tensor) -> tuple[Tensor | None, bool]:
        """Update ``active`` in place after iteration ``step``; return the indices fast-forwarded
        now (the attack restarts them from their best point) or None, and whether ``active``
        may have changed. With a schedule, ``active`` only changes at the checks every
        ``patience`` steps and where a sample's schedule ends (a sample that reached distance 0
        stops at the next of these), so the active rows need not be recomputed every step."""
        patience = self.patience or 0
        check = patience > 0 and (step + 1) % patience == 0
        schedule_end = self.steps is not None and (not self.uniform or step + 1 >= self.steps)
        changed = self.steps is None or check or schedule_end
        if changed:
            active &= best_dist > 0
        if self._reference is None:
            self._reference = torch.full_like(best_dist, float("inf"))
        jumped: Tensor | None = None
        if check:
            improved = best_dist < (1 - self.tolerance) * self._reference
            stalled = ~improved & torch.isfinite(best_dist) & active
            if self.steps is None:
                active &= ~stalled
            else:
                tail_start = self.steps - patience
                # a sample already fast-forwarded sits at or past tail_start: it cannot skip again
                can_skip = stalled & (self.offset + step + 1 < tail_start)
                self.offset = torch.where(can_skip, tail_start - (step + 1), self.offset)
                self.fast_forwarded |= can_skip
                active &= ~(stalled & ~can_skip)
                if bool(can_skip.any()):
                    jumped = can_skip.nonzero().squeeze(1)
                    self.uniform = False
            self._reference = best_dist.clone()
        if schedule_end:
            assert self.steps is not None
            active &= self.offset + step + 1 < self.steps  # this sample's schedule is over
        return jumped, changed


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
        self.all_finite = torch.ones(n, dtype=torch.bool, device=x.device)  # every logit seen was finite
        self.active = attacked.clone()
        self.early_exit = EarlyExit(n, x.device, patience=patience)
        self._directions: Tensor | None = None

    @property
    def found(self) -> Tensor:
        return torch.isfinite(self.best_dist)

    @property
    def nonfinite(self) -> Tensor:
        """The samples at which the model returned a NaN/Inf logit at some visited point."""
        return ~self.all_finite

    def active_indices(self) -> Tensor:
        return self.active.nonzero().squeeze(1)

    def seed(self, adv: Tensor, dist: Tensor) -> None:
        """Start from known, verified adversarial points (``dist`` +inf where there is none)."""
        self.best_dist = dist.clone()
        self.best_adv = adv.clone()

    def absorb(self, adv: Tensor, dist: Tensor, where: Tensor | None = None) -> None:
        """Take ``adv`` wherever it is closer than this run's best point (and ``where`` holds)."""
        better = dist < self.best_dist
        if where is not None:
            better &= where
        self.best_dist = torch.where(better, dist, self.best_dist)
        self.best_adv = torch.where(batch_view(better, self.x), adv, self.best_adv)

    def update(
        self, idx: Rows, adv: Tensor, dist: Tensor, is_adv: Tensor, finite: Tensor | None = None
    ) -> None:
        """Record points ``adv`` (rows ``idx``) with distances ``dist``; keep the better adversarial ones."""
        adv, dist = adv.detach(), dist.detach()
        if idx is ALL:  # every sample: no gather
            self.absorb(adv, dist, is_adv)
            if finite is not None:
                self.all_finite &= finite  # one kernel, where ``nonfinite |= ~finite`` is two
            return
        best_dist = self.best_dist[idx]
        better = is_adv & (dist < best_dist)  # no host sync: rows rewritten whether better or not
        self.best_dist[idx] = torch.where(better, dist, best_dist)
        self.best_adv[idx] = torch.where(batch_view(better, adv), adv, self.best_adv[idx])
        if finite is not None:
            self.all_finite[idx] &= finite

    def mark_zero_gradient(self, idx: Rows, zero: Tensor) -> None:
        if idx is ALL:
            self.zero_gradient |= zero
        else:
            self.zero_gradient[idx] |= zero

    def random_directions(self, idx: Rows) -> Tensor:
        """One fixed random unit direction (L2) per sample of ``idx``, drawn once per run from a
        generator of its own (seed 0: the global random state is left alone), where a step has
        no usable gradient."""
        if self._directions is None:
            generator = torch.Generator(device=self.x.device).manual_seed(0)
            noise = torch.randn(self.x.shape, generator=generator, device=self.x.device, dtype=self.x.dtype)
            self._directions = noise / batch_view(l2_norm(noise), noise)
        return self._directions[idx]

    def iterations(
        self, steps: int, *, schedule: bool, delta: Tensor | None = None, radius: Tensor | None = None
    ) -> Iterator[tuple[int, Rows, Tensor | float | None]]:
        """The attack loop: yields ``(step, active rows, schedule position or None)`` for each
        of ``steps`` iterations while samples are active, applying early exit after each one.
        An attack with a schedule must not change ``active`` itself (its rows are recomputed
        only where early exit may have changed them); attacks without one may.
        The rows are ``...`` while every sample is active (see :data:`Rows`); the
        position is one float while every sample is at the same step (see :meth:`EarlyExit.position`).
        A sample fast-forwarded by early exit restarts from its best point: ``delta`` (the
        perturbation iterate, (n, ...)) is set to ``best − x`` and ``radius`` (n,) to its norm."""
        self.early_exit.set_schedule(steps if schedule else None)
        rows: Rows | None = None
        changed = True
        for i in range(steps):
            if changed or rows is None:  # attacks without a schedule may also change ``active``
                idx = self.active_indices()
                if idx.numel() == 0:
                    return
                rows = ALL if idx.numel() == self.x.shape[0] else idx
            yield i, rows, (self.early_exit.position(rows, i, self.x.dtype) if schedule else None)
            jumped, changed = self.early_exit.after_step(i, self.best_dist, self.active)
            if jumped is not None and delta is not None:
                delta[jumped] = self.best_adv[jumped] - self.x[jumped]
                if radius is not None:
                    radius[jumped] = self.best_dist[jumped]


def write_rows(t: Tensor, rows: Rows, value: Tensor) -> None:
    """``t[rows] = value``, skipped where ``value`` already is ``t`` (the view ``t[...]`` updated
    in place while every sample is active)."""
    if rows is not ALL or value.data_ptr() != t.data_ptr():
        t[rows] = value


def step_along_gradient(
    delta: Tensor,
    grad: Tensor,
    size: Tensor | float,
    tracker: Tracker,
    idx: Rows,
    grad_norm: Tensor | None = None,
) -> Tensor:
    """``δ += size · grad / ‖grad‖₂`` per sample, in place (the normalised gradient step of DDN
    and FMN; ``size`` (n,) or one float, negative to descend), and return δ. ``grad_norm``: ‖grad‖₂
    per sample if the caller has it. Where the gradient vanished or has a non-finite entry, the
    step goes along the sample's fixed random unit direction (:meth:`Tracker.random_directions`)
    and the sample is flagged ``zero_gradient``. No host synchronisation: on a GPU the loop
    never waits for the device."""
    tiny = torch.finfo(grad.dtype).tiny
    norms = l2_norm(grad) if grad_norm is None else grad_norm
    irregular = norms.nan_to_num(nan=0.0, posinf=0.0) <= tiny * 1e3  # vanished or non-finite
    tracker.mark_zero_gradient(idx, irregular)
    direction = torch.where(batch_view(irregular, grad), tracker.random_directions(idx), grad)
    norms = norms.masked_fill(irregular, 1.0)
    if isinstance(size, float):
        return delta.addcdiv_(direction, batch_view(norms, grad), value=size)
    return delta.addcdiv_(direction, batch_view(norms / size, grad))

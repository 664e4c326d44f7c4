"""Auto-PGD at a fixed radius, L∞ / L2 (Croce & Hein, ICML 2020, arXiv 2003.01690) and L1
(Croce & Hein, ICCV 2021, "Mind the box", arXiv 2103.01208)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._norms import NORMS
from salign.attacks._engine import Attack
from salign.attacks._ops import (
    adversarial,
    batch_view,
    check_choice,
    check_positive,
    clamp_between,
    l2_norm,
    logit_margin,
    lp_norm,
    project_on_ball,
    project_on_l1_ball_in_box,
)
from salign.attacks._tracker import ALL, Tracker
from salign.attacks.result import AttackResult
from salign.errors import InputError

#: APGD's losses (maximised): the cross-entropy, and the difference of logits ratio (eq. 6 of
#: the ICML paper), invariant to shifts and rescalings of the logits.
LOSSES = ("ce", "dlr")


def dlr_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """``−(z_y − max_{i≠y} z_i) / (z_π1 − z_π3 + 1e-12)`` per sample, with z_π1 ≥ z_π2 ≥ z_π3 the
    three highest logits (Croce & Hein 2020, eq. 6); needs at least 3 classes."""
    top3 = logits.topk(3, dim=1).values
    return -logit_margin(logits, labels) / (top3[:, 0] - top3[:, 2] + 1e-12)


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    return F.cross_entropy(logits, labels, reduction="none")


def checkpoint_lengths(steps: int) -> list[int]:
    """Lengths of APGD's step-size check windows over ``steps`` iterations (L∞ / L2): the first
    check after ``⌈0.22 N⌉`` steps, each next window 3% of N shorter, but at least 6% of N
    (the checkpoints p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) of the paper)."""
    first, shrink, least = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    lengths, k, total = [], first, 0
    while total + k <= steps:
        lengths.append(k)
        total += k
        k = max(k - shrink, least)
    return lengths


@dataclass(frozen=True)
class APGD(Attack):
    """Auto-PGD (APGD) at a fixed radius ε in L∞, L2 (Croce & Hein, ICML 2020, Algorithm 1) or L1
    (Croce & Hein, ICCV 2021, Algorithm 2).

    Not a minimal-norm attack: it maximises a loss (cross-entropy or DLR) over the ε-ball
    around x intersected with the box [0, 1], and a sample counts as broken at ε when some
    iterate is misclassified. The result keeps the closest misclassified iterate per sample,
    so ``distance ≤ ε`` where it succeeds and ``1 − success`` rate is the robust accuracy at ε.
    A sample stops once misclassified.

    L∞ / L2: steps of size η along sign(∇) / ∇ / ‖∇‖₂ with momentum 0.75, η starting at 2ε and
    halved at the checkpoints (:func:`checkpoint_lengths`) where fewer than ``rho`` of the steps
    since the last one raised the loss, or where the step size and the best loss stayed the same
    (then the iterate restarts from the best-loss point). L1: steps along the signs of the
    ``k`` largest gradient entries (k adapts to the sparsity of the best point), η from ε
    shrinking by 1.5 while the sparsity does not drop, the exact projection onto the L1 ball
    intersected with the box.

    Ours beyond the papers: ``relative_eps`` (ε per sample as a fraction of the warm start's
    distance, for :func:`robustness`' probe below its best point), and ``steps`` counts gradient
    evaluations (the initial point's included).

    Attributes:
        norm: ``float("inf")`` (default), 2 or 1.
        eps: the radius ε (one for every sample).
        relative_eps: instead of ``eps``: ε per sample is this fraction of the warm start's
            distance ``‖start − x‖_p`` (a sample without a start is not attacked).
        steps: gradient evaluations per sample (100, the paper's; each 1 forward + 1 backward).
        loss: ``"ce"`` (default) or ``"dlr"`` (at least 3 classes).
        momentum: weight α of the new step (0.75; the first step takes none).
        rho: the fraction of loss-raising steps below which a checkpoint halves η (0.75).
        random_init: start from a random point of the ε-ball (the paper's; default) rather than
            from the warm start projected onto it (from x where there is none).
        seed: seed of the random start (a generator of its own; the global RNG is untouched).
    """

    name: ClassVar[str] = "apgd"
    norms: ClassVar[tuple[float, ...]] = NORMS
    norm: float = math.inf
    eps: float | None = None
    relative_eps: float | None = None
    steps: int = 100
    loss: str = "ce"
    momentum: float = 0.75
    rho: float = 0.75
    random_init: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self._parse_norm()
        if (self.eps is None) == (self.relative_eps is None):
            raise InputError(
                "APGD needs exactly one of eps (a radius) and relative_eps (a fraction of the start's distance)"
            )
        if self.eps is not None:
            check_positive(self.eps, "eps")
        if self.relative_eps is not None:
            check_positive(self.relative_eps, "relative_eps")
        check_positive(self.steps, "steps", integer=True)
        check_choice(self.loss, "loss", LOSSES)
        check_positive(self.momentum, "momentum")
        if self.momentum > 1:
            raise InputError(f"momentum must be in (0, 1], got {self.momentum!r}")
        check_positive(self.rho, "rho")
        if not isinstance(self.random_init, bool):
            raise InputError(f"random_init must be True or False, got {self.random_init!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")

    def applies_to(self, num_classes: int) -> bool:
        return self.loss != "dlr" or num_classes >= 3

    def __call__(
        self, model: nn.Module, x: Tensor, labels: Tensor | None = None, **settings: Any
    ) -> AttackResult:
        """See :meth:`Attack.__call__`; with ``relative_eps`` a ``start`` is required."""
        if self.relative_eps is not None and settings.get("start") is None:
            raise InputError(
                "APGD with relative_eps needs a warm start (start=...): ε is a fraction of its distance"
            )
        return super().__call__(model, x, labels, **settings)

    def _radii(self, x: Tensor, start: Tensor | None) -> Tensor:
        """ε per sample: ``eps``, or ``relative_eps`` × the start's distance (0 without a start:
        in :func:`robustness`, a probe when no run found a point)."""
        if self.eps is not None:
            return torch.full((x.shape[0],), float(self.eps), device=x.device, dtype=x.dtype)
        if start is None:
            return torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        assert self.relative_eps is not None
        return self.relative_eps * lp_norm(start - x, self.norm)

    def _bounds(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """The box of δ, ``−x ≤ δ ≤ 1 − x``; in L∞ intersected with the ε-ball, which is a box
        too: ``max(−ε, −x) ≤ δ ≤ min(ε, 1 − x)``."""
        if math.isinf(self.norm):
            r = batch_view(eps, x)
            return torch.maximum(-r, -x), torch.minimum(r, 1 - x)
        return -x, 1 - x

    def _project(self, delta: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
        """Onto the ε-ball intersected with the box ``lo ≤ δ ≤ hi`` of :meth:`_bounds` (exact
        in L∞, a clamp to the intersection, and in L1; in L2 the ball's rescaling, then the
        box's clamp, as the paper does)."""
        if self.norm == 1:
            return project_on_l1_ball_in_box(delta, eps, lo, hi)
        if self.norm == 2:
            delta = project_on_ball(delta, eps, 2.0)
        return clamp_between(delta, lo, hi, out=delta)

    def _initial(self, x: Tensor, eps: Tensor, start: Tensor | None) -> Tensor:
        """δ₀: a random point of the ε-ball (L∞: uniform entries scaled to ‖·‖∞ = ε; L2: a
        Gaussian scaled to ε, then clamped to the box; L1: a standard Gaussian projected onto
        the ball in the box, as the authors' code does, so a sparse start), or the warm start
        projected onto the ball."""
        lo, hi = self._bounds(x, eps)
        if not self.random_init:
            return self._project(torch.zeros_like(x) if start is None else start - x, eps, lo, hi)
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        if math.isinf(self.norm):
            t = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        else:
            t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if self.norm != 1:
            t = t * batch_view(eps / lp_norm(t, self.norm).clamp_min(1e-12), t)
        return self._project(t, eps, lo, hi)

    def _direction(self, grad: Tensor, sparsity: Tensor) -> Tensor:
        """The ascent direction: sign(∇) (L∞), ∇ / ‖∇‖₂ (L2), or in L1 the signs of the entries
        with |∇| at or above the (1 − sparsity) quantile, scaled to unit L1 norm."""
        grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
        if math.isinf(self.norm):
            return grad.sign()
        if self.norm == 2:
            return grad / batch_view(l2_norm(grad).clamp_min(1e-12), grad)
        flat = grad.flatten(1)
        d = flat.shape[1]
        rank = ((1 - sparsity) * d).clamp(0, d - 1).long()  # index into |∇| sorted ascending
        threshold = flat.abs().sort(1).values.gather(1, rank[:, None])
        signs = flat.sign() * (flat.abs() >= threshold)
        return (signs / signs.abs().sum(1, keepdim=True).clamp_min(1e-12)).view_as(grad)

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        x, n = tracker.x, tracker.x.shape[0]
        eps = self._radii(x, start)
        tracker.active &= torch.isfinite(eps) & (eps > 0)
        eps = torch.nan_to_num(eps, nan=0.0, posinf=0.0)
        delta = self._initial(x, eps, start)
        l1 = self.norm == 1
        full = torch.full((n,), -math.inf, device=x.device, dtype=x.dtype)
        # The state of the samples still iterated, one row each (``rows``: their indices in the
        # batch), compacted once where some stop rather than gathered and scattered every step.
        lo, hi = self._bounds(x, eps)
        s = {
            "x": x,
            "lo": lo,  # the box of δ (:meth:`_bounds`)
            "hi": hi,
            "labels": tracker.labels,
            "eps": eps,
            "delta": delta,
            "previous": delta,  # δ_{k−1}, for the momentum
            "step": eps * (1.0 if l1 else 2.0),
            "best_loss": full,
            "best_delta": delta,
            "best_grad": torch.zeros_like(x),
            "grad": torch.zeros_like(x),
            "last_loss": full,
            "raised": torch.zeros_like(eps),  # loss-raising steps since the last check
            "reduced": torch.ones(n, dtype=torch.bool, device=x.device),  # η halved at the last check
            "checked_loss": full,
            "sparsity": torch.full_like(eps, 0.2),  # L1: share of entries moved
            "nonzero_before": torch.full_like(eps, float(x[0].numel())),
        }
        rows = torch.arange(n, device=x.device)
        windows = [max(int(0.04 * self.steps), 1)] * self.steps if l1 else checkpoint_lengths(self.steps)
        next_check, window = (windows[0] if windows else self.steps + 1), 0
        loss_fn = _cross_entropy if self.loss == "ce" else dlr_loss
        for i, idx, _ in tracker.iterations(self.steps, schedule=False):
            if idx is not ALL and idx.numel() < rows.numel():  # some stopped: keep the others' rows
                keep = torch.searchsorted(rows, idx)
                s = {key: value[keep] for key, value in s.items()}
                rows = idx
            d = s["delta"].detach().requires_grad_(True)
            with torch.enable_grad():
                point = s["x"] + d
                logits = model(point)
                if self.loss == "dlr" and logits.shape[1] < 3:
                    raise InputError(
                        f"APGD's DLR loss needs at least 3 classes, the model has {logits.shape[1]}"
                    )
                loss = loss_fn(logits, s["labels"])
            (g,) = torch.autograd.grad(loss.sum(), d)
            with torch.no_grad():
                d, loss = d.detach(), loss.detach()
                is_adv, finite = adversarial(logits.detach(), s["labels"])
                tracker.update(idx, point, lp_norm(d, self.norm), is_adv, finite)
                s["grad"] = g
                s["raised"] = s["raised"] + (loss > s["last_loss"])  # a bool adds 0 or 1
                s["last_loss"] = loss
                better = loss > s["best_loss"]
                s["best_loss"] = torch.where(better, loss, s["best_loss"])
                better = batch_view(better, d)
                s["best_delta"] = torch.where(better, d, s["best_delta"])
                s["best_grad"] = torch.where(better, g, s["best_grad"])
                if i + 1 == next_check:  # the step-size check (Algorithm 1, conditions 1 and 2)
                    self._check(s, windows[window])
                    window += 1
                    next_check += windows[window] if window < len(windows) else self.steps + 1
                # broken at ε: done (the rows of idx are all active, so no and)
                tracker.active[idx] = ~is_adv
                d_now = s["delta"]
                step = batch_view(s["step"], d_now)
                z = torch.addcmul(d_now, step, self._direction(s["grad"], s["sparsity"]))
                z = self._project(z, s["eps"], s["lo"], s["hi"])
                if not l1 and i > 0:
                    # δ + α (z − δ) + (1 − α)(δ − δ_prev), the momentum step
                    mixed = torch.lerp(d_now, z, self.momentum)
                    mixed = mixed.add_(d_now - s["previous"], alpha=1 - self.momentum)
                    z = self._project(mixed, s["eps"], s["lo"], s["hi"])
                s["previous"], s["delta"] = d_now, z

    def _check(self, s: dict[str, Tensor], length: int) -> None:
        """The step-size check at the end of a window of ``length`` steps, on the state ``s``
        (Algorithm 1, conditions 1 and 2; in L1 the sparsity rule of the ICCV paper): η shrinks
        and, where it restarts, the iterate goes back to the best-loss point."""
        if self.norm == 1:
            nonzero = (s["best_delta"].flatten(1).abs() > 0).sum(1).to(s["eps"].dtype)
            restart = nonzero / s["nonzero_before"] < 0.95
            s["sparsity"] = nonzero / s["x"][0].numel() / 1.5
            step = torch.where(restart, s["eps"], s["step"] / 1.5)
            s["step"] = torch.minimum(torch.maximum(step, s["eps"] / 10), s["eps"])
            s["nonzero_before"] = nonzero
        else:
            oscillating = s["raised"] <= self.rho * length
            stuck = ~s["reduced"] & (s["checked_loss"] >= s["best_loss"])
            restart = oscillating | stuck
            s["reduced"] = restart
            s["checked_loss"] = s["best_loss"]
            s["step"] = torch.where(restart, s["step"] / 2, s["step"])
        s["raised"] = torch.zeros_like(s["raised"])
        back = batch_view(restart, s["delta"])
        s["delta"] = torch.where(back, s["best_delta"], s["delta"])
        s["grad"] = torch.where(back, s["best_grad"], s["grad"])


def apgd(model: nn.Module, x: Tensor, labels: Tensor | None = None, **options: Any) -> AttackResult:
    """Auto-PGD at radius ``eps`` (Croce & Hein 2020; L1: 2021), the papers' defaults:
    ``APGD(**opts)(model, x, labels, **settings)``, with ``options`` split into the fields of
    :class:`APGD` and the run settings of :meth:`Attack.__call__`. ``1 − success.float().mean()``
    is the robust accuracy at ``eps``."""
    return APGD.attack(model, x, labels, **options)


__all__ = ["APGD", "LOSSES", "apgd", "checkpoint_lengths", "dlr_loss"]

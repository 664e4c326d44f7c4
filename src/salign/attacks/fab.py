"""Fast Adaptive Boundary attack, L1 / L2 / L∞ (Croce & Hein, ICML 2020, arXiv 1907.02044)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from salign._norms import NORMS, dual_exponent
from salign.attacks._engine import Attack
from salign.attacks._model import label_and_rivals, margin_gradients
from salign.attacks._ops import adversarial, batch_view, box_hyperplane_step, check_positive, lp_norm
from salign.attacks._tracker import Tracker, select
from salign.attacks.result import AttackResult
from salign.errors import InputError


def random_direction(like: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Random perturbations of unit Lp norm per sample (FAB's random starts: uniform in [−1, 1]
    scaled to ‖·‖_∞ = 1 for L∞, Gaussian scaled to unit L2 / L1 norm otherwise)."""
    if math.isinf(p):
        u = torch.rand(like.shape, generator=generator, device=like.device, dtype=like.dtype) * 2 - 1
    else:
        u = torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)
    return u / batch_view(lp_norm(u, p).clamp_min(1e-30), u)


@dataclass(frozen=True)
class FAB(Attack):
    """Fast Adaptive Boundary (FAB) attack in L1, L2 or L∞ (Croce & Hein, ICML 2020, Algorithm 1).

    At the iterate x⁽ⁱ⁾ FAB linearises ``f_s = Ψ_s − Ψ_y`` for the rival classes and picks the
    linearised boundary nearest in the Lp norm, ``s = argmin |f_s| / ‖∇f_s‖_q`` (or a fixed
    target class). It projects both x⁽ⁱ⁾ and the original x onto that hyperplane intersected
    with the box [0, 1]^d (minimal Lp steps δ⁽ⁱ⁾ and δ_orig: :func:`~salign.attacks._ops.
    box_hyperplane_step`), and moves to the biased combination (eq. 7)
    ``x⁽ⁱ⁺¹⁾ = clip((1 − α)(x⁽ⁱ⁾ + η δ⁽ⁱ⁾) + α(x + η δ_orig))`` with
    ``α = min(‖δ⁽ⁱ⁾‖ / (‖δ⁽ⁱ⁾‖ + ‖δ_orig‖), α_max)``; an adversarial iterate is recorded and then
    pulled back towards x, ``x⁽ⁱ⁺¹⁾ ← (1 − β) x + β x⁽ⁱ⁺¹⁾`` (the backward step, eq. 8). Later
    restarts start at random points ``x + ½ min(ρ_best, ε) u`` (u of unit Lp norm). One
    algorithm for every p: only the dual norm and the projection change. The smallest adversarial
    point visited is returned. The defaults are the paper's (η = 1.05, β = 0.9, α_max = 0.1,
    100 iterations); a warm start ``start`` replaces x as the first restart's x⁽⁰⁾.

    Attributes:
        norm: the Lp norm minimised: 2 (default), 1 or ``float("inf")``.
        steps: iterations per restart (each: 2 forwards + ``candidates`` backwards per
            active sample; 1 backward when targeted).
        restarts: runs per sample; the first from x (or ``start``), the others from random points.
        eta: overshoot η of the projections (1.05).
        alpha_max: largest weight α of the step from x (0.1).
        beta: backward-step factor β (0.9).
        candidates: untargeted: the rival classes linearised per step (the highest other logits).
        target_classes: 0 (default): untargeted. k > 0: the targeted version FAB-T of
            AutoAttack (Croce & Hein, ICML 2020b): the run is repeated against each of the k
            highest other logits at x in turn (capped at K − 1), always linearising that
            class's boundary; every restart and every target reports to the same best point.
            FAB-T follows one rival's boundary even where another rival's is nearer at the
            current iterate, so it reaches minima that the untargeted choice of the nearest
            linearised boundary (and DeepFool, FMN) never enters.
        epsilon: radius cap ε of the random restarts (``None``: the best distance so far; a
            sample without one restarts from x).
        seed: seed of the random restarts.
    """

    name: ClassVar[str] = "fab"
    norms: ClassVar[tuple[float, ...]] = NORMS
    norm: float = 2.0
    steps: int = 100
    restarts: int = 1
    eta: float = 1.05
    alpha_max: float = 0.1
    beta: float = 0.9
    candidates: int = 9
    target_classes: int = 0
    epsilon: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self._parse_norm()
        check_positive(self.steps, "steps", integer=True)
        check_positive(self.restarts, "restarts", integer=True)
        check_positive(self.eta, "eta")
        check_positive(self.alpha_max, "alpha_max", allow_zero=True)
        check_positive(self.candidates, "candidates", integer=True)
        if not (isinstance(self.beta, (int, float)) and 0 < self.beta < 1) or isinstance(self.beta, bool):
            raise InputError(f"beta must be a number in (0, 1), got {self.beta!r}")
        if self.alpha_max > 1:
            raise InputError(f"alpha_max must be in [0, 1], got {self.alpha_max!r}")
        check_positive(self.target_classes, "target_classes", integer=True, allow_zero=True)
        if self.epsilon is not None:
            check_positive(self.epsilon, "epsilon")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise InputError(f"seed must be an integer, got {self.seed!r}")

    def _targets(self, model: nn.Module, tracker: Tracker) -> list[Tensor | None]:
        """One entry per pass: ``None`` (untargeted) or the target class per sample, the k-th
        highest other logit at x for k = 1 … ``target_classes`` (at most K − 1)."""
        if not self.target_classes:
            return [None]
        with torch.no_grad():
            logits = model(tracker.x)
        ranked = label_and_rivals(logits, tracker.labels, self.target_classes)[:, 1:]
        return list(ranked.unbind(1))

    def _step(self, xa: Tensor, cur: Tensor, f: Tensor, w: Tensor) -> Tensor:
        """Eq. 7: the biased combination of the projections of x⁽ⁱ⁾ and x onto the hyperplane
        ``f + ⟨w, · − x⁽ⁱ⁾⟩ = 0`` within the box."""
        flat_x, flat_cur = xa.flatten(1), cur.flatten(1)
        d_cur = box_hyperplane_step(w, -f, -flat_cur, 1 - flat_cur, self.norm)
        c_orig = -f - (w * (flat_x - flat_cur)).sum(1)
        d_orig = box_hyperplane_step(w, c_orig, -flat_x, 1 - flat_x, self.norm)
        n_cur, n_orig = lp_norm(d_cur, self.norm), lp_norm(d_orig, self.norm)
        total = n_cur + n_orig
        alpha = torch.where(total > 0, n_cur / total.clamp_min(1e-30), 0.0).clamp(max=self.alpha_max)[:, None]
        new = (1 - alpha) * (flat_cur + self.eta * d_cur) + alpha * (flat_x + self.eta * d_orig)
        return new.clamp(0, 1).view_as(xa)

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        x, labels = tracker.x, tracker.labels
        generator = torch.Generator(device=x.device).manual_seed(self.seed)
        q = dual_exponent(self.norm)
        attacked = tracker.active.clone()
        passes = [(t, r) for t in self._targets(model, tracker) for r in range(self.restarts)]
        for targets, restart in passes:
            # every pass starts on all attacked samples (a stall or a vanished gradient of one
            # target or restart says nothing about the next)
            tracker.active = attacked & (tracker.best_dist > 0) & tracker.all_finite
            if restart == 0:
                point = x.clone() if start is None else start.clone()
            else:
                radius = tracker.best_dist.clone()
                if self.epsilon is not None:
                    radius = radius.clamp(max=self.epsilon)
                radius = torch.where(torch.isfinite(radius), radius, 0.0)
                offset = batch_view(radius / 2, x) * random_direction(x, self.norm, generator)
                point = (x + offset).clamp(0, 1)
            for _, idx, _ in tracker.iterations(self.steps, schedule=False):
                xa, lab, cur = x[idx], labels[idx], point[idx]
                with torch.enable_grad():
                    leaf = cur.clone().requires_grad_(True)
                    graph_logits = model(leaf)
                if targets is None:
                    classes = label_and_rivals(graph_logits.detach(), lab, self.candidates)
                else:
                    classes = torch.stack([lab, targets[idx]], 1)
                f, w = margin_gradients(leaf, graph_logits, classes)  # f_s = Ψ_s − Ψ_y at x⁽ⁱ⁾
                with torch.no_grad():
                    w = torch.nan_to_num(w.flatten(2))
                    dual = lp_norm(w, q, start_dim=2)
                    dist = torch.where(dual > 1e-12, f.abs() / dual.clamp_min(1e-30), float("inf"))
                    s = dist.argmin(1)
                    rows = torch.arange(xa.shape[0], device=x.device)
                    zero = ~torch.isfinite(dist[rows, s])
                    tracker.mark_zero_gradient(idx, zero)
                    new = self._step(xa, cur, f[rows, s], w[rows, s])
                    is_adv, finite = adversarial(model(new), lab)
                    tracker.update(idx, new, lp_norm(new - xa, self.norm), is_adv, finite)
                    new = torch.where(batch_view(is_adv, new), (1 - self.beta) * xa + self.beta * new, new)
                    point[idx] = torch.where(batch_view(zero, new), cur, new)
                    tracker.active[select(idx, zero | ~finite)] = False


def fab(model: nn.Module, x: Tensor, labels: Tensor | None = None, **options: Any) -> AttackResult:
    """Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), the paper's defaults:
    ``FAB(**opts)(model, x, labels, **settings)``, with ``options`` split into the fields of
    :class:`FAB` and the run settings of :meth:`Attack.__call__`."""
    return FAB.attack(model, x, labels, **options)


__all__ = ["FAB", "fab"]

"""DeepFool, L1 / L2 / L∞ (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, arXiv 1511.04599)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from salign._norms import NORMS, dual_exponent
from salign.attacks._engine import Attack
from salign.attacks._model import label_and_rivals, margin_gradients
from salign.attacks._ops import (
    adversarial,
    box_hyperplane_step,
    check_positive,
    lp_norm,
    minimal_step,
)
from salign.attacks._tracker import Tracker, select
from salign.attacks.result import AttackResult
from salign.errors import InputError


def _nearest_linearised_step(
    f: Tensor, w: Tensor, tracker: Tracker, idx: Tensor, norm: float, point: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The step r_i to the nearest linearised boundary in the Lp ``norm``, from the logit
    differences ``f`` (n, k) to the rivals (< 0 while not adversarial) and their gradients ``w``
    (n, k, ...), and the samples where every rival's gradient difference vanished (flagged, no
    step). ``point``: the current point when stepping from it within the box (DeepFool's
    default): the 1e-4 that crosses the boundary is then added to the distance, as in the
    authors' code, and in L1 the step is the minimal-L1 one that stays in the box (filling the
    coordinates by decreasing |w| up to their room) instead of one coordinate that the clamp
    would cut where it saturates. Without it (the paper's form, what robustness() runs), the
    1e-4 is added to the logit gap, as this attack always did: its results are those documented."""
    w = w.flatten(2)
    w_norm = lp_norm(w, dual_exponent(norm), start_dim=2)  # ‖w_k‖_q
    ratio = f.abs() / w_norm.clamp_min(1e-12)  # linearised distance to each boundary (eq. 8 / 11)
    ratio = torch.where(w_norm > 1e-12, ratio, torch.full_like(ratio, float("inf")))
    best = ratio.argmin(1)
    zero = ~torch.isfinite(ratio.gather(1, best[:, None]).squeeze(1))
    tracker.mark_zero_gradient(idx, zero)
    w_best = w[torch.arange(len(idx)), best]
    # r_i = (|f_l| + 1e-4 ‖w_l‖_q) · s(w_l) with s the minimal-Lp step of eq. 11 (w / ‖w‖₂² in
    # L2: Algorithm 2), or with 1e-4 alone in the paper's form
    f_best, dual_best = f.abs().gather(1, best[:, None]), w_norm.gather(1, best[:, None])
    gap = f_best + 1e-4 * (dual_best if point is not None else 1.0)
    if norm == 1 and point is not None:
        flat = point.flatten(1)
        r = box_hyperplane_step(w_best, gap.squeeze(1), -flat, 1 - flat, 1.0)
    else:
        r = gap * minimal_step(w_best, norm)
    r[zero] = 0
    return r, zero


@dataclass(frozen=True)
class DeepFool(Attack):
    """DeepFool attack in L2, L∞ or L1 (Moosavi-Dezfooli et al., CVPR 2016, Algorithm 2 and §3.3).

    Linearises the classifier around the current point and steps to the nearest linearised
    boundary, ``r = |f_l| / ‖w_l‖² · w_l`` with ``l = argmin_k |f_k| / ‖w_k‖`` (eq. 8), where
    ``f_k = Ψ_k − Ψ_y`` and ``w_k = ∇Ψ_k − ∇Ψ_y``; in Lp the distances use the dual norm
    ``‖w_k‖_q`` and the step is the minimal-Lp one onto that hyperplane (eq. 11: for L∞,
    ``|f_l| / ‖w_l‖₁ · sign(w_l)``; for L1, one coordinate); the accumulated step is applied with a factor
    ``1 + overshoot`` and clamped to [0, 1] (``clamp_each_step=False``: the paper's form, as in the
    authors' and foolbox's code), or (default, as in adv-lib) each step is taken from the current
    point with that factor and clamped to the box, so the next linearisation sees the pixels
    that saturated: fewer steps and smaller distances where the box binds (MNIST's zero
    background), and in L1 the step is the minimal-L1 one within the box, filling coordinates by
    decreasing |w| (the one-coordinate step of eq. 11 mostly lands on a saturated pixel and
    never crosses). Exact in one step for (bias-free or not) linear
    models away from the box, cheap (a few steps), but usually 1.2–2× the minimal distance on
    deep networks: use it as an upper bound and as a warm start for the other attacks. The
    defaults are the paper's, but for ``clamp_each_step`` (the paper has no box).

    Attributes:
        norm: the Lp norm: 2 (default), ``float("inf")`` or 1.
        steps: maximum iterations (each: 1 forward + ``candidates`` backwards).
        overshoot: relative overshoot of the accumulated perturbation (0.02 in the paper).
        candidates: number of rival classes linearised per step (the highest other logits;
            9 = the paper's 10 classes with the label; foolbox's ``candidates`` counts the label).
        clamp_each_step: step from the clamped current point (default) rather than clamp the
            accumulated perturbation once per step (the paper's form; what :func:`robustness`'s
            DeepFool run uses, so that its results stay those documented). Measured side by
            side in docs/benchmarks/attacks-cost.md.
    """

    name: ClassVar[str] = "deepfool"
    accepts_start: ClassVar[bool] = False
    norms: ClassVar[tuple[float, ...]] = NORMS
    norm: float = 2.0
    steps: int = 50
    overshoot: float = 0.02
    candidates: int = 9
    clamp_each_step: bool = True

    def __post_init__(self) -> None:
        self._parse_norm()
        check_positive(self.steps, "steps", integer=True)
        check_positive(self.overshoot, "overshoot", allow_zero=True)
        check_positive(self.candidates, "candidates", integer=True)
        if not isinstance(self.clamp_each_step, bool):
            raise InputError(f"clamp_each_step must be True or False, got {self.clamp_each_step!r}")

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        x, labels = tracker.x, tracker.labels
        perturbation = torch.zeros_like(x)  # r_tot, the accumulated linearised steps
        current = x.clone()  # clamp_each_step: the current point x_i, in the box
        for _, idx, _ in tracker.iterations(self.steps, schedule=False):
            xa, lab = x[idx], labels[idx]
            if self.clamp_each_step:
                leaf = current[idx].requires_grad_(True)
            else:
                leaf = (xa + (1 + self.overshoot) * perturbation[idx]).clamp(0, 1).requires_grad_(True)
            graph_logits = model(leaf)
            logits, point = graph_logits.detach(), leaf.detach()
            is_adv, finite = adversarial(logits, lab)
            tracker.update(idx, point, lp_norm(point - xa, self.norm), is_adv, finite)
            tracker.active[select(idx, is_adv | ~finite)] = False
            keep = ~is_adv & finite
            if not bool(keep.any()):
                break
            # differentiate through this step's forward: the rows of the samples that just
            # stopped cost one wasted backward row each, and the next step forwards the rest only
            classes = label_and_rivals(logits, lab, self.candidates)
            f, w = margin_gradients(leaf, graph_logits, classes)
            f, w, idx, point = f[keep], w[keep], select(idx, keep), point[keep]
            box = point if self.clamp_each_step else None
            r, zero = _nearest_linearised_step(f, w, tracker, idx, self.norm, box)
            if self.clamp_each_step:
                current[idx] = (point + (1 + self.overshoot) * r.view_as(point)).clamp(0, 1)
            else:
                perturbation[idx] = perturbation[idx] + r.view_as(point)
            tracker.active[idx[zero]] = False


def deepfool(model: nn.Module, x: Tensor, labels: Tensor | None = None, **options: Any) -> AttackResult:
    """DeepFool L2 attack (Moosavi-Dezfooli et al., CVPR 2016), the paper's defaults: ``DeepFool(**opts)(model, x, labels, **settings)``, with
    ``options`` split into the fields of :class:`DeepFool` and the run settings of :meth:`Attack.__call__`."""
    return DeepFool.attack(model, x, labels, **options)


__all__ = ["DeepFool", "deepfool"]

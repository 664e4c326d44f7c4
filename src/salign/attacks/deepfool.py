"""DeepFool, L2 (Moosavi-Dezfooli, Fawzi & Frossard, CVPR 2016, arXiv 1511.04599)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from salign.attacks._core import (
    Tracker,
    adversarial,
    candidate_classes,
    check_positive,
    class_gradients,
    l2_norm,
    run_attack,
)
from salign.attacks.result import AttackResult
from salign.errors import InputError


def _deepfool(
    model: nn.Module,
    x: Tensor,
    labels: Tensor,
    tracker: Tracker,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
) -> None:
    """DeepFool iterations on the active samples of ``tracker`` (see :func:`deepfool`)."""
    perturbation = torch.zeros_like(x)  # r_tot, the accumulated linearised steps
    for _ in range(steps):
        idx = tracker.active_indices()
        if idx.numel() == 0:
            break
        xa, lab = x[idx], labels[idx]
        leaf = (xa + (1 + overshoot) * perturbation[idx]).clamp(0, 1).requires_grad_(True)
        graph_logits = model(leaf)
        logits, point = graph_logits.detach(), leaf.detach()
        is_adv, finite = adversarial(logits, lab)
        tracker.update(idx, point, l2_norm(point - xa), is_adv, finite)
        tracker.active[idx[is_adv | ~finite]] = False
        keep = ~is_adv & finite
        if not bool(keep.any()):
            break
        graph = None
        if bool(keep.all()):  # reuse this forward's graph; otherwise one forward of the rest
            graph = (leaf, graph_logits)
        idx, xa, lab, point, logits = idx[keep], xa[keep], lab[keep], point[keep], logits[keep]
        classes = candidate_classes(logits, lab, candidates)
        z, grads = class_gradients(model, point, classes, graph)
        zc = z.gather(1, classes)
        f = zc[:, 1:] - zc[:, :1]  # f_k = z_k − z_label < 0 while not adversarial
        w = (grads[:, 1:] - grads[:, :1]).flatten(2)  # w_k = ∇z_k − ∇z_label
        w_norm = w.norm(dim=2)
        ratio = f.abs() / w_norm.clamp_min(1e-12)  # linearised distance to each boundary (eq. 8)
        ratio = torch.where(w_norm > 1e-12, ratio, torch.full_like(ratio, float("inf")))
        best = ratio.argmin(1)
        zero = ~torch.isfinite(ratio.gather(1, best[:, None]).squeeze(1))
        tracker.mark_zero_gradient(idx, zero)
        w_best = w[torch.arange(len(idx)), best]
        # r_i = (|f_l| + 1e-4) / ‖w_l‖² · w_l (Algorithm 2); the 1e-4 crosses the boundary
        step = (f.abs().gather(1, best[:, None]) + 1e-4) / w_norm.gather(1, best[:, None]).clamp_min(
            1e-12
        ) ** 2
        r = (step * w_best).view_as(point)
        r[zero] = 0
        perturbation[idx] = perturbation[idx] + r
        tracker.active[idx[zero]] = False


def deepfool(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int = 10,
    line_search_steps: int = 20,
    polish_steps: int = 2,
    levels: int | None = None,
    batch_size: int | None = None,
) -> AttackResult:
    """DeepFool L2 attack (Moosavi-Dezfooli et al., CVPR 2016, Algorithm 2).

    Linearises the classifier around the current point and steps to the nearest linearised
    boundary, ``r = |f_l| / ‖w_l‖² · w_l`` with ``l = argmin_k |f_k| / ‖w_k‖`` (eq. 8), where
    ``f_k = Ψ_k − Ψ_y`` and ``w_k = ∇Ψ_k − ∇Ψ_y``; the accumulated step is applied with a factor
    ``1 + overshoot`` and clamped to [0, 1]. Exact in one step for (bias-free or not) linear
    models away from the box, cheap (a few steps), but usually 1.2–2× the minimal distance on
    deep networks: use it as an upper bound and as a warm start for the other attacks.

    Args:
        model: classifier returning logits (N, K) for inputs in [0, 1].
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: classes (N,) to move away from; ``None`` uses the predicted class.
        steps: maximum DeepFool iterations (each: 1 forward + ``candidates`` backwards).
        overshoot: relative overshoot of the accumulated perturbation (0.02 in the paper).
        candidates: number of classes considered per step (label + top other logits).
        line_search_steps: bisection steps on the segment from ``x`` to the best adversarial
            point, moving it onto the boundary (0 turns it off).
        polish_steps: rounds of the final polish: one DeepFool step from ``x`` with the
            gradients taken at the best point, then a line search (each round: 1 forward,
            up to 10 backwards, ``line_search_steps`` forwards per sample; 0 turns it off).
        levels: if given, adversarial points are quantised to this many levels (e.g. 256) and
            verified after quantisation.
        batch_size: process the inputs in chunks of this size.

    Returns:
        An :class:`AttackResult` with the smallest verified adversarial point per sample.
    """
    check_positive(steps, "steps", integer=True)
    check_positive(overshoot, "overshoot", allow_zero=True)
    check_positive(candidates, "candidates", integer=True)
    if candidates < 2:
        raise InputError(f"candidates must be at least 2 (the label and one rival), got {candidates}")
    return run_attack(
        "deepfool",
        _deepfool,
        model,
        x,
        labels,
        line_search_steps=line_search_steps,
        polish_steps=polish_steps,
        levels=levels,
        batch_size=batch_size,
        steps=steps,
        overshoot=overshoot,
        candidates=candidates,
    )


__all__ = ["deepfool"]

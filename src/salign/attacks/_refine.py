"""What happens to an attack's best points after its iterations: the line search onto the
boundary, the DeepFool polish, and the final verification by re-forwarding."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from salign._norms import dual_exponent
from salign.attacks._model import label_and_rivals, margin_gradients
from salign.attacks._ops import (
    adversarial,
    batch_view,
    l2_norm,
    lp_norm,
    minimal_step,
    quantize,
)
from salign.attacks._tracker import Tracker

#: Relative outward pushes ``x + (adv − x)(1 + push)`` tried, in order, for a found point that
#: fails the final verification (see :func:`verify`); the distance grows by at most 1%.
VERIFY_PUSHES: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)

#: Rival classes the polish step linearises (the nearest linearised boundary among them).
POLISH_RIVALS = 9


@torch.no_grad()
def boundary_search(
    model: nn.Module,
    x: Tensor,
    adv: Tensor,
    labels: Tensor,
    steps: int,
    levels: int | None = None,
    endpoint_adversarial: bool | None = False,
) -> tuple[Tensor, Tensor]:
    """Bisect on the segment from ``x`` to the adversarial ``adv`` for the adversarial point
    closest to ``x``: returns (points, is_adversarial). ``steps`` forwards; with ``levels`` the
    candidate points are quantised first, so the result stays adversarial after quantisation.
    ``endpoint_adversarial``: what is known about ``adv`` itself (``None``: check it, 1 forward)."""
    n = x.shape[0]
    lo = torch.zeros(n, device=x.device, dtype=x.dtype)
    hi = torch.ones(n, device=x.device, dtype=x.dtype)
    if endpoint_adversarial is None:
        ok, _ = adversarial(model(quantize(adv, levels)), labels)
    else:
        ok = torch.full((n,), endpoint_adversarial, dtype=torch.bool, device=x.device)
    delta = adv - x
    for _ in range(steps):
        mid = (lo + hi) / 2
        point = quantize(x + batch_view(mid, x) * delta, levels)
        is_adv, _ = adversarial(model(point), labels)
        hi = torch.where(is_adv, mid, hi)
        lo = torch.where(is_adv, lo, mid)
        ok |= is_adv
    return quantize(x + batch_view(hi, x) * delta, levels), ok


def refine(
    model: nn.Module,
    tracker: Tracker,
    steps: int,
    levels: int | None = None,
    polish_steps: int = 0,
    only: Tensor | None = None,
) -> None:
    """Tighten every found sample's best point (of the samples ``only``, if given): a line
    search onto the boundary, then ``polish_steps`` rounds of one DeepFool step from x with the
    gradients taken at the best point (the nearest linearised boundary among the top classes
    there) followed by a line search along the new direction. A point is only ever replaced by
    a better verified one. Nothing happens when ``steps`` is 0."""
    if steps <= 0:
        return
    for round_ in range(polish_steps + 1):
        scope = tracker.found & (tracker.best_dist > 0)
        if only is not None:
            scope &= only
        idx = scope.nonzero().squeeze(1)
        if idx.numel() == 0:
            return
        x, labels, best = tracker.x[idx], tracker.labels[idx], tracker.best_adv[idx]
        candidate = best if round_ == 0 else project_on_boundary(model, x, best, labels, norm=tracker.norm)
        # the best points are known to be adversarial, unless they still have to be quantised
        known = (None if levels is not None else True) if round_ == 0 else False
        points, ok = boundary_search(model, x, candidate, labels, steps, levels, known)
        if round_ == 0 and levels is not None:
            # the iterates were not quantised: replace every best point by its quantised
            # line-search result (or drop it), so that only quantised points compete
            tracker.best_dist[idx] = float("inf")
        tracker.update(idx, points, lp_norm(points - x, tracker.norm), ok)


def project_on_boundary(
    model: nn.Module,
    x: Tensor,
    boundary: Tensor,
    labels: Tensor,
    overshoot: float = 0.02,
    *,
    norm: float = 2.0,
) -> Tensor:
    """One DeepFool step from ``x`` using the gradients at the boundary point ``b``: with
    ``f_k = Ψ_k − Ψ_y`` linearised at ``b``, move x onto the hyperplane
    ``f_k(b) + ⟨∇f_k(b), p − b⟩ = 0`` nearest in the Lp ``norm`` (distance |offset| / ‖w‖_q)
    among :data:`POLISH_RIVALS` rivals, by its minimal-Lp step (exact for linear models), with a
    small overshoot, clamped."""
    with torch.enable_grad():
        b = boundary.detach().requires_grad_(True)
        graph_logits = model(b)
    classes = label_and_rivals(graph_logits.detach(), labels, POLISH_RIVALS)
    f, w = margin_gradients(b, graph_logits, classes)
    b = b.detach()
    with torch.no_grad():
        w = torch.nan_to_num(w.flatten(2), nan=0.0, posinf=0.0, neginf=0.0)
        w_sq = w.pow(2).sum(2)
        offset = f + (w * (x - b).flatten(1)[:, None, :]).sum(2)  # linearised f_k at x (< 0 there)
        dual = w_sq.sqrt() if norm == 2 else lp_norm(w, dual_exponent(norm), start_dim=2)
        dist = offset.abs() / dual.clamp_min(1e-30)
        dist = torch.where(w_sq > 0, dist, torch.full_like(dist, float("inf")))
        best = dist.argmin(1)
        rows = torch.arange(len(x), device=x.device)
        w_best, off_best, sq_best = w[rows, best], offset[rows, best], w_sq[rows, best]
        if norm == 2:
            coef = torch.where(sq_best > 0, -off_best / sq_best.clamp_min(1e-30), torch.zeros_like(sq_best))
            step = batch_view(coef * (1 + overshoot), x) * w_best.view_as(x)
        else:
            step = (-off_best * (1 + overshoot))[:, None] * minimal_step(w_best, norm)
        return (x + step.view_as(x)).clamp(0, 1)


@torch.no_grad()
def verify(
    model: nn.Module,
    x: Tensor,
    adv: Tensor,
    labels: Tensor,
    clean_class: Tensor,
    levels: int | None = None,
    norm: float = 2.0,
) -> dict[str, Tensor]:
    """Clamp (and quantise) ``adv``, forward it twice, and keep it only where both forwards
    confirm a class other than ``labels``. A found point (``adv ≠ x``) that fails is pushed
    outwards from x by the relative amounts of :data:`VERIFY_PUSHES`, in order, and kept at the
    first push that both forwards confirm. Returns adv, distance (in the Lp ``norm``), success,
    adv_class, nondeterministic."""
    adv = quantize(adv.clamp(0, 1), levels)
    first, second = model(adv), model(adv)
    adv1, _ = adversarial(first, labels)
    adv2, _ = adversarial(second, labels)
    pred1, pred2 = first.argmax(1), second.argmax(1)
    scale = 1 + first.abs().nan_to_num(0, 0, 0).amax(1)
    nondet = (pred1 != pred2) | ((first - second).abs().nan_to_num(1e30, 1e30, 1e30).amax(1) > 1e-4 * scale)
    success = adv1 & adv2
    # A found point can fail here although the attack saw it adversarial: the line search leaves
    # it within round-off of the boundary, and a float32 forward of a differently composed batch
    # (the attack forwards only its active samples) can land on the other side. Rather than lose
    # the sample, push such points outwards from x by a tiny relative amount until they verify.
    retry = ~success & (l2_norm(adv - x) > 0)
    for push in VERIFY_PUSHES:
        if not bool(retry.any()):
            break
        rows = retry.nonzero().squeeze(1)
        cand = quantize((x[rows] + (adv[rows] - x[rows]) * (1 + push)).clamp(0, 1), levels)
        f1, f2 = model(cand), model(cand)
        ok = adversarial(f1, labels[rows])[0] & adversarial(f2, labels[rows])[0]
        if bool(ok.any()):
            good = rows[ok]
            adv[good], first[good], success[good] = cand[ok], f1[ok], True
            pred1[good] = f1[ok].argmax(1)
            retry[good] = False
    dist = lp_norm(adv - x, norm)
    dist = torch.where(success, dist, torch.full_like(dist, float("inf")))
    adv = torch.where(batch_view(success, adv), adv, x)
    adv_class = torch.where(success, pred1, clean_class)
    return {
        "adv": adv,
        "distance": dist,
        "success": success,
        "adv_class": adv_class,
        "nondeterministic": nondet,
    }

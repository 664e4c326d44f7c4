"""Boundary attributions: the saliency, alignment and integrated gradients of f at and from a
boundary point x_b that an attack already found (no attack runs here).

Wang, Fredrikson & Datta (ICML 2022, "Robust models are more interpretable because
attributions look normal") attribute a prediction by the gradient at the closest decision
boundary point: for a linear model it is the boundary normal, parallel to the attack direction
x_b − x. Boundary integrated gradients (IG with baseline x_b) integrate ∇f along the straight
path from x_b to x, so by completeness they sum to f(x) − f(x_b), and f(x_b) ≈ 0 for the
binarized logit of the pair whose boundary x_b lies on (docs/theory.md, "Attributions").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._validation import check_inputs, check_labels, check_logits, eval_mode, run_model, warn_count
from salign.attacks._model import chunks
from salign.attacks.result import AttackResult
from salign.attributions import _captum
from salign.attributions._methods import captum_call, check_rival_for, chunk_options
from salign.attributions._targets import (
    AttributionMode,
    TargetScore,
    check_attribution_mode,
    score_at,
)
from salign.errors import InputError, InputTypeError
from salign.quantities._common import (
    check_candidates,
    check_model_and_inputs,
    check_origin,
    div_or_nan,
    dot,
    norm,
    projection,
)
from salign.quantities._rivals import runner_up


@dataclass(frozen=True)
class BoundaryAttribution:
    """Attributions at and from the boundary points x_b, per sample (→ :func:`boundary_attributions`).

    f is the scalar of ``mode`` (with i = ``target`` and j = ``rival`` fixed at x), s(·) = ∇f,
    o the origin. Every float column is NaN where the attack failed (``failed``).

    Attributes:
        target: i.
        rival: j of the binarized logit (the runner-up of i at x for ``mode="margin"``; −1 for
            "logit" and "log_softmax").
        failed: no boundary point (the attack failed: ``success`` False or distance inf, or x_b
            still predicted as i).
        value: f(x).
        value_at_boundary: f(x_b) (≈ 0 for the binarized pair x_b crosses, slightly negative as
            x_b is verified adversarial).
        direction_cosine: cos∠(−s(x), x_b − x): 1 when the attack goes straight down the
            gradient (a linear model: the boundary normal), NaN where x_b = x.
        boundary_alignment: α of x scored with the boundary map, |⟨x − o, s(x_b)⟩| / ‖s(x_b)‖_q.
        alignment_at_boundary: α at x_b, |⟨x_b − o, s(x_b)⟩| / ‖s(x_b)‖_q (for a bias-free
            linear model and the binarized pair, ≈ 0: x_b lies on the boundary through 0).
        integrated_gradients_alignment: α of x scored with the boundary IG map.
        completeness_gap: Σ_p BIG_p − (f(x) − f(x_b)): the quadrature error of boundary IG.
        saliency: s(x_b), x's shape (a map, not a column).
        integrated_gradients: the boundary IG map, x's shape (a map, not a column).
        norm: the Lp norm of the alignment columns (q its dual exponent).
    """

    target: Tensor
    rival: Tensor
    failed: Tensor
    value: Tensor
    value_at_boundary: Tensor
    direction_cosine: Tensor
    boundary_alignment: Tensor
    alignment_at_boundary: Tensor
    integrated_gradients_alignment: Tensor
    completeness_gap: Tensor
    saliency: Tensor
    integrated_gradients: Tensor
    norm: float = 2.0

    MAPS: ClassVar[tuple[str, ...]] = ("saliency", "integrated_gradients")

    @classmethod
    def columns(cls) -> list[str]:
        """Per-sample (N,) field names in table order (the maps and ``norm`` excluded)."""
        return [f.name for f in fields(cls) if f.name not in (*cls.MAPS, "norm")]

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def to_dict(self) -> dict[str, list[Any]]:
        """Columns as plain Python lists (ints, bools, floats; NaN stays NaN)."""
        return {name: getattr(self, name).detach().cpu().tolist() for name in self.columns()}


@dataclass(frozen=True)
class _Points:
    """The boundary points and what the attack says about them."""

    adv: Tensor
    failed: Tensor  # the attack did not succeed
    labels: Tensor | None  # the class each sample was attacked away from
    adv_class: Tensor | None  # the class reached


def _boundary_points(boundary: object, x: Tensor, check_range: bool) -> _Points:
    if boundary is None:
        raise InputError(
            "boundary attributions need boundary= (the AttackResult of salign.robustness, or the "
            "boundary points x_b as a tensor of x's shape)"
        )
    if isinstance(boundary, AttackResult):
        adv, labels, adv_class = boundary.adv, boundary.labels, boundary.adv_class
        failed = ~boundary.success.to(torch.bool) | ~torch.isfinite(boundary.distance)
    elif isinstance(boundary, Tensor):
        adv, labels, adv_class = boundary, None, None
        failed = torch.zeros(x.shape[0], dtype=torch.bool)
    else:
        raise InputTypeError(
            f"boundary must be an AttackResult or a tensor of x's shape, got {type(boundary).__name__}"
        )
    if adv.shape != x.shape:
        raise InputError(f"boundary points must have x's shape {tuple(x.shape)}, got {tuple(adv.shape)}")
    check_inputs(adv, name="boundary", check_range=check_range)
    dev = x.device

    def moved(t: Tensor | None) -> Tensor | None:
        return None if t is None else t.to(dev)

    return _Points(
        adv.detach().to(device=dev, dtype=x.dtype), failed.to(dev), moved(labels), moved(adv_class)
    )


def _nan_rows(t: Tensor, bad: Tensor) -> Tensor:
    return torch.where(bad.view(-1, *([1] * (t.ndim - 1))), torch.full_like(t, math.nan), t)


def _chunk(
    model: nn.Module,
    xs: Tensor,
    points: _Points,
    part: slice,
    target: Tensor | None,
    mode: str,
    rival: object,
    candidates: int | None,
    p: float,
    ig: tuple[Any, dict[str, Any]] | None,
) -> tuple[dict[str, Tensor], int]:
    """Every boundary column of one chunk (ig = None skips the IG map), and the count of samples
    with x_b = x among those that did not fail."""
    xb = points.adv[part]
    with torch.no_grad():
        logits = check_logits(run_model(model, xs), xs.shape[0])
    if target is not None:
        i = check_labels(target[part], xs.shape[0], logits.shape[1], name="target").to(xs.device)
    elif points.labels is not None:
        i = check_labels(points.labels[part], xs.shape[0], logits.shape[1], name="boundary labels")
    else:
        i = logits.argmax(1)
    if points.adv_class is not None:
        reached = points.adv_class[part]
    else:
        with torch.no_grad():
            reached = check_logits(run_model(model, xb), xb.shape[0]).argmax(1)
    failed = points.failed[part] | (reached == i)
    rv: object = rival
    if isinstance(rival, Tensor):
        rv = rival[part]
    elif rival == "adversarial":  # the pair x_b crosses; any valid class where there is none
        rv = torch.where(failed, runner_up(logits, i), reached)
    at_x = score_at(model, xs, i, mode, rv, candidates, p)
    same = at_x.classes[:, 1] if mode == "binarized" else rival
    at_b = score_at(model, xb, i, mode, same, candidates, p)
    direction = xb - xs.detach()
    step = norm(direction)
    cos = div_or_nan(dot(-at_x.gradient, direction), norm(at_x.gradient) * step)[0]
    big = xs.new_full(xs.shape, math.nan)
    if ig is not None:
        bound, opts = ig
        big = _captum.run(bound, xs, at_x.classes, {**chunk_options(opts, points.adv, part), "baselines": xb})
    has_rival = mode in ("binarized", "margin")
    cols = {
        "target": i,
        "rival": at_x.classes[:, 1] if has_rival else torch.full_like(i, -1),
        "failed": failed,
        "value": at_x.value,
        "value_at_boundary": at_b.value,
        "direction_cosine": cos,
        "completeness_gap": big.flatten(1).sum(1) - (at_x.value - at_b.value),
        "saliency": at_b.gradient,
        "integrated_gradients": big,
    }
    for name in (
        "value",
        "value_at_boundary",
        "direction_cosine",
        "completeness_gap",
        *BoundaryAttribution.MAPS,
    ):
        cols[name] = _nan_rows(cols[name], failed)
    return cols, int(((step == 0) & ~failed).sum())


def _run(
    model: nn.Module,
    x: Tensor,
    boundary: object,
    target: Tensor | None,
    *,
    mode: object,
    rival: object,
    batch_size: int | None,
    candidates: int | None,
    check_range: bool,
    norm_p: float,
    with_ig: bool,
    origin: Tensor | None,
    ig_options: dict[str, Any],
) -> dict[str, Tensor]:
    """Checks, chunks, and the columns of every chunk joined (the alignment columns against
    ``origin``)."""
    mode_s = check_attribution_mode(mode)
    riv = check_rival_for("boundary_gradient", rival)
    cand = check_candidates(candidates)
    check_model_and_inputs(model, x, check_range)
    if target is not None:
        check_labels(target, x.shape[0], name="target")
    if isinstance(riv, Tensor):
        check_labels(riv, x.shape[0], name="rival")
    points = _boundary_points(boundary, x, check_range)
    org = check_origin(origin, x)
    if "baselines" in ig_options:
        raise InputError("boundary integrated gradients take x_b as their baseline; do not pass baselines=")
    parts = chunks(x.shape[0], batch_size)
    ig = None
    if with_ig:
        wrapper = TargetScore(model, mode_s)
        ig = captum_call(
            "boundary_integrated_gradients", model, wrapper, parts[0].stop - parts[0].start, ig_options
        )
    elif ig_options:
        raise InputError(f"boundary_gradient takes no method options, got {', '.join(sorted(ig_options))}")
    out: list[dict[str, Tensor]] = []
    n_zero_step = 0
    with eval_mode(model):
        for part in parts:
            cols, nz = _chunk(model, x[part], points, part, target, mode_s, riv, cand, norm_p, ig)
            out.append(cols)
            n_zero_step += nz
    merged = {k: torch.cat([c[k] for c in out]) for k in out[0]}
    n = x.shape[0]
    warn_count(
        int(merged["failed"].sum()),
        n,
        "the attack found no boundary point (or x_b keeps the class), so its boundary columns are NaN",
    )
    warn_count(n_zero_step, n, "x_b = x (already misclassified), so direction_cosine is NaN")
    xd, xb = x.detach(), points.adv
    if org is not None:
        xd, xb = xd - org, xb - org
    # α of x and of x_b with the boundary maps (NaN rows stay NaN)
    merged["boundary_alignment"], n_zero_map = projection(xd, merged["saliency"], norm_p)
    warn_count(n_zero_map, n, "the saliency at x_b is zero, so the boundary alignment is NaN")
    merged["alignment_at_boundary"] = projection(xb, merged["saliency"], norm_p)[0]
    merged["integrated_gradients_alignment"] = projection(xd, merged["integrated_gradients"], norm_p)[0]
    return merged


def boundary_attributions(
    model: nn.Module,
    x: Tensor,
    boundary: Tensor | AttackResult,
    target: Tensor | None = None,
    *,
    mode: AttributionMode = "binarized",
    rival: Any = "adversarial",
    origin: Tensor | None = None,
    batch_size: int | None = None,
    candidates: int | None = None,
    check_range: bool = True,
    norm: float | str = 2,
    **ig_options: Any,
) -> BoundaryAttribution:
    """Attributions at and from the boundary points x_b (→ :class:`BoundaryAttribution`).

    From x_b (``boundary``: the :class:`~salign.AttackResult` of :func:`salign.robustness`, whose
    ``adv`` are the verified boundary points, or a tensor): the saliency s(x_b) = ∇f(x_b), α of
    x with it and α at x_b, the cosine between −s(x) and the attack direction x_b − x (1 for a
    linear model), and boundary integrated gradients (captum's IG of f with baseline x_b;
    Σ = f(x) − f(x_b) up to ``completeness_gap``). No attack is run: the cost is two
    gradients and one IG per sample.

    Args:
        model: classifier returning logits; run in eval mode (restored afterwards).
        x: the inputs (N, C, H, W) or (N, D) in [0, 1] the boundary points belong to.
        boundary: an AttackResult (its ``labels`` are the default target) or x_b, x's shape.
        target: class i per sample; None = ``boundary.labels`` for an AttackResult, else the
            predicted class at x.
        mode: the scalar f, as in :func:`attribute` ("binarized" by default).
        rival: "adversarial" (default: the class x_b reached, so f is the binarized logit of
            the boundary x_b lies on), "nearest", "runner_up" or a tensor of classes.
        origin: the reference point of the alignment columns (None = 0).
        batch_size: samples per chunk.
        candidates: for ``rival="nearest"``, the number of rivals searched.
        check_range: reject inputs (x and x_b) outside [0, 1].
        norm: the norm of the alignment columns (α_p); the cosine is Euclidean.
        **ig_options: captum IntegratedGradients options (``n_steps``, ``method``,
            ``internal_batch_size``); the baseline is x_b.

    Returns:
        :class:`BoundaryAttribution` of per-sample tensors on x's device.
    """
    p = parse_norm(norm)
    cols = _run(
        model,
        x,
        boundary,
        target,
        mode=mode,
        rival=rival,
        batch_size=batch_size,
        candidates=candidates,
        check_range=check_range,
        norm_p=p,
        with_ig=True,
        origin=origin,
        ig_options=ig_options,
    )
    return BoundaryAttribution(**cols, norm=p)


def boundary_maps(
    model: nn.Module,
    x: Tensor,
    boundary: object,
    method: str,
    target: Tensor | None,
    *,
    mode: object,
    rival: object,
    batch_size: int | None,
    candidates: int | None,
    check_range: bool,
    norm: float | str,
    **method_options: Any,
) -> Tensor:
    """The map of ``attribute(method="boundary_gradient" | "boundary_integrated_gradients")``."""
    with_ig = method == "boundary_integrated_gradients"
    cols = _run(
        model,
        x,
        boundary,
        target,
        mode=mode,
        rival=rival,
        batch_size=batch_size,
        candidates=candidates,
        check_range=check_range,
        norm_p=parse_norm(norm),
        with_ig=with_ig,
        origin=None,
        ig_options=method_options,
    )
    return cols["integrated_gradients" if with_ig else "saliency"]

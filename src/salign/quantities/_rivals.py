"""The rival class j of the binarized logit Ψ^i − Ψ^j: the nearest rival j* (D2, D6) or the
runner-up, and the one place that picks the pair for every binarized quantity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._validation import check_labels, eval_mode, warn_count
from salign.errors import InputError
from salign.quantities._common import (
    Strategy,
    check_candidates,
    check_model_and_inputs,
    dual_norm,
    logit_gap,
    one_hot_rows,
    resolve_target,
)
from salign.quantities._graph import Graph, resolve_strategy


@dataclass(frozen=True)
class NearestRival:
    """Result of :func:`nearest_rival` (all tensors per sample, on the input's device).

    Attributes:
        rival: j*, the class of the nearest linearised boundary, (N,) int64 (−1 where every
            rival has a zero binarized gradient).
        distance: ρ̃ = (Ψ^i − Ψ^{j*}) / ‖g_{j*}‖, (N,); NaN where ``rival`` is −1. Signed: it is
            negative when the target is not the predicted class.
        margin: Ψ^i − Ψ^{j*}, (N,).
        gradient: g_{j*} = ∇(Ψ^i − Ψ^{j*}), shape of x.
        gradient_norm: ‖g_{j*}‖, (N,).
        logits: Ψ(x), (N, K).
        target: i, (N,).
    """

    rival: Tensor
    distance: Tensor
    margin: Tensor
    gradient: Tensor
    gradient_norm: Tensor
    logits: Tensor
    target: Tensor


def runner_up(logits: Tensor, target: Tensor) -> Tensor:
    """argmax over j ≠ target of the logits (the second-highest logit when target = i*)."""
    masked = logits.detach().scatter(1, target[:, None], -math.inf)
    return masked.argmax(1)


def candidate_rivals(logits: Tensor, target: Tensor, candidates: int | None) -> Tensor:
    """(N, M) rival classes: all j ≠ i, or the ``candidates`` highest-logit ones (M of them)."""
    k = logits.shape[1]
    m = k - 1 if candidates is None else min(candidates, k - 1)
    masked = logits.detach().scatter(1, target[:, None], -math.inf)
    if m == k - 1:
        # every other class, in logit order (sorting makes ties deterministic and cheap)
        return masked.argsort(1, descending=True)[:, :m]
    return masked.topk(m, dim=1).indices


def search_nearest(
    graph: Graph, target: Tensor, candidates: int | None, extra_rows: Tensor | None = None, norm: float = 2.0
) -> tuple[NearestRival, Tensor | None]:
    """Stream the binarized gradients of the ``candidates`` rivals searched; keep the nearest in
    the Lp ``norm`` (distances margin / ‖g_j‖_q).

    ``extra_rows`` (E, N, K) are further cotangents evaluated in the same pass (analyze uses it
    for the plain logit gradient); their gradients are returned as the second value.
    """
    logits = graph.logits.detach()
    n, k = logits.shape
    rivals = candidate_rivals(logits, target, candidates)  # (N, M)
    onehot_t = F.one_hot(target, k).to(logits.dtype).unsqueeze(0)
    n_extra = 0 if extra_rows is None else extra_rows.shape[0]

    def cotangents(start: int, stop: int) -> Tensor:
        """Rows [start, stop) of [extra rows; e_i − e_j for each candidate j], shape (·, N, K)."""
        parts = []
        if start < n_extra:
            assert extra_rows is not None
            parts.append(extra_rows[start : min(stop, n_extra)])
        lo, hi = max(start - n_extra, 0), stop - n_extra
        if hi > lo:
            parts.append(onehot_t - one_hot_rows(rivals[:, lo:hi], k, logits.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    margins = logit_gap(logits, target, rivals)  # (N, M)
    best_dist = logits.new_full((n,), math.inf)
    best_rival = torch.full((n,), -1, dtype=torch.long, device=logits.device)
    best_norm = logits.new_zeros(n)
    best_margin = logits.new_full((n,), math.nan)
    best_grad = graph.x.new_zeros(graph.x.shape)
    extra: list[Tensor] = []
    for start, grads in graph.vjp_chunks(cotangents, n_extra + rivals.shape[1]):
        for r, g in enumerate(grads, start):
            if r < n_extra:
                extra.append(g)
                continue
            m = r - n_extra
            g_norm = dual_norm(g.detach(), norm)
            # a rival whose binarized gradient vanishes has its linearised boundary at infinity
            dist = torch.where(g_norm > 0, margins[:, m] / torch.where(g_norm > 0, g_norm, 1), math.inf)
            better = dist < best_dist
            if bool(better.any()):
                best_grad = torch.where(better.view(-1, *([1] * (g.ndim - 1))), g, best_grad)
            best_dist = torch.where(better, dist, best_dist)
            best_rival = torch.where(better, rivals[:, m], best_rival)
            best_norm = torch.where(better, g_norm, best_norm)
            best_margin = torch.where(better, margins[:, m], best_margin)
    result = NearestRival(
        rival=best_rival,
        distance=torch.where(best_rival >= 0, best_dist, math.nan),
        margin=best_margin,
        gradient=best_grad,
        gradient_norm=best_norm,
        logits=graph.detached_logits(),
        target=target,
    )
    return result, (torch.stack(extra) if extra else None)


def nearest_rival(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    candidates: int | None = None,
    strategy: Strategy | None = None,
    create_graph: bool = False,
    check_range: bool = True,
    norm: float | str = 2,
) -> NearestRival:
    """The nearest linearised decision boundary: j* and ρ̃ (Etmann et al. 2019, D2 and D6).

    j* = argmin_{j≠i} (Ψ^i(x) − Ψ^j(x)) / ‖∇Ψ^i(x) − ∇Ψ^j(x)‖ and ρ̃(x) is that minimum: the
    L2 distance from x to the closest class boundary of the first-order Taylor model of Ψ at x
    (DeepFool's first step). For a bias-free linear model it is the exact distance ρ(x) (T2).

    All K − 1 binarized gradients come from ONE forward pass followed by K − 1 input-gradient
    backwards (or ``candidates`` of them); only the running best is kept, so memory stays
    O(N·d) for K = 1000. Cost relative to bare passes: ``docs/benchmarks/quantities.md``.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample, (N,); None = the predicted class i*.
        candidates: the number of rival classes searched: the ``candidates`` with the highest
            logits (exact when ``candidates >= K − 1``; None = all K − 1). Use e.g. 10 for
            K = 1000.
        strategy: gradient strategy ("auto", "loop", "batched", "vmap"); see :data:`STRATEGIES`.
        create_graph: keep ``gradient`` differentiable.
        check_range: reject inputs outside [0, 1].
        norm: the Lp norm of the distance (2; ``"inf"`` or 1: margins over ‖g_j‖_q, q the dual
            exponent, docs/theory.md D6_p); ``gradient_norm`` is then ‖g_{j*}‖_q.

    Returns:
        :class:`NearestRival` with j*, ρ̃, the margin, g_{j*} and its norm, the logits and i.
    """
    p = parse_norm(norm)
    check_model_and_inputs(model, x, check_range)
    cand = check_candidates(candidates)
    with eval_mode(model):
        graph = Graph(model, x, strategy=resolve_strategy(strategy), create_graph=create_graph)
        tgt = resolve_target(target, graph.logits)
        result, _ = search_nearest(graph, tgt, cand, norm=p)
    warn_count(
        int((result.rival < 0).sum()), x.shape[0], "every rival has a zero binarized gradient; ρ̃ is NaN"
    )
    return result


@dataclass(frozen=True)
class Pair:
    """The binarized pair Ψ^i − Ψ^j that one ``rival=`` choice gives, per sample."""

    gradient: Tensor  # g = ∇(Ψ^i − Ψ^j), shape of x
    margin: Tensor  # Ψ^i − Ψ^j, (N,)
    rival: Tensor  # j, (N,)
    nearest: Tensor  # j* (D2), −1 where not searched or where every g vanished, (N,)
    runner_up: Tensor  # the highest logit other than i, (N,)
    extra: Tensor | None  # gradients of the extra cotangent rows, (E, N, ...), or None


def binarized_pair(
    graph: Graph,
    target: Tensor,
    rival: object,
    candidates: int | None,
    extra_rows: Tensor | None = None,
    norm: float = 2.0,
) -> Pair:
    """Pick j per sample (``"nearest"``, ``"runner_up"`` or a tensor) and differentiate Ψ^i − Ψ^j.

    With ``"nearest"``, ``candidates`` is the number of rival classes searched; a sample whose
    binarized gradients all vanish keeps the runner-up as its rival (and its margin), so that
    every row has a pair. ``extra_rows`` (E, N, K) are differentiated in the same pass.
    """
    logits = graph.detached_logits()
    k = logits.shape[1]
    ru = runner_up(logits, target)
    if isinstance(rival, Tensor) or rival == "runner_up":
        riv = fixed_rival(logits, target, rival)
    else:  # "nearest"
        res, extra = search_nearest(graph, target, candidates, extra_rows, norm)
        found = res.rival >= 0
        margin = torch.where(found, res.margin, logit_gap(logits, target, ru))
        return Pair(res.gradient, margin, torch.where(found, res.rival, ru), res.rival, ru, extra)
    cot = (F.one_hot(target, k) - F.one_hot(riv, k)).to(logits.dtype).unsqueeze(0)
    if extra_rows is not None:
        cot = torch.cat([extra_rows, cot])
    grads = graph.vjp(cot, last=True)
    extra = grads[:-1] if len(grads) > 1 else None
    return Pair(grads[-1], logit_gap(logits, target, riv), riv, torch.full_like(target, -1), ru, extra)


def fixed_rival(logits: Tensor, target: Tensor, rival: object) -> Tensor:
    """j per sample for the rival choices that need no gradient: ``"runner_up"`` (from the
    logits) or a tensor of classes (checked: below K, never the target). ``"nearest"`` needs
    the search of :func:`binarized_pair` and is refused here."""
    if isinstance(rival, Tensor):
        return _check_rival_classes(rival, target, logits.shape[1])
    if rival == "runner_up":
        return runner_up(logits, target)
    raise InputError(f"internal: fixed_rival takes 'runner_up' or a tensor of classes, got {rival!r}")


def _check_rival_classes(rival: Tensor, target: Tensor, k: int) -> Tensor:
    """A tensor ``rival=``: classes below K, on the logits' device, and never the target."""
    n = target.shape[0]
    riv = check_labels(rival, n, k, name="rival").to(target.device)
    if bool((riv == target).any()):
        raise InputError(
            f"rival equals the target class in {int((riv == target).sum())} of {n} samples; "
            "the binarized logit Ψ^i − Ψ^j needs j ≠ i"
        )
    return riv

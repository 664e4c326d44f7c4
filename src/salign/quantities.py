"""The paper's per-sample quantities: saliency maps, alignment α, linearised robustness ρ̃, β.

Reference implementation of the definitions of Etmann, Lunz, Maass & Schönlieb, "On the
Connection Between Adversarial Robustness and Saliency Map Interpretability" (ICML 2019,
arXiv 1905.04172); the numbering (D1–D7, T1–T4) follows ``docs/theory.md``.

Notation: Ψ = (Ψ^1, …, Ψ^K) are the logits, i = i* = argmax_k Ψ^k(x) the predicted class
(or a given ``target``), j a rival class, and

* saliency map (D1):          s(x) = ∇_x Ψ^i(x)
* binarized gradient (D2):    g_j(x) = ∇_x (Ψ^i − Ψ^j)(x)
* nearest rival (D2):         j* = argmin_{j≠i} (Ψ^i − Ψ^j)(x) / ‖g_j(x)‖
* alignment (D3):             α(x) = |⟨x − origin, s(x)⟩| / ‖s(x)‖
* normalized alignment (D4):  α(x) / ‖x − origin‖ = |cos ∠(x − origin, s(x))|
* linearized robustness (D6): ρ̃(x) = min_{j≠i} (Ψ^i − Ψ^j)(x) / ‖g_j(x)‖
* effective bias (D7):        β(x) = Ψ(x) − ⟨∇Ψ(x), x⟩  (of Ψ^i, or of the pair Ψ^i − Ψ^j)

Every function here is batched (inputs (N, C, H, W) or (N, D)), works on any device and in
float32/float64, runs the model in eval mode and restores the caller's mode afterwards
(:func:`salign._validation.eval_mode`), and differentiates with ``torch.autograd.grad`` with
respect to the *input only*, so no parameter ``.grad`` is ever touched.

All input gradients of one sample come from ONE forward pass: the logits' graph is kept and
walked backwards once per needed class combination (see :func:`class_gradients`). In eval
mode the samples of a batch do not interact, so the gradient of Σ_n Ψ^{c_n}(x_n) with respect
to the batch holds every per-sample gradient ∇Ψ^{c_n}(x_n) at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._validation import (
    RANGE_TOLERANCE,
    check_inputs,
    check_labels,
    check_logits,
    check_model,
    eval_mode,
    warn_count,
)
from salign.errors import InputError, InputTypeError, MissingDependencyError

__all__ = [
    "DEFAULT_STRATEGY",
    "STRATEGIES",
    "Analysis",
    "NearestRival",
    "alignment",
    "analyze",
    "bias_shifted_input",
    "class_gradients",
    "effective_bias",
    "linearized_robustness",
    "logit_vjps",
    "nearest_rival",
    "saliency",
]

Mode = Literal["logit", "binarized", "loss"]
Rival = Literal["nearest", "runner_up"] | Tensor
Strategy = Literal["auto", "loop", "batched", "vmap"]

#: Ways to obtain several input gradients from one forward pass.
#:   "loop":    one ``autograd.grad(..., retain_graph=True)`` per class combination;
#:   "batched": one ``autograd.grad(..., is_grads_batched=True)`` call (vmap over cotangents);
#:   "vmap":    ``torch.func.vmap`` over the ``torch.func.vjp`` of the model.
STRATEGIES: tuple[str, ...] = ("loop", "batched", "vmap")

#: Strategy used by ``strategy="auto"`` (the default everywhere). The loop was fastest on the
#: CPU of the reference machine (docs/benchmarks/quantities.md); change it per call with
#: ``strategy=`` or globally by assigning this constant.
DEFAULT_STRATEGY: str = "loop"

#: How many cotangents the "batched" and "vmap" strategies push through one call.
COTANGENT_CHUNK = 16


# --------------------------------------------------------------------------------------------
# Gradients of several logit combinations from one forward pass
# --------------------------------------------------------------------------------------------


def _check_inputs_fast(x: object, check_range: bool) -> None:
    """:func:`check_inputs` with one fused min/max pass on the common, valid case.

    ``torch.aminmax`` propagates NaN and ±inf, so finite, in-range extremes prove the whole
    batch valid; anything else goes through :func:`check_inputs` for its exact error message.
    """
    if (
        isinstance(x, Tensor)
        and x.is_floating_point()
        and x.ndim in (2, 4)
        and x.shape[0] > 0
        and not (x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3) and x.shape[1] > 4)
    ):
        lo, hi = (float(v) for v in torch.aminmax(x.detach()))
        in_range = not check_range or (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE)
        if math.isfinite(lo) and math.isfinite(hi) and in_range:
            return
    check_inputs(x, check_range=check_range)


def _check_model_and_inputs(model: object, x: object, check_range: bool) -> None:
    """Validate x (type, shape, finiteness, range) and the model (type, device)."""
    _check_inputs_fast(x, check_range)
    assert isinstance(x, Tensor)
    check_model(model, x)
    assert isinstance(model, nn.Module)


def _resolve_strategy(strategy: str | None) -> str:
    name = DEFAULT_STRATEGY if strategy in (None, "auto") else strategy
    if name not in STRATEGIES:
        raise InputError(f"strategy must be 'auto' or one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return str(name)


class _Graph:
    """One forward pass of ``model`` at ``x`` whose logits can be differentiated many times.

    ``vjp(cot)`` takes cotangents of shape (M, N, K) (one linear combination of the logits per
    sample and row m) and returns the input gradients, shape (M, N, *x.shape[1:]).
    """

    def __init__(self, model: nn.Module, x: Tensor, *, strategy: str, create_graph: bool) -> None:
        self.strategy = strategy
        self.create_graph = create_graph
        self.x = x.detach().requires_grad_(True)
        self._freed = False
        try:
            if strategy == "vmap":
                if create_graph:
                    raise InputError("strategy='vmap' does not support create_graph=True; use 'loop'")
                out, self._vjp_fn = torch.func.vjp(model, x.detach())  # type: ignore[misc]
            else:
                with torch.enable_grad():
                    out = model(self.x)
        except RuntimeError as exc:
            param = next((p for p in model.parameters() if p.is_floating_point()), None)
            if param is not None and param.dtype != x.dtype and "dtype" in str(exc).lower():
                raise InputTypeError(
                    f"x has dtype {x.dtype} but the model's parameters are {param.dtype}; convert one "
                    f"of them (e.g. x.to({param.dtype}) or model.to({x.dtype}))"
                ) from exc
            if isinstance(exc, torch.OutOfMemoryError):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(
                f"model failed on x of shape {tuple(x.shape)} ({first}); check that x has the shape "
                "the model expects"
            ) from exc
        self.logits = check_logits(out, x.shape[0])

    def vjp(self, cot: Tensor, *, last: bool = False) -> Tensor:
        """Input gradients of ⟨cot[m, n], Ψ(x_n)⟩ for every row m, shape (M, N, *x.shape[1:]).

        ``last=True`` lets autograd free the graph during the final backward (less memory
        traffic); the graph cannot be differentiated again afterwards.
        """
        if self._freed:
            raise RuntimeError("internal error: the forward graph was already freed")
        shape = (cot.shape[0], *self.x.shape)
        if self.strategy == "vmap":
            grads = torch.func.vmap(self._vjp_fn)(cot)[0]
            return grads if self.create_graph else grads.detach()
        if not self.logits.requires_grad:  # the output does not depend on x at all
            return self.x.new_zeros(shape)
        free_at_end = last and not self.create_graph
        if self.strategy == "loop":
            rows = []
            for m, c in enumerate(cot):
                (grad,) = torch.autograd.grad(
                    self.logits,
                    self.x,
                    grad_outputs=c,
                    retain_graph=not (free_at_end and m == cot.shape[0] - 1),
                    create_graph=self.create_graph,
                    allow_unused=True,
                )
                rows.append(grad)
            self._freed = free_at_end
            if rows[0] is None:
                return self.x.new_zeros(shape)
            return rows[0].unsqueeze(0) if len(rows) == 1 else torch.stack(rows)
        (grad,) = torch.autograd.grad(
            self.logits,
            self.x,
            grad_outputs=cot,
            retain_graph=not free_at_end,
            create_graph=self.create_graph,
            is_grads_batched=True,
            allow_unused=True,
        )
        self._freed = free_at_end
        return self.x.new_zeros(shape) if grad is None else grad

    def vjp_chunks(
        self, cot: Tensor | Callable[[int, int], Tensor], total: int | None = None
    ) -> Iterator[tuple[int, Tensor]]:
        """Yield ``(start, grads)`` over row chunks of the cotangents (bounded memory for large M).

        ``cot`` is an (M, N, K) tensor, or a function ``(start, stop) -> rows`` with ``total``
        rows in all (so that K = 1000 cotangents are never materialised at once). The graph is
        freed by the last chunk's backward.
        """
        make: Callable[[int, int], Tensor]
        if isinstance(cot, Tensor):
            rows, total = cot, cot.shape[0]

            def make(start: int, stop: int) -> Tensor:
                return rows[start:stop]
        else:
            if total is None:
                raise TypeError("total is required when cot is a function")
            make = cot
        step = 1 if self.strategy == "loop" else COTANGENT_CHUNK
        for start in range(0, total, step):
            stop = min(start + step, total)
            yield start, self.vjp(make(start, stop), last=stop >= total)

    def detached_logits(self) -> Tensor:
        return self.logits if self.create_graph else self.logits.detach()


def _one_hot_rows(classes: Tensor, k: int, dtype: torch.dtype) -> Tensor:
    """(N, M) class indices → (M, N, K) one-hot cotangents."""
    return F.one_hot(classes.t(), k).to(dtype)


def logit_vjps(
    model: nn.Module,
    x: Tensor,
    combine: Callable[[Tensor], Tensor],
    *,
    strategy: Strategy | None = None,
    create_graph: bool = False,
    check_range: bool = True,
) -> tuple[Tensor, Tensor]:
    """Input gradients of several linear combinations of the logits, from ONE forward pass.

    ``combine(logits)`` receives the detached (N, K) logits and returns cotangents (M, N, K);
    row m asks for ∇_x ⟨cot[m, n], Ψ(x_n)⟩ for every sample n. This is the building block of
    everything else here (and of DeepFool-style attacks): e.g. ``cot[m] = e_i − e_j`` gives the
    binarized gradient ∇(Ψ^i − Ψ^j).

    Returns:
        ``(logits, grads)``: logits (N, K) (detached unless ``create_graph``) and grads of
        shape (M, N, *x.shape[1:]).
    """
    _check_model_and_inputs(model, x, check_range)
    with eval_mode(model):
        graph = _Graph(model, x, strategy=_resolve_strategy(strategy), create_graph=create_graph)
        cot = combine(graph.logits.detach())
        grads = torch.cat([g for _, g in graph.vjp_chunks(cot)]) if cot.shape[0] else x.new_zeros(0)
    return graph.detached_logits(), grads


def class_gradients(
    model: nn.Module,
    x: Tensor,
    classes: Tensor,
    *,
    strategy: Strategy | None = None,
    create_graph: bool = False,
    check_range: bool = True,
) -> tuple[Tensor, Tensor]:
    """Input gradients ∇_x Ψ^c(x) of several logits per sample, from ONE forward pass.

    Args:
        model: classifier returning logits (N, K); run in eval mode, mode restored after.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        classes: class indices, shape (N, M) (M classes per sample) or (M,) (the same M
            classes for every sample).
        strategy: "auto" (= :data:`DEFAULT_STRATEGY`), "loop", "batched" or "vmap".
        create_graph: keep the gradients differentiable (e.g. for a training penalty).
        check_range: reject inputs outside [0, 1].

    Returns:
        ``(logits, grads)``: logits (N, K) and grads (N, M, *x.shape[1:]) with
        ``grads[n, m] = ∇_x Ψ^{classes[n, m]}(x_n)``.

    Example::

        logits, g = class_gradients(model, x, torch.arange(10))   # all 10 class gradients
    """
    _check_inputs_fast(x, check_range)
    n = x.shape[0]
    if not isinstance(classes, Tensor):
        raise InputTypeError(f"classes must be a tensor of class indices, got {type(classes).__name__}")
    if classes.ndim == 1:
        classes = classes.to(x.device).long().unsqueeze(0).expand(n, -1)
    if classes.ndim != 2 or classes.shape[0] != n:
        raise InputError(f"classes must have shape (N, M) or (M,) with N = {n}, got {tuple(classes.shape)}")
    classes = classes.to(x.device).long()

    def combine(logits: Tensor) -> Tensor:
        check_labels(classes.reshape(-1), classes.numel(), logits.shape[1], name="classes")
        return _one_hot_rows(classes, logits.shape[1], logits.dtype)

    logits, grads = logit_vjps(
        model, x, combine, strategy=strategy, create_graph=create_graph, check_range=check_range
    )
    return logits, grads.transpose(0, 1)


# --------------------------------------------------------------------------------------------
# Small numerics shared by every quantity
# --------------------------------------------------------------------------------------------


def _flat(t: Tensor) -> Tensor:
    return t.reshape(t.shape[0], -1)


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (_flat(a) * _flat(b)).sum(1)


def _norm(a: Tensor) -> Tensor:
    return torch.linalg.vector_norm(_flat(a), dim=1)


def _div_or_nan(num: Tensor, den: Tensor) -> tuple[Tensor, int]:
    """num / den with NaN where den == 0 (never a silent inf); also returns how many."""
    zero = den == 0
    out = num / torch.where(zero, torch.ones_like(den), den)
    return torch.where(zero, torch.full_like(out, math.nan), out), int(zero.sum())


def _runner_up(logits: Tensor, target: Tensor) -> Tensor:
    """argmax over j ≠ target of the logits (the second-highest logit when target = i*)."""
    masked = logits.detach().scatter(1, target[:, None], -math.inf)
    return masked.argmax(1)


def _resolve_target(target: object, logits: Tensor, *, name: str = "target") -> Tensor:
    if target is None:
        return logits.detach().argmax(1)
    return check_labels(target, logits.shape[0], logits.shape[1], name=name).to(logits.device)


def _check_mode(mode: str) -> None:
    if mode not in ("logit", "binarized", "loss"):
        raise InputError(f"mode must be 'logit', 'binarized' or 'loss', got {mode!r}")


def _check_rival_arg(rival: object) -> None:
    if isinstance(rival, Tensor):
        return
    if rival not in ("nearest", "runner_up"):
        raise InputError(f"rival must be 'nearest', 'runner_up' or a tensor of class indices, got {rival!r}")


def _check_candidates(candidates: object) -> int | None:
    if candidates is None:
        return None
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise InputError(f"candidates must be a positive int (or None for all classes), got {candidates!r}")
    return candidates


# --------------------------------------------------------------------------------------------
# Nearest rival j* (D2) and the linearised distance ρ̃ (D6)
# --------------------------------------------------------------------------------------------


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


def _candidate_rivals(logits: Tensor, target: Tensor, candidates: int | None) -> Tensor:
    """(N, M) rival classes: all j ≠ i, or the ``candidates`` highest-logit ones."""
    k = logits.shape[1]
    m = k - 1 if candidates is None else min(candidates, k - 1)
    masked = logits.detach().scatter(1, target[:, None], -math.inf)
    if m == k - 1:
        # every other class, in logit order (sorting makes ties deterministic and cheap)
        return masked.argsort(1, descending=True)[:, :m]
    return masked.topk(m, dim=1).indices


def _search_nearest(
    graph: _Graph, target: Tensor, candidates: int | None, extra_rows: Tensor | None = None
) -> tuple[NearestRival, Tensor | None]:
    """Stream the binarized gradients of every candidate rival; keep the nearest one.

    ``extra_rows`` (E, N, K) are further cotangents evaluated in the same pass (analyze uses it
    for the plain logit gradient); their gradients are returned as the second value.
    """
    logits = graph.logits.detach()
    k = logits.shape[1]
    rivals = _candidate_rivals(logits, target, candidates)  # (N, M)
    onehot_t = F.one_hot(target, k).to(logits.dtype)
    n_extra = 0 if extra_rows is None else extra_rows.shape[0]

    def cotangents(start: int, stop: int) -> Tensor:
        """Rows [start, stop) of [extra rows; e_i − e_j for each candidate j], shape (·, N, K)."""
        parts = []
        if start < n_extra:
            assert extra_rows is not None
            parts.append(extra_rows[start : min(stop, n_extra)])
        lo, hi = max(start - n_extra, 0), stop - n_extra
        if hi > lo:
            parts.append(onehot_t.unsqueeze(0) - _one_hot_rows(rivals[:, lo:hi], k, logits.dtype))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    margins = logits.gather(1, target[:, None]) - logits.gather(1, rivals)  # (N, M)

    n = logits.shape[0]
    best_dist = logits.new_full((n,), math.inf)
    best_rival = torch.full((n,), -1, dtype=torch.long, device=logits.device)
    best_norm = logits.new_zeros(n)
    best_margin = logits.new_full((n,), math.nan)
    best_grad: Tensor | None = None
    extra: list[Tensor] = []
    for start, grads in graph.vjp_chunks(cotangents, n_extra + rivals.shape[1]):
        for r in range(grads.shape[0]):
            row = start + r
            g = grads[r]
            if row < n_extra:
                extra.append(g)
                continue
            m = row - n_extra
            norm = _norm(g.detach())
            margin = margins[:, m]
            # a rival whose binarized gradient vanishes has its linearised boundary at infinity
            dist = torch.where(norm > 0, margin / torch.where(norm > 0, norm, 1), math.inf)
            better = dist < best_dist
            if best_grad is None:
                best_grad = torch.zeros_like(g)
            if bool(better.any()):
                best_dist = torch.where(better, dist, best_dist)
                best_rival = torch.where(better, rivals[:, m], best_rival)
                best_norm = torch.where(better, norm, best_norm)
                best_margin = torch.where(better, margin, best_margin)
                mask = better.view(-1, *([1] * (g.ndim - 1)))
                best_grad = torch.where(mask, g, best_grad)
    assert best_grad is not None
    found = best_rival >= 0
    best_dist = torch.where(found, best_dist, math.nan)
    result = NearestRival(
        rival=best_rival,
        distance=best_dist,
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
) -> NearestRival:
    """The nearest linearised decision boundary: j* and ρ̃ (Etmann et al. 2019, D2 and D6).

    j* = argmin_{j≠i} (Ψ^i(x) − Ψ^j(x)) / ‖∇Ψ^i(x) − ∇Ψ^j(x)‖ and ρ̃(x) is that minimum: the
    L2 distance from x to the closest class boundary of the first-order Taylor model of Ψ at x
    (DeepFool's first step). For a bias-free linear model it is the exact distance ρ(x) (T2).

    All K − 1 binarized gradients come from ONE forward pass followed by K − 1 input-gradient
    backwards (or ``candidates`` of them); only the running best is kept, so memory stays
    O(N·d) for K = 1000.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample, (N,); None = the predicted class i*.
        candidates: search only the ``candidates`` rivals with the highest logits (exact when
            ``candidates >= K − 1``; None = all classes). Use e.g. 10 for K = 1000.
        strategy: gradient strategy ("auto", "loop", "batched", "vmap"); see :data:`STRATEGIES`.
        create_graph: keep ``gradient`` differentiable.
        check_range: reject inputs outside [0, 1].

    Returns:
        :class:`NearestRival` with j*, ρ̃, the margin, g_{j*} and its norm, the logits and i.
    """
    _check_model_and_inputs(model, x, check_range)
    cand = _check_candidates(candidates)
    with eval_mode(model):
        graph = _Graph(model, x, strategy=_resolve_strategy(strategy), create_graph=create_graph)
        tgt = _resolve_target(target, graph.logits)
        result, _ = _search_nearest(graph, tgt, cand)
    warn_count(
        int((result.rival < 0).sum()), x.shape[0], "every rival has a zero binarized gradient; ρ̃ is NaN"
    )
    return result


# --------------------------------------------------------------------------------------------
# Saliency maps (D1, D2) and the scalar quantities built on them
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Saliency:
    grad: Tensor  # s(x), shape of x
    value: Tensor  # the differentiated scalar per sample (Ψ^i, Ψ^i − Ψ^j, or the CE), (N,)
    target: Tensor
    rival: Tensor | None


def _saliency(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None,
    *,
    mode: str,
    rival: object,
    create_graph: bool,
    candidates: int | None,
    strategy: str | None,
    check_range: bool,
) -> _Saliency:
    _check_mode(mode)
    _check_rival_arg(rival)
    cand = _check_candidates(candidates)
    _check_model_and_inputs(model, x, check_range)
    with eval_mode(model):
        graph = _Graph(model, x, strategy=_resolve_strategy(strategy), create_graph=create_graph)
        logits = graph.logits.detach()
        n, k = logits.shape
        tgt = _resolve_target(target, logits)
        if mode == "loss":
            # the CE's input gradient, per sample (sum, not mean, so samples are not rescaled)
            with torch.enable_grad():
                loss = F.cross_entropy(graph.logits, tgt, reduction="none")
            if graph.strategy == "vmap":
                p = torch.softmax(logits, 1)
                cot = (p - F.one_hot(tgt, k).to(p.dtype)).unsqueeze(0)
                return _Saliency(graph.vjp(cot, last=True)[0], loss.detach(), tgt, None)
            grad = torch.autograd.grad(loss.sum(), graph.x, create_graph=create_graph)[0]
            return _Saliency(grad, loss if create_graph else loss.detach(), tgt, None)
        onehot_t = F.one_hot(tgt, k).to(logits.dtype)
        if mode == "logit":
            grad = graph.vjp(onehot_t.unsqueeze(0), last=True)[0]
            value = graph.detached_logits().gather(1, tgt[:, None])[:, 0]
            return _Saliency(grad, value, tgt, None)
        # binarized
        if isinstance(rival, Tensor):
            riv = check_labels(rival, n, k, name="rival").to(logits.device)
            if bool((riv == tgt).any()):
                raise InputError(
                    f"rival equals the target class in {int((riv == tgt).sum())} of {n} samples; "
                    "the binarized logit Ψ^i − Ψ^j needs j ≠ i"
                )
        elif rival == "runner_up":
            riv = _runner_up(logits, tgt)
        else:
            res, _ = _search_nearest(graph, tgt, cand)
            # where every binarized gradient vanishes (g = 0), report the runner-up's margin
            ru = _runner_up(logits, tgt)
            lg = graph.detached_logits()
            ru_margin = lg.gather(1, tgt[:, None])[:, 0] - lg.gather(1, ru[:, None])[:, 0]
            found = res.rival >= 0
            value = torch.where(found, res.margin, ru_margin)
            return _Saliency(res.gradient, value, tgt, torch.where(found, res.rival, ru))
        grad = graph.vjp((onehot_t - F.one_hot(riv, k).to(logits.dtype)).unsqueeze(0), last=True)[0]
        lg = graph.detached_logits()
        value = lg.gather(1, tgt[:, None])[:, 0] - lg.gather(1, riv[:, None])[:, 0]
        return _Saliency(grad, value, tgt, riv)


def saliency(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Mode = "binarized",
    rival: Rival = "nearest",
    create_graph: bool = False,
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
) -> Tensor:
    """Signed saliency map: the input gradient of a logit, a logit difference, or the loss.

    * ``mode="logit"``: s(x) = ∇_x Ψ^i(x) (Etmann et al. 2019, D1; Simonyan et al. 2013,
      signed). Equals Captum's ``Saliency(model).attribute(x, target=i, abs=False)``.
    * ``mode="binarized"``: g_j(x) = ∇_x (Ψ^i − Ψ^j)(x), the gradient of the binarized logit
      whose zero set is the i/j decision boundary (D2).
    * ``mode="loss"``: ∇_x CE(Ψ(x), i) per sample.

    Args:
        model: classifier returning logits (N, K); evaluated in eval mode, mode restored.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample, (N,) int; None = the predicted class i* = argmax Ψ(x).
        mode: "logit", "binarized" or "loss" (see above).
        rival: for ``mode="binarized"``: "nearest" (j* of D2, the class of the nearest
            linearised boundary, K − 1 backwards), "runner_up" (the second-highest logit, one
            backward), or a tensor (N,) of class indices (e.g. the class an attack reached).
        create_graph: keep the map differentiable with respect to the parameters (training).
        candidates: for ``rival="nearest"``: search only the top-``candidates`` logits.
        strategy: gradient strategy for several classes ("auto", "loop", "batched", "vmap").
        check_range: reject inputs outside [0, 1].

    Returns:
        Tensor of x's shape, dtype and device.
    """
    return _saliency(
        model,
        x,
        target,
        mode=mode,
        rival=rival,
        create_graph=create_graph,
        candidates=candidates,
        strategy=strategy,
        check_range=check_range,
    ).grad


def _alignment_from(x: Tensor, s: Tensor, origin: Tensor | None, normalized: bool) -> tuple[Tensor, int, int]:
    centred = x if origin is None else x - origin
    num = _dot(centred, s).abs()
    alpha, n_zero = _div_or_nan(num, _norm(s))
    n_zero_x = 0
    if normalized:
        alpha, n_zero_x = _div_or_nan(alpha, _norm(centred))
    return alpha, n_zero, n_zero_x


def _check_origin(origin: object, x: Tensor) -> Tensor | None:
    if origin is None:
        return None
    if not isinstance(origin, Tensor):
        raise InputTypeError(
            f"origin must be a tensor broadcastable to x or None, got {type(origin).__name__}"
        )
    try:
        torch.broadcast_shapes(origin.shape, x.shape)
    except RuntimeError as exc:
        raise InputError(
            f"origin of shape {tuple(origin.shape)} does not broadcast to x of shape {tuple(x.shape)}"
        ) from exc
    return origin.to(device=x.device, dtype=x.dtype)


def alignment(
    model: nn.Module | None,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Mode = "binarized",
    rival: Rival = "nearest",
    normalized: bool = False,
    origin: Tensor | None = None,
    saliency: Tensor | None = None,
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
) -> Tensor:
    """Alignment of an input with its saliency map (Etmann et al. 2019, D3/D4).

    α(x) = |⟨x − origin, s(x)⟩| / ‖s(x)‖, the length of the projection of x − origin onto the
    saliency direction. It has the units of a distance: for a bias-free linear model and the
    binarized map of the nearest rival, α(x) equals the distance ρ(x) to the decision boundary
    (T1/T2). ``normalized=True`` divides by ‖x − origin‖, giving |cos∠(x − origin, s(x))|.

    A zero saliency map (or, when normalized, x = origin) gives NaN and a warning that counts
    the samples; never an inf.

    Args:
        model: classifier returning logits; may be None when ``saliency`` is given.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample (N,); None = predicted class.
        mode, rival, candidates, strategy: which saliency map, as in :func:`saliency`.
        normalized: divide by ‖x − origin‖ (D4).
        origin: reference point, a tensor broadcastable to x (e.g. the data mean, as the paper
            used for ImageNet); None = 0.
        saliency: a precomputed attribution of x's shape to score instead of computing one
            (``model``, ``target``, ``mode`` and ``rival`` are then ignored). Any attribution
            works, e.g. Captum's::

                from captum.attr import InputXGradient, IntegratedGradients, NoiseTunnel, Saliency
                attr = Saliency(model).attribute(x, target=y, abs=False)   # = saliency(mode="logit")
                a_sal = salign.alignment(None, x, saliency=attr)
                ig = IntegratedGradients(model).attribute(x, target=y, n_steps=32)
                a_ig = salign.alignment(None, x, saliency=ig)
                sg = NoiseTunnel(Saliency(model)).attribute(
                    x, nt_type="smoothgrad", nt_samples=16, stdevs=0.1, target=y, abs=False)
                a_sg = salign.alignment(None, x, saliency=sg, normalized=True)

        check_range: reject inputs outside [0, 1].

    Returns:
        (N,) tensor on x's device.
    """
    if saliency is not None:
        _check_inputs_fast(x, check_range)
        if not isinstance(saliency, Tensor):
            raise InputTypeError(f"saliency must be a tensor of x's shape, got {type(saliency).__name__}")
        if saliency.shape != x.shape:
            raise InputError(f"saliency must have x's shape {tuple(x.shape)}, got {tuple(saliency.shape)}")
        s = saliency.detach().to(device=x.device, dtype=x.dtype)
    else:
        if model is None:
            raise InputTypeError("model is None: pass a model, or a precomputed attribution as saliency=")
        s = _saliency(
            model,
            x,
            target,
            mode=mode,
            rival=rival,
            create_graph=False,
            candidates=candidates,
            strategy=strategy,
            check_range=check_range,
        ).grad
    alpha, n_zero, n_zero_x = _alignment_from(x.detach(), s, _check_origin(origin, x), normalized)
    warn_count(n_zero, x.shape[0], "the saliency map is zero, so the alignment is NaN")
    warn_count(n_zero_x, x.shape[0], "x equals the origin, so the normalized alignment is NaN")
    return alpha


def linearized_robustness(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    rival: Rival = "nearest",
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
) -> Tensor:
    """Linearised robustness ρ̃(x) (Etmann et al. 2019, D6).

    ρ̃(x) = min_{j≠i} (Ψ^i(x) − Ψ^j(x)) / ‖∇Ψ^i(x) − ∇Ψ^j(x)‖ with ``rival="nearest"``: the
    distance to the nearest decision boundary of the linearisation of Ψ at x (exact for
    bias-free linear models, T2; DeepFool's first step). With ``rival="runner_up"`` or a tensor
    of classes, the same ratio for that one pair (an upper bound on the nearest-rival value).

    Signed: negative where the target is not the predicted class. A zero binarized gradient
    gives NaN with a warning.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample (N,); None = the predicted class i*.
        rival: "nearest", "runner_up" or a tensor (N,) of rival classes.
        candidates: for "nearest", search only the top-``candidates`` logits (None = all).
        strategy: gradient strategy; see :data:`STRATEGIES`.
        check_range: reject inputs outside [0, 1].

    Returns:
        (N,) tensor on x's device.
    """
    sal = _saliency(
        model,
        x,
        target,
        mode="binarized",
        rival=rival,
        create_graph=False,
        candidates=candidates,
        strategy=strategy,
        check_range=check_range,
    )
    rho, n_zero = _div_or_nan(sal.value, _norm(sal.grad))
    warn_count(n_zero, x.shape[0], "the binarized gradient is zero, so ρ̃ is NaN")
    return rho


def effective_bias(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Literal["logit", "binarized"] = "binarized",
    rival: Rival = "nearest",
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
) -> Tensor:
    """Effective bias β(x) = Ψ(x) − ⟨∇Ψ(x), x⟩ (Etmann et al. 2019, D7 / T3).

    For piecewise-linear networks (ReLU, max/avg-pool, affine layers, BatchNorm in eval mode)
    Euler's theorem gives Ψ(x) = ⟨∇Ψ(x), x⟩ + β(x) where β collects every bias-like term;
    β ≡ 0 for bias-free networks. ``mode="logit"`` uses Ψ = Ψ^i (β^i); ``mode="binarized"``
    uses the pair Ψ^i − Ψ^j (β_j = β^i − β^j), with j chosen by ``rival``.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        target: class i per sample (N,); None = the predicted class i*.
        mode: "logit" or "binarized".
        rival, candidates, strategy: rival choice for ``mode="binarized"``, see :func:`saliency`.
        check_range: reject inputs outside [0, 1].

    Returns:
        (N,) tensor on x's device.
    """
    if mode not in ("logit", "binarized"):
        raise InputError(
            f"effective_bias needs mode 'logit' or 'binarized' (the loss is not homogeneous), got {mode!r}"
        )
    sal = _saliency(
        model,
        x,
        target,
        mode=mode,
        rival=rival,
        create_graph=False,
        candidates=candidates,
        strategy=strategy,
        check_range=check_range,
    )
    return sal.value - _dot(sal.grad, x.detach())


def bias_shifted_input(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None = None,
    *,
    mode: Literal["logit", "binarized"] = "binarized",
    rival: Rival = "nearest",
    candidates: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
) -> Tensor:
    """The bias-shifted input x' = x + β(x) g(x)/‖g(x)‖² (Etmann et al. 2019, D7).

    It folds the effective bias into the image: ⟨g, x'⟩ = ⟨g, x⟩ + β = Ψ (the logit or the
    binarized logit), so a bias-free reading of x' reproduces the model's value. Rows with a
    zero gradient are returned unchanged, with a warning that counts them. The result may
    leave [0, 1].

    Args: as :func:`effective_bias`.

    Returns:
        Tensor of x's shape.
    """
    if mode not in ("logit", "binarized"):
        raise InputError(f"bias_shifted_input needs mode 'logit' or 'binarized', got {mode!r}")
    sal = _saliency(
        model,
        x,
        target,
        mode=mode,
        rival=rival,
        create_graph=False,
        candidates=candidates,
        strategy=strategy,
        check_range=check_range,
    )
    xd = x.detach()
    beta = sal.value - _dot(sal.grad, xd)
    sq = _norm(sal.grad) ** 2
    scale, n_zero = _div_or_nan(beta, sq)
    scale = torch.nan_to_num(scale, nan=0.0)
    warn_count(n_zero, x.shape[0], "the gradient is zero, so the input is returned unshifted")
    return xd + scale.view(-1, *([1] * (x.ndim - 1))) * sal.grad


# --------------------------------------------------------------------------------------------
# analyze: every per-sample quantity in one pass
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Analysis:
    """Per-sample quantities of :func:`analyze`; every field is an (N,) tensor.

    i = pred (the predicted class i*), j = ``rival`` (the nearest rival j* with
    ``rival="nearest"``, the runner-up with ``"runner_up"``), s = ∇Ψ^i, g = ∇(Ψ^i − Ψ^j).

    Attributes:
        pred: i* = argmax Ψ(x).
        label: the given label, −1 when no labels were passed.
        correct: pred == label (False when no labels).
        logit_margin: Ψ^i − max_{k≠i} Ψ^k (distance in logit space to the runner-up, ≥ 0).
        rival_nearest: j* (D2) over the searched classes; −1 when not searched
            (``rival="runner_up"``) or when every binarized gradient is zero.
        rival_runner_up: the class of the second-highest logit.
        rival: the class j used by every binarized column below.
        alignment: α = |⟨x − o, s⟩| / ‖s‖ of the predicted-logit saliency map (D3).
        alignment_binarized: α_bin = |⟨x − o, g⟩| / ‖g‖ (D3, binarized).
        alignment_normalized: α / ‖x − o‖ = |cos∠(x − o, s)| (D4).
        linearized_robustness: ρ̃ = (Ψ^i − Ψ^j)/‖g‖ (D6; the min over rivals for "nearest").
        effective_bias: β_j = (Ψ^i − Ψ^j) − ⟨g, x⟩ (D7, binarized pair).
        effective_bias_logit: β^i = Ψ^i − ⟨s, x⟩ (D7, predicted logit).
        bias_distance: |β_j| / ‖g‖, the T4 bound on |α_bin − ρ̃| (when origin = 0).
        grad_norm: ‖s‖ = ‖∇Ψ^i‖.
        binarized_grad_norm: ‖g‖.
        margin: Ψ^i − Ψ^j.
        inner_product: ⟨x, g⟩, the homogeneous part of the margin.
        homogeneous_fraction: ⟨x, g⟩ / (Ψ^i − Ψ^j) (1 for bias-free nets, T3).
    """

    pred: Tensor
    label: Tensor
    correct: Tensor
    logit_margin: Tensor
    rival_nearest: Tensor
    rival_runner_up: Tensor
    rival: Tensor
    alignment: Tensor
    alignment_binarized: Tensor
    alignment_normalized: Tensor
    linearized_robustness: Tensor
    effective_bias: Tensor
    effective_bias_logit: Tensor
    bias_distance: Tensor
    grad_norm: Tensor
    binarized_grad_norm: Tensor
    margin: Tensor
    inner_product: Tensor
    homogeneous_fraction: Tensor

    @classmethod
    def columns(cls) -> list[str]:
        """Field names in table order."""
        return [f.name for f in fields(cls)]

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    def to_dict(self) -> dict[str, list[Any]]:
        """Columns as plain Python lists (ints, bools, floats; NaN stays NaN)."""
        return {name: getattr(self, name).detach().cpu().tolist() for name in self.columns()}

    def to_numpy(self) -> dict[str, Any]:
        """Columns as numpy arrays."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in self.columns()}

    def to_frame(self) -> Any:
        """A pandas DataFrame with one row per sample (needs pandas: the ``report`` extra)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise MissingDependencyError(
                "Analysis.to_frame needs pandas: pip install 'saliency-alignment[report]' (or use .to_dict())"
            ) from exc
        return pd.DataFrame(self.to_numpy())


_INT_COLUMNS = ("pred", "label", "rival_nearest", "rival_runner_up", "rival")


def _analyze_chunk(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    *,
    rival: str,
    candidates: int | None,
    origin: Tensor | None,
    strategy: str,
) -> tuple[dict[str, Tensor], list[int]]:
    graph = _Graph(model, x, strategy=strategy, create_graph=False)
    logits = graph.logits.detach()
    n, k = logits.shape
    if labels is not None:
        labels = check_labels(labels, n, k, name="labels").to(x.device)
    pred = logits.argmax(1)
    runner_up = _runner_up(logits, pred)
    onehot_i = F.one_hot(pred, k).to(logits.dtype).unsqueeze(0)
    psi_i = logits.gather(1, pred[:, None])[:, 0]
    runner_up_margin = psi_i - logits.gather(1, runner_up[:, None])[:, 0]
    if rival == "nearest":
        res, extra = _search_nearest(graph, pred, candidates, extra_rows=onehot_i)
        assert extra is not None
        s, g = extra[0], res.gradient
        riv_nearest = res.rival
        # a sample whose binarized gradients all vanish keeps the runner-up as its rival
        riv = torch.where(res.rival >= 0, res.rival, runner_up)
        margin = torch.where(res.rival >= 0, res.margin, runner_up_margin)
    else:
        cot = torch.cat([onehot_i, onehot_i - F.one_hot(runner_up, k).to(logits.dtype).unsqueeze(0)])
        grads = graph.vjp(cot, last=True)
        s, g, riv = grads[0], grads[1], runner_up
        riv_nearest = torch.full_like(pred, -1)
        margin = runner_up_margin
    del graph
    xd = x.detach()
    centred = xd if origin is None else xd - origin
    s_norm, g_norm, x_norm = _norm(s), _norm(g), _norm(centred)
    alpha, nz_s = _div_or_nan(_dot(centred, s).abs(), s_norm)
    alpha_bin, nz_g = _div_or_nan(_dot(centred, g).abs(), g_norm)
    alpha_norm, nz_x = _div_or_nan(alpha, x_norm)
    inner = _dot(xd, g)
    rho, _ = _div_or_nan(margin, g_norm)
    beta = margin - inner
    bias_dist, _ = _div_or_nan(beta.abs(), g_norm)
    homog, _ = _div_or_nan(inner, margin)
    cols = {
        "pred": pred,
        "label": labels if labels is not None else torch.full_like(pred, -1),
        "correct": pred == labels if labels is not None else torch.zeros_like(pred, dtype=torch.bool),
        "logit_margin": runner_up_margin,
        "rival_nearest": riv_nearest,
        "rival_runner_up": runner_up,
        "rival": riv,
        "alignment": alpha,
        "alignment_binarized": alpha_bin,
        "alignment_normalized": alpha_norm,
        "linearized_robustness": rho,
        "effective_bias": beta,
        "effective_bias_logit": psi_i - _dot(xd, s),
        "bias_distance": bias_dist,
        "grad_norm": s_norm,
        "binarized_grad_norm": g_norm,
        "margin": margin,
        "inner_product": inner,
        "homogeneous_fraction": homog,
    }
    return cols, [nz_s, nz_g, nz_x]


def analyze(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    rival: Literal["nearest", "runner_up"] = "nearest",
    candidates: int | None = None,
    origin: Tensor | None = None,
    batch_size: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
    quiet: bool | None = True,
) -> Analysis:
    """Every per-sample quantity of the paper in one pass per chunk (→ :class:`Analysis`).

    Per chunk: ONE forward pass, then input-gradient backwards only: with ``rival="nearest"``
    (default; the paper's j*, which makes the linear theory exact) one for ∇Ψ^{i*} and K − 1 for
    the binarized gradients (``candidates`` of them if given); with ``rival="runner_up"`` two in
    all (∇Ψ^{i*} and ∇(Ψ^{i*} − Ψ^{j2})), which is the fast choice for large K. The binarized
    columns (alignment_binarized, linearized_robustness, effective_bias, ...) use that rival.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: true classes (N,) for the ``label``/``correct`` columns; None = unknown.
        rival: "nearest" or "runner_up" (see above).
        candidates: with "nearest", search only the top-``candidates`` logits (None = all).
        origin: reference point for the alignment columns (see :func:`alignment`).
        batch_size: samples per chunk (None = all at once); bounds memory.
        strategy: gradient strategy; see :data:`STRATEGIES`.
        check_range: reject inputs outside [0, 1].
        quiet: hide the progress bar (None = follow ``SALIGN_QUIET``).

    Returns:
        :class:`Analysis` of (N,) tensors on x's device.
    """
    from salign._progress import progress

    _check_model_and_inputs(model, x, check_range)
    if rival not in ("nearest", "runner_up"):
        raise InputError(f"analyze: rival must be 'nearest' or 'runner_up', got {rival!r}")
    cand = _check_candidates(candidates)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
    org = _check_origin(origin, x)
    n = x.shape[0]
    step = n if batch_size is None else batch_size
    strat = _resolve_strategy(strategy)
    if labels is not None:
        check_labels(labels, n)  # type and shape here; the class range against K per chunk
    chunks: list[dict[str, Tensor]] = []
    counts = [0, 0, 0]
    per_sample_origin = org is not None and org.ndim == x.ndim and org.shape[0] == n and n > 1
    with eval_mode(model):
        starts = range(0, n, step)
        for start in progress(starts, desc="analyze", total=len(starts), quiet=quiet):
            stop = start + step
            cols, nz = _analyze_chunk(
                model,
                x[start:stop],
                None if labels is None else labels[start:stop],
                rival=rival,
                candidates=cand,
                origin=org[start:stop] if per_sample_origin and org is not None else org,
                strategy=strat,
            )
            chunks.append(cols)
            counts = [a + b for a, b in zip(counts, nz, strict=True)]
    merged = {name: torch.cat([c[name] for c in chunks]) for name in Analysis.columns()}
    warn_count(counts[0], n, "the saliency map ∇Ψ^i is zero, so alignment is NaN")
    warn_count(counts[1], n, "the binarized gradient is zero, so alignment_binarized and ρ̃ are NaN")
    warn_count(counts[2], n, "x equals the origin, so alignment_normalized is NaN")
    return Analysis(**merged)

"""Saliency maps (D1, D2): the input gradient of a logit, a binarized logit, or the loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._validation import eval_mode
from salign.quantities._common import (
    Mode,
    Rival,
    Strategy,
    check_candidates,
    check_mode,
    check_model_and_inputs,
    check_rival_arg,
    resolve_target,
)
from salign.quantities._graph import Graph, resolve_strategy
from salign.quantities._rivals import binarized_pair


@dataclass(frozen=True)
class Map:
    """A saliency map and the scalar it differentiates, per sample."""

    grad: Tensor  # s(x), shape of x
    value: Tensor  # the differentiated scalar per sample (Ψ^i, Ψ^i − Ψ^j, or the CE), (N,)
    target: Tensor  # i, (N,)
    rival: Tensor | None  # j for mode="binarized", else None


def saliency_map(
    model: nn.Module,
    x: Tensor,
    target: Tensor | None,
    mode: str,
    rival: object,
    candidates: int | None,
    strategy: str | None,
    check_range: bool,
    create_graph: bool = False,
    norm: float = 2.0,
) -> Map:
    """:func:`saliency` with the differentiated value, the target and the rival beside the map.

    Arguments as in :func:`saliency` (positional, so that each caller passes them on one line).
    """
    check_mode(mode)
    check_rival_arg(rival)
    cand = check_candidates(candidates)
    check_model_and_inputs(model, x, check_range)
    with eval_mode(model):
        graph = Graph(model, x, strategy=resolve_strategy(strategy), create_graph=create_graph)
        tgt = resolve_target(target, graph.logits)
        if mode == "loss":
            return _loss_map(graph, tgt)
        if mode == "logit":
            onehot = F.one_hot(tgt, graph.logits.shape[1]).to(graph.logits.dtype)
            grad = graph.vjp(onehot.unsqueeze(0), last=True)[0]
            return Map(grad, graph.detached_logits().gather(1, tgt[:, None])[:, 0], tgt, None)
        pair = binarized_pair(graph, tgt, rival, cand, norm=norm)
        return Map(pair.gradient, pair.margin, tgt, pair.rival)


def _loss_map(graph: Graph, target: Tensor) -> Map:
    """The CE's input gradient, per sample (summed, not averaged, so no sample is rescaled)."""
    with torch.enable_grad():
        loss = F.cross_entropy(graph.logits, target, reduction="none")
    if graph.strategy == "vmap":
        p = torch.softmax(graph.logits.detach(), 1)
        cot = (p - F.one_hot(target, p.shape[1]).to(p.dtype)).unsqueeze(0)
        return Map(graph.vjp(cot, last=True)[0], loss.detach(), target, None)
    grad = torch.autograd.grad(loss.sum(), graph.x, create_graph=graph.create_graph)[0]
    return Map(grad, loss if graph.create_graph else loss.detach(), target, None)


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
    norm: float | str = 2,
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
        candidates: for ``rival="nearest"``: the number of rival classes searched, the
            highest-logit ones (None = all K − 1).
        strategy: gradient strategy for several classes ("auto", "loop", "batched", "vmap").
        check_range: reject inputs outside [0, 1].
        norm: the norm in which ``rival="nearest"`` is nearest (2; ``"inf"`` or 1, as in
            :func:`alignment` with that norm). The map itself does not depend on a norm.

    Returns:
        Tensor of x's shape, dtype and device.
    """
    p = parse_norm(norm)
    return saliency_map(
        model, x, target, mode, rival, candidates, strategy, check_range, create_graph, p
    ).grad

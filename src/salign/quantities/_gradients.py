"""Public gradient helpers: input gradients of several logit combinations from one forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from salign._validation import check_labels, eval_mode
from salign.errors import InputError, InputTypeError
from salign.quantities._common import Strategy, check_model_and_inputs, one_hot_rows
from salign.quantities._graph import Graph, resolve_strategy


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
    check_model_and_inputs(model, x, check_range)
    return _vjps(model, x, combine, strategy=strategy, create_graph=create_graph)


def _vjps(
    model: nn.Module,
    x: Tensor,
    combine: Callable[[Tensor], Tensor],
    *,
    strategy: str | None,
    create_graph: bool,
) -> tuple[Tensor, Tensor]:
    """:func:`logit_vjps` on arguments already checked."""
    with eval_mode(model):
        graph = Graph(model, x, strategy=resolve_strategy(strategy), create_graph=create_graph)
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
    check_model_and_inputs(model, x, check_range)
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
        return one_hot_rows(classes, logits.shape[1], logits.dtype)

    logits, grads = _vjps(model, x, combine, strategy=strategy, create_graph=create_graph)
    return logits, grads.transpose(0, 1)

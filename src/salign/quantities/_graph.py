"""One forward pass, many vector-Jacobian products: the plumbing under every quantity.

All input gradients of one sample come from ONE forward pass: the logits' graph is kept and
walked backwards once per needed class combination. In eval mode the samples of a batch do not
interact, so the gradient of Σ_n ⟨c_n, Ψ(x_n)⟩ with respect to the batch holds every
per-sample gradient at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Final

import torch
from torch import Tensor, nn

from salign._validation import check_logits, run_model
from salign.errors import InputError

#: Ways to obtain several input gradients from one forward pass.
#:   "loop":    one ``autograd.grad(..., retain_graph=True)`` per class combination;
#:   "batched": one ``autograd.grad(..., is_grads_batched=True)`` call (vmap over cotangents);
#:   "vmap":    ``torch.func.vmap`` over the ``torch.func.vjp`` of the model.
STRATEGIES: tuple[str, ...] = ("loop", "batched", "vmap")

#: How many cotangents the "batched" and "vmap" strategies push through one call.
COTANGENT_CHUNK = 16


def auto_strategy() -> str:
    """The strategy ``strategy="auto"`` (the default everywhere) stands for: ``"loop"``.

    Why: on the CPU where salign is benchmarked (x86_64, 1–2 threads, torch 2.13;
    ``benchmarks/bench_quantities.py``, the ``nearest_rival(strategy=...)`` rows of
    ``docs/benchmarks/quantities.md``) the loop is the fastest of the three by a wide margin,
    because under ``is_grads_batched`` and ``vmap`` torch falls back to one
    ``convolution_backward`` per cotangent and its batched ReLU backward is slow. The loop also
    works with ``create_graph=True`` (``"vmap"`` does not) and needs no batching rule for any
    layer. No GPU has been measured; pass ``strategy="batched"`` to try it there.
    """
    return "loop"


#: What ``strategy="auto"`` resolves to (:func:`auto_strategy`). Read-only: it documents the
#: choice, and assigning it changes nothing; pass ``strategy=`` per call instead.
DEFAULT_STRATEGY: Final[str] = auto_strategy()


def resolve_strategy(strategy: str | None) -> str:
    """``"auto"``/None → :func:`auto_strategy`; any other name must be one of :data:`STRATEGIES`."""
    name = auto_strategy() if strategy in (None, "auto") else strategy
    if name not in STRATEGIES:
        raise InputError(f"strategy must be 'auto' or one of {', '.join(STRATEGIES)}, got {strategy!r}")
    return str(name)


class Graph:
    """One forward pass of ``model`` at ``x`` whose logits can be differentiated many times.

    ``vjp(cot)`` takes cotangents of shape (M, N, K) (one linear combination of the logits per
    sample and row m) and returns the input gradients, shape (M, N, *x.shape[1:]). The forward
    goes through :func:`salign._validation.run_model` (clear errors for a wrong shape or dtype)
    and its output through :func:`salign._validation.check_logits`.
    """

    def __init__(self, model: nn.Module, x: Tensor, *, strategy: str, create_graph: bool) -> None:
        self.strategy = strategy
        self.create_graph = create_graph
        self.x = x.detach().requires_grad_(True)
        self._freed = False
        out: object
        if strategy == "vmap":
            if create_graph:
                raise InputError("strategy='vmap' does not support create_graph=True; use 'loop'")
            out, self._vjp_fn = torch.func.vjp(functools.partial(run_model, model), x.detach())  # type: ignore[misc]
        else:
            with torch.enable_grad():
                out = run_model(model, self.x)
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
        """The logits, detached unless the graph was built with ``create_graph``."""
        return self.logits if self.create_graph else self.logits.detach()

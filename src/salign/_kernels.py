"""A faster CPU kernel for the input gradient of single-channel convolutions.

On CPU builds of PyTorch with oneDNN, the input gradient ("backward data") of a convolution
with one input channel, the first layer of every MNIST model, is 2.5–3× slower than PyTorch's
native kernel for the same operation (SmallNet's first layer, batch 256, 1 thread: 20.2 ms
against 7.9 ms; docs/benchmarks/quantities.md). The quantities take that gradient once per
backward, and the nearest-rival search takes K − 1 backwards per batch, so
:func:`native_input_gradients` lets them compute it with the native kernel instead.

It only changes which kernel computes ∂L/∂input of such layers (the result agrees to float
rounding); parameter gradients are not tracked through the wrapped layers, so it is used only
where gradients are taken with respect to the input alone (never with ``create_graph=True``).
The backward switches oneDNN off globally for the duration of that one kernel call, so another
thread running convolutions at that moment would use the native kernels too (same results).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

#: Set to False to keep oneDNN's kernel everywhere (the benchmark measures both).
ENABLED = True


class _NativeInputGradient(torch.autograd.Function):
    """Identity on a convolution's precomputed output; backward: the input gradient, native kernel."""

    @staticmethod
    def forward(ctx: Any, inp: Tensor, out: Tensor, weight: Tensor, conv: nn.Conv2d) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(inp, weight)
        ctx.conv = conv
        return out.detach()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # type: ignore[override]
        inp, weight = ctx.saved_tensors
        conv = ctx.conv
        # only the "enabled" flag (torch.backends.mkldnn.flags() would also reset the others)
        enabled = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False  # type: ignore[assignment]
        try:
            grad_input = torch.ops.aten.convolution_backward(
                grad.contiguous(),
                inp,
                weight,
                None,
                list(conv.stride),
                list(conv.padding),
                list(conv.dilation),
                False,
                [0, 0],
                conv.groups,
                [True, False, False],
            )[0]
        finally:
            torch.backends.mkldnn.enabled = enabled  # type: ignore[assignment]
        return grad_input, None, None, None


def _eligible(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.in_channels == 1
        and m.groups == 1
        and m.padding_mode == "zeros"
        and not isinstance(m.padding, str)
    )


def _hook(module: nn.Module, args: tuple[Any, ...], out: Any) -> Tensor | None:
    if len(args) != 1 or not isinstance(out, Tensor):
        return None
    (inp,) = args
    if not (isinstance(inp, Tensor) and inp.requires_grad and inp.device.type == "cpu"):
        return None
    if inp.dtype != torch.float32 or inp.ndim != 4:
        return None
    assert isinstance(module, nn.Conv2d)
    return _NativeInputGradient.apply(inp, out.detach(), module.weight.detach(), module)


def applies(x: Tensor) -> bool:
    """Whether the workaround can matter for inputs ``x``: float32 on a CPU with oneDNN enabled."""
    return (
        ENABLED
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and torch.backends.mkldnn.is_available()
        and bool(torch.backends.mkldnn.enabled)
    )


@contextmanager
def native_input_gradients(model: nn.Module, x: Tensor) -> Iterator[None]:
    """Within this context, forwards of ``model`` on ``x`` route the input gradient of every
    single-channel ``nn.Conv2d`` to PyTorch's native CPU kernel (a no-op elsewhere)."""
    if not applies(x):
        yield
        return
    handles = []
    try:
        for m in model.modules():
            if _eligible(m):
                handles.append(m.register_forward_hook(_hook, prepend=True))
        yield
    finally:
        for h in handles:
            h.remove()

"""The native-kernel input gradient for single-channel convolutions (salign._kernels)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import salign._kernels as kernels
from salign.quantities import nearest_rival, saliency


def _mnist_like_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(inplace=True),  # in-place right after the wrapped layer
        nn.MaxPool2d(2),
        nn.Conv2d(8, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 7 * 7, 10),
    ).eval()


def test_input_gradient_is_unchanged_and_hooks_are_removed() -> None:
    model = _mnist_like_net()
    x = torch.rand(6, 1, 28, 28)
    with_native = saliency(model, x, mode="logit")
    kernels.ENABLED = False
    try:
        reference = saliency(model, x, mode="logit")
    finally:
        kernels.ENABLED = True
    torch.testing.assert_close(with_native, reference, rtol=1e-5, atol=1e-6)
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_the_wrapped_layer_is_used_and_matches_autograd_exactly_in_float64_terms() -> None:
    model = _mnist_like_net()
    x = torch.rand(5, 1, 28, 28)
    calls = []
    original = kernels._NativeInputGradient.backward

    def counting(ctx: object, grad: torch.Tensor) -> tuple[object, ...]:
        calls.append(grad.shape)
        return original(ctx, grad)

    kernels._NativeInputGradient.backward = staticmethod(counting)  # type: ignore[method-assign]
    try:
        res = nearest_rival(model, x)
    finally:
        kernels._NativeInputGradient.backward = staticmethod(original)  # type: ignore[method-assign]
    assert len(calls) == 9  # K − 1 backwards, each through the wrapped first layer
    ref = nearest_rival(model.double(), x.double())
    assert torch.equal(res.rival, ref.rival)
    torch.testing.assert_close(res.gradient.double(), ref.gradient, rtol=1e-4, atol=1e-6)


def test_it_stays_out_of_differentiable_and_float64_paths() -> None:
    model = _mnist_like_net()
    x = torch.rand(3, 1, 28, 28)
    s = saliency(model, x, mode="logit", create_graph=True)
    (g,) = torch.autograd.grad(s.pow(2).sum(), model[0].weight)  # parameters are still reachable
    assert float(g.abs().sum()) > 0
    assert not kernels.applies(x.double())


@pytest.mark.parametrize(
    "conv", [nn.Conv2d(3, 4, 3), nn.Conv2d(1, 4, 3, padding="same"), nn.Conv2d(2, 2, 3, groups=2)]
)
def test_only_plain_single_channel_convolutions_are_wrapped(conv: nn.Conv2d) -> None:
    assert not kernels._eligible(conv)
    assert kernels._eligible(nn.Conv2d(1, 4, 3, padding=1))

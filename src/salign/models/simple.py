"""Small reference models with exact theory: linear and (bias-free) ReLU networks.

With ``bias=False`` these networks are positively homogeneous, Ψ(tx) = tΨ(x) for t > 0, so
Ψ(x) = ⟨∇Ψ(x), x⟩ (the effective bias β is zero; Etmann et al. 2019, §3) and they serve as
exact oracles for the alignment and robustness functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


def _features(input_shape: Sequence[int]) -> int:
    return int(math.prod(input_shape))


class Linear(nn.Module):
    """Multiclass linear model Ψ(x) = W·flatten(x) + b.

    Args:
        input_shape: shape of one input without the batch dimension, e.g. (1, 28, 28).
        num_classes: number of logits.
        bias: include the bias b; without it α equals ρ exactly (paper T1).
    """

    def __init__(
        self, input_shape: Sequence[int] = (1, 28, 28), num_classes: int = 10, bias: bool = True
    ) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(_features(input_shape), num_classes, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.flatten(x))

    def as_sequential(self) -> nn.Sequential:
        """The same layers (shared, not copied) as the ``nn.Sequential`` that :meth:`forward`
        computes: what :func:`salign.exact.exact_robustness` reads."""
        return nn.Sequential(self.flatten, self.fc)


class ReLUMLP(nn.Module):
    """Fully connected ReLU network; ``bias=False`` makes it positively homogeneous.

    Args:
        input_shape: shape of one input without the batch dimension.
        hidden: widths of the hidden layers.
        num_classes: number of logits.
        bias: biases in every layer.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        hidden: Sequence[int] = (256, 256),
        num_classes: int = 10,
        bias: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = _features(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h, bias=bias), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def as_sequential(self) -> nn.Sequential:
        """The ``nn.Sequential`` that :meth:`forward` computes (the model's own layers): what
        :func:`salign.exact.exact_robustness` reads."""
        return self.net


class ReLUCNN(nn.Module):
    """Conv–ReLU–max-pool network with a linear head; ``bias=False`` makes it homogeneous.

    Max-pooling and ReLU are positively homogeneous, so the bias-free network satisfies
    Ψ(x) = ⟨∇Ψ(x), x⟩ exactly.

    Args:
        in_channels: input channels.
        channels: output channels of each 3×3 conv block (each followed by a 2×2 max-pool).
        num_classes: number of logits.
        input_size: height = width of the inputs.
        bias: biases in every layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (16, 32),
        num_classes: int = 10,
        input_size: int = 28,
        bias: bool = True,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c, side = in_channels, input_size
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1, bias=bias), nn.ReLU(), nn.MaxPool2d(2)]
            c, side = out, side // 2
        layers += [nn.Flatten(), nn.Linear(c * side * side, num_classes, bias=bias)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

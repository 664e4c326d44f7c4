"""Normalisation as a model layer, so every model takes inputs in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Subtract a per-channel ``mean`` and divide by ``std``: ``(x - mean) / std``.

    Putting this inside the model keeps the public convention (inputs NCHW in [0, 1]) and makes
    gradients, alignments and attack distances refer to [0, 1] pixel units.
    """

    mean: Tensor  # buffers, (1, C, 1, 1)
    std: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean and std must have the same length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Normalized(nn.Sequential):
    """``Normalize`` followed by a network: ``Normalized(mean, std, net)``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], net: nn.Module) -> None:
        super().__init__(Normalize(mean, std), net)

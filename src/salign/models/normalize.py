"""Normalisation as a model layer, so every model takes inputs in [0, 1]."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

#: The ImageNet per-channel RGB mean and standard deviation (torchvision's pretrained models).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


#: The BGR channel means (on the 0–255 scale) of the original Caffe ResNets (He et al. 2016),
#: the preprocessing of the paper's ImageNet models.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


class CaffeNormalize(nn.Module):
    """Caffe-style preprocessing of RGB inputs in [0, 1]: RGB → BGR, ×255, minus the BGR mean.

    ``forward(x) = x[:, [2, 1, 0]] * 255 - mean`` with ``mean`` = :data:`CAFFE_BGR_MEAN`; no
    division by a standard deviation. Gradients still refer to [0, 1] RGB pixel units.
    """

    mean: Tensor  # buffer, (1, 3, 1, 1), BGR order, 0–255 scale

    def __init__(self, mean: Sequence[float] = CAFFE_BGR_MEAN) -> None:
        super().__init__()
        if len(mean) != 3:
            raise ValueError(f"Caffe preprocessing needs 3 channel means, got {len(mean)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != 3:
            raise ValueError(f"Caffe preprocessing needs RGB inputs (3 channels), got {x.shape[1]}")
        return x.flip(1) * 255.0 - self.mean.to(x.dtype)

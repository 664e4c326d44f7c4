"""timm architectures by name (``timm/<name>``), with weights from a local file only.

``build("timm/resnet50", weights="resnet50.safetensors")`` makes timm's model with
``pretrained=False`` (nothing is downloaded), puts its input normalisation in front (the mean
and std of the model's ``pretrained_cfg``, else ImageNet's) so it takes [0, 1] RGB inputs, and
loads the weights strictly (read without unpickling, see :mod:`salign.models.weights`). timm is
not a dependency of salign: install it yourself (``pip install timm``).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from torch import nn

from salign.errors import ConfigError, MissingDependencyError
from salign.models.normalize import IMAGENET_MEAN, IMAGENET_STD, Normalize
from salign.models.weights import load_weights_strict, weights_file

PREFIX = "timm/"
NORMALIZATIONS = ("model", "imagenet", None)


def timm_available() -> bool:
    """True when timm is installed."""
    return importlib.util.find_spec("timm") is not None


def timm_model(
    name: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int = 1000,
    normalization: str | None = "model",
    **model_kwargs: Any,
) -> nn.Sequential:
    """timm's ``name`` as ``nn.Sequential(normalisation, net)`` taking [0, 1] RGB inputs.

    Args:
        name: a timm model name (``timm.list_models()``), e.g. ``"resnet50"``.
        weights: a local ``.safetensors`` or ``.pt``/``.pth`` state dict, loaded strictly; None
            keeps timm's random initialisation.
        num_classes: the number of logits.
        normalization: ``"model"`` (the mean/std in the model's ``pretrained_cfg``),
            ``"imagenet"`` or None (none).
        **model_kwargs: further arguments of ``timm.create_model``.

    Raises:
        MissingDependencyError: timm is not installed.
        ConfigError: unknown name, bad arguments, or ``pretrained=True`` (it would download).
    """
    try:
        import timm
    except ImportError as exc:
        raise MissingDependencyError(
            f"timm/{name} needs timm, which is not installed: pip install timm ({exc})"
        ) from exc
    if normalization not in NORMALIZATIONS:
        raise ConfigError(f"unknown normalization {normalization!r}; accepted: 'model', 'imagenet', or None")
    if model_kwargs.pop("pretrained", False):
        raise ConfigError("pretrained=True would download weights; pass weights=PATH to a local file instead")
    if name not in timm.list_models():
        raise ConfigError(f"unknown timm model {name!r}; timm.list_models() lists them")
    path = None if weights is None else weights_file(weights)
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, **model_kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"timm rejected the arguments of {name!r}: {exc}") from exc
    if path is not None:
        load_weights_strict(net, path, what=f"timm/{name}", num_classes=num_classes)
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    cfg = getattr(net, "pretrained_cfg", None) or {}
    if normalization == "model" and cfg.get("mean") and cfg.get("std"):
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
    pre: nn.Module = nn.Identity() if normalization is None else Normalize(mean, std)
    return nn.Sequential(pre, net)

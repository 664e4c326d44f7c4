"""torchvision classification architectures by name, with weights from a local file only.

``build("torchvision/resnet50", weights="resnet50.pth", normalization="imagenet")`` makes
torchvision's ResNet-50 with its input preprocessing inside, so it takes RGB inputs in [0, 1]
like every salign model, and loads the weights strictly from a ``.safetensors`` or
``.pt``/``.pth`` file (read without unpickling code, see :mod:`salign.models.weights`). Nothing is
downloaded: torchvision's ``weights="DEFAULT"`` and weight enums are refused.

The model is ``nn.Sequential(preprocessing, net)``: ``model[0]`` is the normalisation
(:class:`Normalize`, :class:`CaffeNormalize` or ``nn.Identity``), ``model[1]`` torchvision's
network. ``salign.models.save`` stores both, with the name and arguments (not the weights
path) in the metadata, so ``salign.models.load`` rebuilds it without the original file.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import os
import re
from pathlib import Path
from typing import Any

from torch import nn

from salign.errors import ConfigError, MissingDependencyError
from salign.models.normalize import IMAGENET_MEAN, IMAGENET_STD, CaffeNormalize, Normalize
from salign.models.weights import load_weights_strict, weights_file

PREFIX = "torchvision/"
#: Accepted ``normalization`` values: torchvision's ImageNet mean/std, the paper's Caffe
#: preprocessing (RGB → BGR, ×255, minus the BGR mean), or none (the net sees [0, 1] RGB).
NORMALIZATIONS = ("imagenet", "caffe", None)
INSTALL_HINT = "pip install 'saliency-alignment[vision]'"
#: What torchvision's own weight names look like ("DEFAULT", "IMAGENET1K_V2",
#: "ResNet50_Weights.IMAGENET1K_V2"): these would download, so they are refused.
_HUB_WEIGHTS = re.compile(r"^(\w+_Weights\.)?[A-Z][A-Z0-9_]*$")


def torchvision_available() -> bool:
    """True when torchvision is installed (the ``vision`` extra)."""
    return importlib.util.find_spec("torchvision") is not None


def _torchvision_models() -> Any:
    try:
        import torchvision.models as tvm
    except ImportError as exc:  # also the "operator torchvision::nms does not exist" of a torch mismatch
        raise MissingDependencyError(
            f"torchvision models need torchvision (0.29, with torch 2.14): {INSTALL_HINT} ({exc})"
        ) from exc
    return tvm


def torchvision_names() -> list[str]:
    """Names of torchvision's classification models (``build(f"torchvision/{name}")``)."""
    tvm = _torchvision_models()
    return sorted(tvm.list_models(module=tvm))


def torchvision_model(
    arch: str,
    *,
    weights: str | os.PathLike[str] | None = None,
    num_classes: int = 1000,
    normalization: str | None = "imagenet",
    **model_kwargs: Any,
) -> nn.Sequential:
    """torchvision's classifier ``arch`` taking [0, 1] RGB inputs, weights from a local file.

    Args:
        arch: a name from :func:`torchvision_names` (``"resnet50"``, ``"vit_b_16"``, ...).
        weights: a local ``.safetensors`` file or a ``.pt``/``.pth`` file holding the network's
            state dict (bare, or under ``"state_dict"``/``"model"``; a DDP ``module.`` prefix is
            removed), loaded strictly; ``None`` keeps torchvision's random initialisation.
            Names that would download (``"DEFAULT"``, weight enums) are refused.
        num_classes: the number of logits; must match the weights' classifier.
        normalization: ``"imagenet"`` (mean/std of torchvision's pretrained models),
            ``"caffe"`` (RGB → BGR, ×255, minus 103.939/116.779/123.68: the paper's ResNets)
            or ``None``.
        **model_kwargs: further arguments of torchvision's builder (e.g. ``dropout=0.2``).

    Raises:
        ConfigError: unknown architecture (with close matches), bad ``num_classes`` or
            ``normalization``, download-style ``weights``, or arguments torchvision rejects.
        MissingFileError / CheckpointError: the weights file is missing, unreadable, would run
            code, or does not fit the architecture (names the keys or the class count).
    """
    tvm = _torchvision_models()
    names = tvm.list_models(module=tvm)
    if arch not in names:
        close = difflib.get_close_matches(arch, names, n=5, cutoff=0.5)
        hint = f"close matches: {', '.join(PREFIX + c for c in close)}" if close else "none is close"
        raise ConfigError(
            f"unknown torchvision model {arch!r} ({hint}); "
            "salign.models.torchvision_names() lists the classification models"
        )
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a positive integer, got {num_classes!r}")
    if normalization not in NORMALIZATIONS:
        raise ConfigError(
            f"unknown normalization {normalization!r}; accepted: 'imagenet', 'caffe', or None (none)"
        )
    path = None if weights is None else _local_weights(weights, tvm)
    if "pretrained" in model_kwargs:
        raise ConfigError("pretrained= would download weights; pass weights=PATH to a local file instead")
    try:
        net = tvm.get_model(arch, weights=None, num_classes=num_classes, **model_kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"torchvision rejected the arguments of {arch!r}: {exc}") from exc
    if path is not None:
        load_weights_strict(net, path, what=f"torchvision/{arch}", num_classes=num_classes)
    return nn.Sequential(_preprocessing(normalization), net)


def _preprocessing(normalization: str | None) -> nn.Module:
    if normalization == "imagenet":
        return Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if normalization == "caffe":
        return CaffeNormalize()
    return nn.Identity()


def _local_weights(weights: object, tvm: Any) -> Path:
    download = (
        "salign never downloads weights: pass weights=PATH to a local .safetensors or .pt/.pth "
        "state dict (e.g. one you saved with torch.save(model.state_dict(), PATH))"
    )
    if isinstance(weights, (tvm.WeightsEnum, bool)):
        raise ConfigError(f"weights={weights!r}: {download}")
    if not isinstance(weights, str | os.PathLike):
        raise ConfigError(f"weights must be a file path or None, got {type(weights).__name__}")
    if isinstance(weights, str) and _HUB_WEIGHTS.match(weights) and not Path(weights).exists():
        raise ConfigError(f"weights={weights!r} names torchvision's hub weights; {download}")
    return weights_file(weights)


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (recorded beside the spec as the weights' provenance)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

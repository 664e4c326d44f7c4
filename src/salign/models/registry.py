"""Models by name: ``build("smallnet")``, ``build("linear", bias=False)``,
``build("torchvision/resnet50", weights="resnet50.pth")``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from salign.errors import ConfigError
from salign.models.efficientnet import efficientnet_lite0
from salign.models.resnet import ResNet18
from salign.models.simple import Linear, ReLUCNN, ReLUMLP
from salign.models.smallnet import SmallNet
from salign.models.timm_models import PREFIX as TIMM_PREFIX
from salign.models.timm_models import timm_model
from salign.models.torchvision_models import PREFIX as TORCHVISION_PREFIX
from salign.models.torchvision_models import file_sha256, torchvision_model

MODELS: dict[str, Callable[..., nn.Module]] = {
    "smallnet": SmallNet,
    "linear": Linear,
    "relu_mlp": ReLUMLP,
    "relu_cnn": ReLUCNN,
    "resnet18": ResNet18,
    "efficientnet_lite0": efficientnet_lite0,
}

#: Attribute under which ``build`` records how a model was made (used by ``save``).
SPEC_ATTR = "_salign_spec"


def available() -> list[str]:
    """Names of salign's own models accepted by :func:`build` (besides ``torchvision/<name>``,
    see :func:`salign.models.torchvision_names`)."""
    return sorted(MODELS)


def build(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model; unknown names or keyword arguments are errors that name them.

    Args:
        name: one of :func:`available` (``"smallnet"``, ``"linear"``, ``"relu_mlp"``,
            ``"relu_cnn"``, ``"resnet18"``, ``"efficientnet_lite0"``), or
            ``"torchvision/<name>"`` for any torchvision classifier (needs the ``vision`` extra;
            keywords ``weights=PATH``, ``num_classes``, ``normalization``: see
            :func:`salign.models.torchvision_models.torchvision_model`), or ``"timm/<name>"``
            when timm is installed (same keywords, see :func:`salign.models.timm_models.timm_model`).
        **kwargs: the model's constructor arguments (e.g. ``bias=False``, ``num_classes=10``).
    """
    if name.startswith(TORCHVISION_PREFIX):
        return _build_foreign(name, kwargs, torchvision_model, TORCHVISION_PREFIX, "imagenet")
    if name.startswith(TIMM_PREFIX):
        return _build_foreign(name, kwargs, timm_model, TIMM_PREFIX, "model")
    if name not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; available models: {', '.join(available())}, "
            "torchvision/<name> or timm/<name>"
        )
    factory = MODELS[name]
    params = inspect.signature(factory).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ConfigError(
            f"unknown argument(s) {', '.join(unknown)} for model {name!r}; accepted: {', '.join(params)}"
        )
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    model = factory(**kwargs)
    setattr(model, SPEC_ATTR, {"name": name, "kwargs": kwargs})
    return model


def _build_foreign(
    name: str, kwargs: dict[str, Any], factory: Callable[..., nn.Module], prefix: str, normalization: str
) -> nn.Module:
    """``torchvision/<arch>`` or ``timm/<arch>``: the spec records the architecture arguments and
    where the weights came from (file and SHA-256), but not the weights path as an argument: a
    saved checkpoint holds the weights, so loading it never needs the original file."""
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
    weights = kwargs.pop("weights", None)
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("normalization", normalization)
    model = factory(name[len(prefix) :], weights=weights, **kwargs)
    spec: dict[str, Any] = {"name": name, "kwargs": kwargs}
    if weights is not None:
        spec["weights_from"] = {"file": str(weights), "sha256": file_sha256(weights)}
    setattr(model, SPEC_ATTR, spec)
    return model


def spec_of(model: nn.Module) -> dict[str, Any]:
    """The ``{"name", "kwargs"}`` record of a model made by :func:`build` (unwrapping DDP)."""
    inner = getattr(model, "module", model)
    spec = getattr(inner, SPEC_ATTR, None) or getattr(model, SPEC_ATTR, None)
    if spec is None:
        raise ConfigError(
            "this model was not made by salign.models.build, so its architecture cannot be recorded; "
            "build it with salign.models.build(name, ...) or save its state_dict yourself"
        )
    return spec

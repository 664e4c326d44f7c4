"""Model registry, checkpoints, and the reference networks.

``build(name, **kwargs)`` makes a model by name; every model takes NCHW inputs in [0, 1] and
returns logits; ``build("torchvision/<name>", weights=PATH)`` wraps any torchvision classifier
(weights from a local file only), ``timm/<name>`` likewise when timm is installed. ``save``/``load`` write and read safetensors checkpoints whose
metadata holds the model's name and keyword arguments, so loading never unpickles anything.
``load_spec(spec, weights=...)`` is the one resolver of every way to name a model (checkpoint,
``.pt2`` export, ``file.py:factory``, torchvision/timm/registry names): see :mod:`salign.models.spec`.
"""

from __future__ import annotations

from salign.models.checkpoint import load, load_state_dict_file, save
from salign.models.efficientnet import efficientnet_lite0, efficientnet_lite0_available
from salign.models.exported import ExportedModel, load_exported
from salign.models.normalize import CaffeNormalize, Normalize, Normalized
from salign.models.registry import MODELS, available, build, spec_of
from salign.models.resnet import ResNet18
from salign.models.simple import Linear, ReLUCNN, ReLUMLP
from salign.models.smallnet import SmallNet
from salign.models.spec import load_spec
from salign.models.timm_models import timm_available, timm_model
from salign.models.torchvision_models import torchvision_available, torchvision_model, torchvision_names
from salign.models.weights import read_state_dict

__all__ = [
    "MODELS",
    "CaffeNormalize",
    "ExportedModel",
    "Linear",
    "Normalize",
    "Normalized",
    "ReLUCNN",
    "ReLUMLP",
    "ResNet18",
    "SmallNet",
    "available",
    "build",
    "efficientnet_lite0",
    "efficientnet_lite0_available",
    "load",
    "load_exported",
    "load_spec",
    "load_state_dict_file",
    "read_state_dict",
    "save",
    "spec_of",
    "timm_available",
    "timm_model",
    "torchvision_available",
    "torchvision_model",
    "torchvision_names",
]

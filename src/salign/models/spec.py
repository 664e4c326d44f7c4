"""One model spec for every entry point: the CLI's ``--model``, study configs, and the API.

:func:`load_spec` turns a string into a model in eval mode (NCHW inputs in [0, 1] → logits):

===================================  ==========================================================
spec                                 model
===================================  ==========================================================
``run/model.safetensors``            a salign checkpoint (:func:`salign.models.save`): JSON and
                                     tensors only
``model.pt2``                        a ``torch.export`` archive; refused if it holds pickled or
                                     compiled entries (:mod:`salign.models.exported`)
``path/to/net.py:make_model``        **imports and runs** the user's file, calls
                                     ``make_model(**kwargs)``; ``weights=FILE`` is then loaded
``package.module:make_model``        the same for an importable module
``torchvision/resnet50``             torchvision's architecture, ``weights=FILE``
``timm/resnet50``                    timm's (if installed), ``weights=FILE``
``smallnet``, ``linear``, ...        salign's registry (:func:`salign.models.build`),
                                     ``weights=FILE`` optional
===================================  ==========================================================

Weights files (``.safetensors``, or ``.pt``/``.pth`` read with ``torch.load(weights_only=True)``)
never run code. A ``file.py:factory`` spec does: importing someone's Python file is running it,
so name only files you trust; this is the one spec that executes code, and only when asked.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from salign.errors import CheckpointError, ConfigError, MissingFileError, describe_error
from salign.models.checkpoint import load as load_checkpoint
from salign.models.exported import load_exported
from salign.models.registry import MODELS, available, build
from salign.models.timm_models import PREFIX as TIMM_PREFIX
from salign.models.torchvision_models import PREFIX as TORCHVISION_PREFIX
from salign.models.weights import load_weights_strict, looks_like, sniff_format

_IDENT = r"[A-Za-z_]\w*"
_FACTORY = re.compile(rf"^(?P<target>.+):(?P<attr>{_IDENT}(?:\.{_IDENT})*)$")
_MODULE = re.compile(rf"^{_IDENT}(?:\.{_IDENT})*$")

#: The accepted forms, for error messages.
FORMS = (
    "a salign checkpoint (.safetensors), a torch.export archive (.pt2), file.py:factory or "
    "package.module:factory (with --weights), torchvision/<arch> or timm/<arch> (with --weights), "
    "or a salign model name"
)


def load_spec(
    spec: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    map_location: str | torch.device = "cpu",
    **kwargs: Any,
) -> nn.Module:
    """The model named by ``spec`` (see the module docstring), on ``map_location``, in eval mode.

    Args:
        spec: a checkpoint or ``.pt2`` path, ``file.py:factory``, ``module:factory``,
            ``torchvision/<arch>``, ``timm/<arch>`` or a registry name.
        weights: a state dict file loaded strictly into the built model (for factory, torchvision,
            timm and registry specs; checkpoints and archives carry their own weights).
        map_location: device of the returned model.
        **kwargs: arguments of the factory / architecture (e.g. ``num_classes=10``).

    Raises:
        MissingFileError: a named file does not exist.
        ConfigError: an unknown name, a bad factory, a user file that raises on import (the
            message names the file; the original exception is chained), or ``weights`` /
            ``kwargs`` given with a spec that takes none.
        CheckpointError: a file of the wrong kind (the message says what it looks like and what
            to pass instead), a pickle that would run code, or weights that do not fit.
    """
    text = os.fspath(spec)
    if not isinstance(text, str) or not text.strip():
        raise ConfigError(f"empty model spec; pass {FORMS}")
    factory = _FACTORY.match(text)
    if factory and (factory["target"].endswith(".py") or _MODULE.match(factory["target"])):
        model = _from_factory(factory["target"], factory["attr"], kwargs)
        if weights is not None:
            load_weights_strict(model, weights, what=text)
    elif text.startswith((TORCHVISION_PREFIX, TIMM_PREFIX)):
        model = build(text, **({} if weights is None else {"weights": weights}), **kwargs)
    elif text in MODELS:
        model = build(text, **kwargs)
        if weights is not None:
            load_weights_strict(model, weights, what=f"salign model {text!r} {kwargs or ''}".rstrip())
    else:
        model = _from_file(Path(text), weights, kwargs)
    return model.to(map_location).eval()


def _from_file(path: Path, weights: object, kwargs: dict[str, Any]) -> nn.Module:
    if not path.exists():
        looks_named = "/" not in str(path) and "." not in path.name
        what = f"unknown model {str(path)!r}" if looks_named else f"model checkpoint not found: {path}"
        extra = f" (salign models: {', '.join(available())})" if looks_named else ""
        error = ConfigError if looks_named else MissingFileError
        raise error(f"{what}{extra}; a model spec is {FORMS}")
    if path.is_dir():
        raise ConfigError(f"model spec {path} is a directory; pass {FORMS}")
    kind = sniff_format(path)
    if kind == "unknown" and path.suffix in (".safetensors", ".pt2"):
        kind = path.suffix[1:]  # a damaged file of the named kind: its reader says what is wrong
    if kind not in ("safetensors", "pt2"):
        hint = looks_like(kind) or "is not a model file salign recognises"
        raise CheckpointError(f"{path} is not a salign checkpoint or .pt2 archive: it {hint}")
    if weights is not None or kwargs:
        given = "--weights" if weights is not None else f"arguments {sorted(kwargs)}"
        raise ConfigError(
            f"{path} carries its own architecture and weights, so {given} cannot apply; "
            "--weights goes with --model file.py:factory, torchvision/<arch>, timm/<arch> or a model name"
        )
    return load_exported(path) if kind == "pt2" else load_checkpoint(path)


def _from_factory(target: str, attr: str, kwargs: dict[str, Any]) -> nn.Module:
    where = target
    if target.endswith(".py"):
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise ConfigError(f"cannot import module {target!r}: {describe_error(exc)}") from exc
        where = getattr(module, "__file__", None) or target
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n]))
            raise ConfigError(
                f"{where} has no {attr!r}; callables defined there: {', '.join(names[:10]) or 'none'}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"{where}:{attr} is a {type(obj).__name__}, not a function or class making a model")
    with _on_path(Path(where).parent if target.endswith(".py") else None):
        try:
            model = obj(**kwargs)
        except Exception as exc:
            raise ConfigError(f"{where}:{attr}({_kwargs_text(kwargs)}) raised {describe_error(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{where}:{attr} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise MissingFileError(f"model file not found: {path}")
    resolved = path.resolve()
    name = "salign_user_model_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, resolved)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses, pickling and typing look the module up by name
    with _on_path(resolved.parent):
        try:
            spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:
            del sys.modules[name]
            raise ConfigError(
                f"{path}: importing the model file raised {describe_error(exc)} (salign --debug shows the traceback)"
            ) from exc
    return module


@contextmanager
def _on_path(folder: Path | None) -> Iterator[None]:
    """Put the user's folder first on ``sys.path`` (sibling imports) while its code runs."""
    entry = None if folder is None else str(folder)
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        if entry in sys.path:
            sys.path.remove(entry)


def _kwargs_text(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())

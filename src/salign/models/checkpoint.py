"""Model checkpoints: safetensors weights plus the model's name and arguments as metadata.

A checkpoint is one ``.safetensors`` file. Its string metadata holds ``salign_model`` (JSON:
the name and keyword arguments given to :func:`salign.models.build`) and any extra fields the
caller adds (accuracy, λ, epoch). Loading parses JSON and tensors only: no code runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from salign._io import atomic_path
from salign.errors import CheckpointError, MissingFileError
from salign.models.registry import build, spec_of
from salign.models.weights import looks_like, read_state_dict, sniff_format
from salign.models.weights import state_mismatch as _state_mismatch

META_KEY = "salign_model"


def save(model: nn.Module, path: str | os.PathLike[str], *, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and architecture record to ``path`` atomically.

    Args:
        model: a model made by :func:`salign.models.build` (DDP wrappers are unwrapped).
        path: target file, conventionally ``*.safetensors``.
        metadata: extra JSON-serialisable fields stored beside the architecture record.
    """
    inner = getattr(model, "module", model)
    spec = spec_of(model)
    state = {k: v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    meta = {META_KEY: json.dumps(spec)}
    for key, value in (metadata or {}).items():
        meta[str(key)] = value if isinstance(value, str) else json.dumps(value)
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return target


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a safetensors checkpoint (raises CheckpointError if unreadable)."""
    p = _existing(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        hint = looks_like(sniff_format(p))
        if hint:
            raise CheckpointError(f"{p} is not a salign checkpoint: it {hint}") from exc
        raise CheckpointError(f"{p} is not a readable safetensors checkpoint: {exc}") from exc


def load(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored at ``path`` and load its weights (strictly), in eval mode.

    Raises:
        MissingFileError: ``path`` does not exist.
        CheckpointError: the file is corrupt, not a salign checkpoint, a pickle file, or its
            weights do not fit the recorded architecture.
    """
    p = _existing(path)
    meta = read_metadata(p)
    if META_KEY not in meta:
        raise CheckpointError(
            f"{p} has no {META_KEY!r} metadata, so it is not a salign model checkpoint: it "
            f"{looks_like('safetensors-weights')} (Python: build the model and use load_state_dict_file)"
        )
    try:
        spec = json.loads(meta[META_KEY])
        name, kwargs = spec["name"], spec.get("kwargs", {})
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{p}: corrupt {META_KEY!r} metadata: {exc}") from exc
    model = build(name, **kwargs)
    state = load_state_dict_file(p)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{p}: weights do not match model {name!r} {kwargs}: {_state_mismatch(model, state)}"
        ) from exc
    return model.to(map_location).eval()


def load_state_dict_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict without executing code: safetensors, or torch files with ``weights_only``
    (:func:`salign.models.read_state_dict`, which also unwraps ``{"state_dict": ...}`` files).

    A pickle that asks for anything but tensors (a malicious checkpoint) is refused with a
    :class:`CheckpointError`.
    """
    return read_state_dict(_existing(path))


def _existing(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"checkpoint not found: {p}")
    return p

"""Reading other people's weight files without running their code.

:func:`read_state_dict` accepts what training scripts commonly write: a ``.safetensors`` file,
or a ``.pt``/``.pth``/``.bin`` file holding a state dict, bare or wrapped as
``{"state_dict": ...}`` or ``{"model": ...}``, with or without DDP's ``module.`` prefix. Torch
files are read with ``torch.load(weights_only=True)``: a pickle that asks for anything but
tensors and plain containers is refused before any of it runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from salign.errors import CheckpointError, MissingFileError

#: Keys under which training scripts nest the model's state dict (checked in this order).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
DDP_PREFIX = "module."


def weights_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a :class:`Path`, checked to be an existing regular file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"weights file not found: {p}")
    if not p.is_file():
        raise CheckpointError(f"weights must be a file, but {p} is a directory or a special file")
    if not os.access(p, os.R_OK):
        raise CheckpointError(f"weights file {p} is not readable (permission denied)")
    return p


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (on the CPU), unwrapped and without a ``module.`` prefix.

    Raises:
        MissingFileError: ``path`` does not exist.
        CheckpointError: not a file, unreadable, corrupt, a pickle that would run code, or no
            state dict of tensors inside.
    """
    p = weights_file(path)
    if p.suffix == ".safetensors":
        try:
            state: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is not a readable safetensors file: {_first_line(exc)}") from exc
    else:
        state = _torch_load(p)
    return _strip_prefix(_unwrap(state, p))


def _torch_load(p: Path) -> Any:
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (not a zip), EOFError, ...
        text = str(exc)
        found = re.search(r"GLOBAL ([\w.]+)", text)
        if found:
            why = f"it asks for {found.group(1)}, which is code, not tensors"
        else:
            why = f"{type(exc).__name__}: {_first_line(exc)}"
        raise CheckpointError(
            f"refusing to load {p}: not a plain tensor file ({why}); salign reads weights only with "
            "torch.load(weights_only=True) and never unpickles code — save a state dict, ideally as .safetensors"
        ) from exc


def _unwrap(obj: Any, p: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and _is_tensor_dict(inner) and inner:
                obj = inner
                break
    if not isinstance(obj, Mapping) or not obj or not _is_tensor_dict(obj):
        what = type(obj).__name__
        if isinstance(obj, Mapping):
            what = f"a {what} with keys {', '.join(map(str, list(obj)[:5]))}"
        raise CheckpointError(
            f"{p} does not hold a state dict of tensors (found {what}; expected name → tensor, "
            f"bare or under one of {', '.join(WRAPPER_KEYS)})"
        )
    return {str(k): v for k, v in obj.items()}


def _is_tensor_dict(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _strip_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        return {k[len(DDP_PREFIX) :]: v for k, v in state.items()}
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor], examples: int = 3) -> str:
    """One line saying how ``state`` differs from ``model``'s state dict (torch's message spans
    several lines and lists every key): a few missing, unexpected and reshaped keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [
        f"{k} is {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("with another shape", reshaped)):
        if keys:
            more = f", ... ({len(keys)} in all)" if len(keys) > examples else ""
            parts.append(f"{what}: {', '.join(keys[:examples])}{more}")
    return "; ".join(parts) or "incompatible tensors"

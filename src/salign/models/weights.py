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
import struct
import zipfile
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
    kind = sniff_format(p)
    if kind in ("pt2", "torchscript", "python", "npz"):
        raise CheckpointError(f"{p} {looks_like(kind)}, not a state dict of weights")
    # By content, not by name: a torch pickle named .safetensors is still read with weights_only.
    if kind == "safetensors" or (p.suffix == ".safetensors" and kind == "unknown"):
        try:
            state: Any = load_file(str(p))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{p} is not a readable safetensors file: {_first_line(exc)}") from exc
    else:
        state = _torch_load(p)
    return _strip_prefix(_unwrap(state, p))


#: What each kind of file :func:`sniff_format` tells apart is, and what to pass it as.
_LOOKS_LIKE = {
    "torch-pickle": "looks like a torch.save pickle (a state dict or a pickled model); salign never "
    "unpickles models: pass it as --weights FILE with --model file.py:factory (or a model name), "
    "which reads it with torch.load(weights_only=True)",
    "torchscript": "looks like a TorchScript archive (torch.jit.save), which runs its own code on "
    "loading; export the model with torch.export.save(torch.export.export(model, (x,)), 'model.pt2') "
    "and pass the .pt2 as --model",
    "pt2": "looks like a torch.export archive (.pt2); pass it as --model model.pt2 (no --weights)",
    "safetensors-weights": "looks like a safetensors state dict without salign's architecture record; "
    "pass it as --weights FILE with --model file.py:factory (or a model name)",
    "python": "looks like Python source; name its factory function: --model file.py:make_model",
    "npz": "looks like a NumPy .npz archive (data?); pass data as --data FILE",
}


def sniff_format(path: str | os.PathLike[str]) -> str:
    """What kind of model or weights file ``path`` is, from its first bytes (no code runs).

    One of ``"safetensors"``, ``"pt2"`` (torch.export), ``"torchscript"``, ``"torch-pickle"``
    (torch.save's zip format or a legacy/plain pickle), ``"npz"``, ``"python"`` or
    ``"unknown"``.
    """
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            head = fh.read(16)
        size = p.stat().st_size
    except OSError:
        return "unknown"
    if p.suffix == ".py":
        return "python"
    if head.startswith(b"PK\x03\x04"):
        return _sniff_zip(p)
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle protocol 2-5
        return "torch-pickle"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 0 < n <= size - 8 and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def _sniff_zip(p: Path) -> str:
    try:
        with zipfile.ZipFile(p) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return "unknown"
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "archive_format" in base and any("/models/" in n or n.startswith("models/") for n in names):
        return "pt2"
    if "constants.pkl" in base and any("/code/" in n for n in names):
        return "torchscript"
    if "data.pkl" in base:
        return "torch-pickle"
    if names and all(n.endswith(".npy") for n in names):
        return "npz"
    return "unknown"


def looks_like(kind: str) -> str:
    """The error-message phrase for a file of ``kind`` (see :func:`sniff_format`) handed to the
    wrong place: what it looks like and what to pass instead ("" for unknown kinds)."""
    return _LOOKS_LIKE.get(kind, "")


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


def load_weights_strict(
    net: nn.Module, path: str | os.PathLike[str], *, what: str, num_classes: int | None = None
) -> None:
    """Load the state dict in ``path`` into ``net`` strictly, or say in one line why it does not fit.

    ``what`` names the architecture in the message. With ``num_classes``, a file whose only
    difference is the classifier's number of classes gets "pass num_classes=K".
    """
    state = read_state_dict(path)
    expected = net.state_dict()
    if num_classes is not None and set(state) == set(expected):
        heads = {
            k: (tuple(state[k].shape), tuple(v.shape))
            for k, v in expected.items()
            if tuple(state[k].shape) != tuple(v.shape)
        }
        # Only the classifier differs, and only in its first dimension (the number of classes).
        head_like = [f for f, m in heads.values() if f and f[1:] == m[1:] and m[0] == num_classes]
        file_classes = {f[0] for f in head_like}
        if heads and len(head_like) == len(heads) and len(file_classes) == 1:
            k = next(iter(file_classes))
            key, (file_shape, _) = next(iter(heads.items()))
            raise CheckpointError(
                f"{path} holds weights for {k} classes ({key} is {file_shape}), but num_classes="
                f"{num_classes} was asked: pass num_classes={k}"
            )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        classes = "" if num_classes is None else f" (num_classes={num_classes})"
        raise CheckpointError(f"{path} does not fit {what}{classes}: {state_mismatch(net, state)}") from exc


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

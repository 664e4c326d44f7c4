"""The user's own images in one file: ``.npz``, ``.safetensors`` or ``.pt``/``.pth``.

The file holds ``x`` (images, (N, C, H, W) or (N, D), float in [0, 1] or uint8 in 0..255) and
optionally ``y`` (integer class labels, (N,)). Nothing in it runs: ``.npz`` is read with
``allow_pickle=False``, ``.pt`` with ``torch.load(weights_only=True)``. Writing one::

    numpy.savez("mine.npz", x=images, y=labels)                 # or
    safetensors.torch.save_file({"x": x, "y": y}, "mine.safetensors")
    torch.save({"x": x, "y": y}, "mine.pt")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from salign._validation import check_inputs, check_labels
from salign.errors import DataError, InputError, InputTypeError, MissingFileError, describe_error

#: File suffixes read by :func:`read_tensor_file` (and so accepted as ``--data FILE``).
TENSOR_FILE_SUFFIXES = (".npz", ".safetensors", ".pt", ".pth")


def is_tensor_file(name: str | os.PathLike[str]) -> bool:
    """True when ``name`` is a path with one of :data:`TENSOR_FILE_SUFFIXES`."""
    return Path(name).suffix.lower() in TENSOR_FILE_SUFFIXES


def read_tensor_file(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor | None]:
    """``(x, y)`` from the file: x float32 NCHW (or N×D) in [0, 1], y int64 (N,) or None.

    uint8 images are divided by 255; float images must already lie in [0, 1].

    Raises:
        MissingFileError: no such file.
        DataError: unreadable, of an unknown suffix, pickled objects, or no ``x`` inside.
        InputError / InputTypeError: ``x`` or ``y`` of the wrong shape, range or dtype (the
            message names the file and the tensor).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingFileError(f"data file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in TENSOR_FILE_SUFFIXES:
        raise DataError(
            f"{p}: unknown data file type {p.suffix!r}; use one of {', '.join(TENSOR_FILE_SUFFIXES)}"
        )
    tensors = _read(p, suffix)
    if "x" not in tensors:
        found = ", ".join(sorted(map(str, tensors))) or "nothing"
        raise DataError(f"{p} has no 'x' tensor of images (found: {found}); save it as x=..., y=...")
    x = _images(tensors["x"], p)
    y = tensors.get("y")
    if y is None:
        return x, None
    if not isinstance(y, Tensor):
        raise InputTypeError(f"{p.name}: y must be a tensor of class labels, got {type(y).__name__}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    with _naming(p):
        y = check_labels(y, x.shape[0], name="y")
    if y.numel() and int(y.min()) < 0:
        raise InputError(f"{p.name}: y has negative labels (min {int(y.min())}); labels are 0..K-1")
    return x, y


@contextmanager
def _naming(p: Path) -> Iterator[None]:
    """Prefix the shared input checks' messages (which name ``x``/``y``) with the file's name."""
    try:
        yield
    except (InputError, InputTypeError) as exc:
        raise type(exc)(f"{p.name}: {exc}") from exc


def _read(p: Path, suffix: str) -> Mapping[str, Any]:
    try:
        if suffix == ".npz":
            import numpy as np

            with np.load(p, allow_pickle=False) as archive:
                return {k: torch.from_numpy(archive[k]) for k in archive.files}
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # BadZipFile, pickled object arrays, SafetensorError, UnpicklingError, ...
        raise DataError(
            f"{p} is not a readable {suffix} file of tensors ({describe_error(exc)}); "
            "object arrays and pickled classes are refused"
        ) from exc
    if isinstance(obj, Tensor):
        return {"x": obj}
    if isinstance(obj, (tuple, list)) and 1 <= len(obj) <= 2:
        return dict(zip(("x", "y"), obj, strict=False))
    if not isinstance(obj, Mapping):
        raise DataError(f"{p} holds a {type(obj).__name__}; expected a dict {{'x': images, 'y': labels}}")
    return obj


def _images(x: Any, p: Path) -> Tensor:
    name = f"{p.name}: x"
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a tensor of images, got {type(x).__name__}")
    if x.ndim == 3:
        raise InputError(
            f"{name} has shape {tuple(x.shape)}: images must be (N, C, H, W); for greyscale "
            "(N, H, W) add the channel axis: x[:, None]"
        )
    if x.dtype == torch.uint8:
        x = x.to(torch.float32).div_(255.0)
    elif x.is_floating_point():
        x = x.to(torch.float32)
    else:
        raise InputTypeError(f"{name} has dtype {x.dtype}; images must be float in [0, 1] or uint8 in 0..255")
    with _naming(p):
        return check_inputs(x, name="x")

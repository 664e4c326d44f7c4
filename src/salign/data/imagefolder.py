"""ImageFolder: ``root/<class name>/<image>`` trees the user supplies (e.g. Imagenette, ImageNet val).

Class names are the sorted sub-directory names, labels their indices. When ``root`` has a
``train``/``test`` (or ``val``) sub-directory, the split picks it; otherwise ``root`` itself
is the dataset. Images are read with Pillow, converted to RGB (or greyscale), centre-cropped
and resized to ``size`` (bilinear, antialiased).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from salign.data._image import as_size, center_crop_resize, to_chw_float
from salign.errors import ConfigError, DataError, MissingDependencyError, MissingFileError

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)
_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val")}


def _split_root(root: Path, split: str) -> Path:
    if split not in _SPLIT_DIRS:
        raise ConfigError(f"unknown split {split!r}; choose one of ['test', 'train']")
    for sub in _SPLIT_DIRS[split]:
        if (root / sub).is_dir():
            return root / sub
    if any((root / s).is_dir() for subs in _SPLIT_DIRS.values() for s in subs):
        raise MissingFileError(
            f"{root} has split folders but none for {split!r} (looked for {_SPLIT_DIRS[split]})"
        )
    return root


def list_imagefolder(
    root: str | os.PathLike[str], split: str = "train"
) -> tuple[list[Path], list[int], list[str]]:
    """Image paths, their labels and the class names of an ImageFolder tree (no images are read)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"image folder not found: {root}")
    folder = _split_root(root, split)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{folder}: no class sub-directories (expected {folder}/<class>/<image>)")
    paths: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        files = sorted(
            p for p in (folder / name).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(f"{folder}: no images with suffixes {sorted(IMAGE_SUFFIXES)}")
    return paths, labels, classes


def list_images(
    root: str | os.PathLike[str], split: str = "train", *, file_list: str | os.PathLike[str] | None = None
) -> tuple[list[Path], list[int], list[str]]:
    """Paths, labels and class names: from the sorted class folders, or from a ``path label`` list."""
    if file_list is None:
        return list_imagefolder(root, split)
    from salign.data.streaming import read_file_list

    base = Path(root).expanduser()
    if not base.is_dir():
        raise MissingFileError(f"image folder not found: {base}")
    paths, labels = read_file_list(file_list, _split_root(base, split))
    return paths, labels, [str(c) for c in sorted(set(labels))]


def read_imagefolder(
    root: str | os.PathLike[str],
    split: str = "train",
    *,
    size: int | tuple[int, int] = 224,
    channels: int = 3,
    file_list: str | os.PathLike[str] | None = None,
    indices: torch.Tensor | list[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Load an ImageFolder tree: x (N, channels, H, W) float32 in [0, 1], y (N,) int64, class names.

    ``file_list``: a ``path label`` file (see :mod:`salign.data.streaming`) instead of the class
    folders. ``indices``: decode only these items of the listing (an evaluation subset), so
    memory is bounded by the subset, not the split.

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: no classes or images, or an image cannot be decoded (the file is named).
        MissingDependencyError: Pillow is not installed.
    """
    if channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {channels!r}")
    target = as_size(size)
    paths, labels, classes = list_images(root, split, file_list=file_list)
    if indices is not None:
        chosen = [int(i) for i in indices]
        if any(not 0 <= i < len(paths) for i in chosen):
            raise DataError(f"indices out of range for {len(paths)} images")
        paths, labels = [paths[i] for i in chosen], [labels[i] for i in chosen]
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError("ImageFolder needs Pillow: pip install pillow") from None
    x = torch.empty((len(paths), channels, *target), dtype=torch.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("L" if channels == 1 else "RGB"))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        x[i] = center_crop_resize(to_chw_float(arr, channels), target)
    return x, torch.tensor(labels, dtype=torch.int64), classes

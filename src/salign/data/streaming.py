"""Streaming ImageFolder: images decoded one at a time, for trees too big to hold in memory (ImageNet).

:func:`salign.data.read_imagefolder` decodes a whole split into one tensor, which is right for a
few thousand images and impossible for ImageNet's 1.28 M. :class:`ImageFolderDataset` lists the
files once (paths and labels only) and decodes each item when a ``DataLoader`` worker asks for
it, so memory is bounded by the loader's batches, whatever the size of the tree.

Augmentations are torchvision ``transforms.v2`` pipelines:

- ``paper`` (Etmann et al. 2019, paper.md §4): random rescale of the short side to an integer in
  [258, 512), random 256×256 crop, hue jitter ±0.06, horizontal flip; evaluation: resize the
  short side to 256, centre crop 256.
- ``standard`` (the usual ImageNet pair): random resized crop 224 + flip; evaluation: resize
  256, centre crop 224.

Determinism: the trainer asks for each item under a seed that depends on (training seed,
epoch, index) only (:class:`salign.training.batches.SeededItems`), so an epoch's crops do not
depend on worker count or timing — the property that lets a killed run resume mid-epoch with
bit-identical weights.

Labels come from the sorted class sub-directories (``root/<class>/<image>``, as
:func:`~salign.data.imagefolder.list_imagefolder`) or from a file list: one ``path label`` pair
per line, paths relative to the split folder (or absolute), ``#`` comments allowed. A file list
also fixes an evaluation subset that is identical for every model and every rank.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from salign.data.imagefolder import IMAGE_SUFFIXES, _split_root, list_imagefolder
from salign.errors import ConfigError, DataError, MissingDependencyError, MissingFileError

log = logging.getLogger(__name__)

Transform = Callable[[Tensor], Tensor]
OnError = Literal["raise", "skip"]


def read_file_list(
    path: str | os.PathLike[str], root: str | os.PathLike[str]
) -> tuple[list[Path], list[int]]:
    """Paths and labels from a ``path label`` list (relative paths are under ``root``).

    Raises:
        MissingFileError: the list or a listed image does not exist.
        DataError: a line that is not ``path label`` with an integer label ≥ 0 (line number named).
    """
    p, base = Path(path).expanduser(), Path(root).expanduser()
    if not p.is_file():
        raise MissingFileError(f"file list not found: {p}")
    paths: list[Path] = []
    labels: list[int] = []
    for number, raw in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, _, label = line.rpartition(" ") if " " in line else line.rpartition("\t")
        name = name.strip()
        if not name or not label.strip().isdigit():
            raise DataError(f"{p}:{number}: expected '<image path> <integer label>', got {raw!r}")
        image = Path(name) if Path(name).is_absolute() else base / name
        if not image.is_file():
            raise MissingFileError(f"{p}:{number}: listed image not found: {image}")
        paths.append(image)
        labels.append(int(label))
    if not paths:
        raise DataError(f"{p}: the file list names no images")
    return paths, labels


def train_transform(
    kind: Literal["paper", "standard", "none"] = "paper",
    *,
    crop: int = 256,
    rescale: tuple[int, int] = (258, 512),
    hue: float = 0.06,
) -> Transform:
    """The training augmentation on a uint8 (3, H, W) image; returns float32 in [0, 1].

    ``paper``: short side to a random integer in ``rescale`` = [lo, hi), random ``crop``², hue
    jitter ±``hue``, horizontal flip. ``standard``: ``RandomResizedCrop(crop)`` + flip. ``none``:
    resize the short side to ``crop`` and centre crop (no randomness).
    """
    v2 = _v2()
    to_float = v2.ToDtype(torch.float32, scale=True)
    if kind == "paper":
        lo, hi = rescale
        if not 0 < crop <= lo < hi:
            raise ConfigError(
                f"paper augmentation needs 0 < crop <= rescale[0] < rescale[1], got {crop}, {rescale}"
            )
        steps = [v2.RandomResize(lo, hi, antialias=True), v2.RandomCrop(crop)]
        if hue > 0:
            steps.append(v2.ColorJitter(hue=hue))
        return v2.Compose([*steps, v2.RandomHorizontalFlip(), to_float])
    if kind == "standard":
        return v2.Compose([v2.RandomResizedCrop(crop, antialias=True), v2.RandomHorizontalFlip(), to_float])
    if kind == "none":
        return eval_transform(resize=crop, crop=crop)
    raise ConfigError(f"unknown augmentation {kind!r}; choose from ['none', 'paper', 'standard']")


def eval_transform(*, resize: int = 256, crop: int = 256) -> Transform:
    """Resize the short side to ``resize``, centre crop ``crop``² (paper: 256/256; standard 256/224)."""
    if not 0 < crop <= resize:
        raise ConfigError(f"evaluation transform needs 0 < crop <= resize, got crop {crop}, resize {resize}")
    v2 = _v2()
    return v2.Compose(
        [v2.Resize(resize, antialias=True), v2.CenterCrop(crop), v2.ToDtype(torch.float32, scale=True)]
    )


def _v2() -> Any:
    try:
        from torchvision.transforms import v2
    except ImportError:
        raise MissingDependencyError(
            "streaming image data needs torchvision: pip install 'saliency-alignment[vision]'"
        ) from None
    return v2


def decode_rgb(path: Path) -> Tensor:
    """Decode an image file to a uint8 (3, H, W) tensor (greyscale repeated, alpha dropped).

    Raises:
        DataError: the file cannot be decoded (the path is named).
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise MissingDependencyError("ImageFolder needs Pillow: pip install pillow") from None
    import numpy as np

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


@dataclass(frozen=True)
class Skipped:
    """An item that could not be decoded (``on_error="skip"``): dropped by :func:`collate`."""

    path: str
    reason: str


class ImageFolderDataset(torch.utils.data.Dataset[Any]):
    """An ImageFolder split (or a file list) decoded per item; holds only paths and labels.

    Args:
        root: the tree's root; a ``train``/``test`` (or ``val``) sub-folder is picked by ``split``
            when present, as in :func:`~salign.data.read_imagefolder`.
        split: ``"train"`` or ``"test"``.
        transform: uint8 (3, H, W) → float32 (3, h, w) in [0, 1]; e.g. :func:`train_transform`.
        file_list: optional ``path label`` list (see the module docstring); else the sorted
            class folders give the labels.
        on_error: an unreadable image raises :class:`DataError` naming it (``"raise"``), or is
            logged with its path and dropped from its batch (``"skip"``).

    Items: ``dataset[i]`` → ``(image, label)``, or :class:`Skipped`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        *,
        transform: Transform,
        file_list: str | os.PathLike[str] | None = None,
        on_error: OnError = "raise",
    ) -> None:
        if on_error not in ("raise", "skip"):
            raise ConfigError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if file_list is not None:
            base = Path(root).expanduser()
            if not base.is_dir():
                raise MissingFileError(f"image folder not found: {base}")
            paths, labels = read_file_list(file_list, _split_root(base, split))
            self.classes: list[str] = [str(c) for c in sorted(set(labels))]
        else:
            paths, labels, self.classes = list_imagefolder(root, split)
        bad = [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES]
        if bad:
            raise DataError(f"{bad[0]}: not an image suffix {sorted(IMAGE_SUFFIXES)}")
        self.paths: list[str] = [str(p) for p in paths]  # str: cheap to send to workers
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.transform = transform
        self.on_error: OnError = on_error

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, int] | Skipped:
        path = self.paths[index]
        try:
            image = decode_rgb(Path(path))
        except DataError as exc:
            if self.on_error == "raise":
                raise
            log.warning("skipping unreadable image %s", exc)
            return Skipped(path, str(exc))
        return self.transform(image), int(self.labels[index])

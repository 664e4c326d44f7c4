"""CIFAR-10 in its "python version" format (Krizhevsky, 2009), from a path the user supplies.

CIFAR-10 cannot be downloaded here; point ``data_dir`` at ``cifar-10-batches-py/`` (or its
parent, or the ``cifar-10-python.tar.gz`` archive). Each batch is a pickled dict with
``b"data"`` (N, 3072) uint8 (1024 red, 1024 green, 1024 blue, row-major 32×32) and
``b"labels"`` (N ints in 0..9). The batches are unpickled with a restricted unpickler
(numpy arrays, dtypes and plain containers only), so a malicious file cannot run code.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import numpy as np

from salign.data._safe_pickle import safe_loads
from salign.errors import ConfigError, DataError, MissingFileError

TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCHES = ("test_batch",)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SUBDIR = "cifar-10-batches-py"


def _batch_names(split: str) -> tuple[str, ...]:
    if split == "train":
        return TRAIN_BATCHES
    if split == "test":
        return TEST_BATCHES
    raise ConfigError(f"unknown split {split!r}; choose one of ['test', 'train']")


def _parse_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_loads(raw, source=source, encoding="bytes")
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a dict, got {type(batch).__name__}")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{source}: missing 'data' or 'labels' (keys: {sorted(map(str, batch))})")
    data = np.asarray(batch["data"])
    labels = np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{source}: 'data' must be uint8 (N, 3072), got {data.dtype} {data.shape}")
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{source}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{source}: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar10(path: str | os.PathLike[str], split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 ``split`` from ``path``: uint8 images (N, 3, 32, 32) and int64 labels (N,).

    Args:
        path: ``cifar-10-batches-py`` directory, its parent, or ``cifar-10-python.tar.gz``.
        split: ``"train"`` (data_batch_1..5) or ``"test"`` (test_batch).

    Raises:
        MissingFileError: ``path`` or a batch file is missing.
        DataError: a batch is corrupt, has the wrong layout, or its pickle is unsafe.
    """
    names = _batch_names(split)
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"CIFAR-10 path not found: {path}")
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    if path.is_file():
        try:
            with tarfile.open(path, "r:*") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for name in names:
                    if name not in members:
                        raise MissingFileError(f"{path}: archive has no {name}")
                    fh = tar.extractfile(members[name])
                    assert fh is not None
                    parts.append(_parse_batch(fh.read(), f"{path}!{members[name].name}"))
        except (tarfile.TarError, OSError, EOFError) as exc:
            if isinstance(exc, MissingFileError):
                raise
            raise DataError(f"{path}: not a readable CIFAR-10 archive ({exc})") from None
    else:
        folder = path / _SUBDIR if (path / _SUBDIR).is_dir() else path
        for name in names:
            batch = folder / name
            if not batch.is_file():
                raise MissingFileError(f"CIFAR-10 batch not found: {batch} (expected {', '.join(names)})")
            parts.append(_parse_batch(batch.read_bytes(), str(batch)))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

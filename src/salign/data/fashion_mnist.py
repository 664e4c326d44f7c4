"""Fashion-MNIST (Xiao et al., 2017; MIT licence) from the Debian package ``dataset-fashion-mnist``.

The package holds the four official IDX ``.gz`` files under ``/usr/share/datasets/fashion-mnist``.
When it is installed we read them there; otherwise :func:`fetch_fashion_mnist` runs
``apt-get download dataset-fashion-mnist`` (no root needed) and unpacks the ``.deb`` into
``<cache>/fashion-mnist`` (the ``.deb`` is an ``ar`` archive around ``data.tar.*``, unpacked in
Python, so ``dpkg-deb`` is not required). A user can also pass ``data_dir`` with the IDX files
from https://github.com/zalandoresearch/fashion-mnist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from salign.data._paths import cache_dir
from salign.data.mnist import load_idx_dir
from salign.errors import DataError, MissingFileError

DEB_PACKAGE = "dataset-fashion-mnist"
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_DEB_SUBDIR = Path("usr/share/datasets/fashion-mnist")
COUNTS = {"train": 60000, "test": 10000}
CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
INSTALL_HINT = (
    f"run `salign data fetch fashion-mnist` (Debian/Ubuntu: uses `apt-get download {DEB_PACKAGE}`), "
    f"or `sudo apt-get install {DEB_PACKAGE}`, or download the four IDX .gz files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass data_dir=/--data-dir"
)
_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in _FILES)


def fashion_mnist_candidates(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Directories searched for Fashion-MNIST, in order: the installed package, then the cache."""
    base = Path(root) if root is not None else cache_dir()
    return [SYSTEM_DIR, base / "fashion-mnist" / _DEB_SUBDIR]


def find_fashion_mnist(root: str | os.PathLike[str] | None = None) -> Path | None:
    """The first directory holding all four Fashion-MNIST files, or ``None``."""
    return next((d for d in fashion_mnist_candidates(root) if _complete(d)), None)


def extract_deb(deb: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Unpack the ``data.tar.*`` member of a Debian package into ``dest`` (like ``dpkg-deb -x``).

    Only regular files and directories are extracted, with tarfile's ``data`` filter (no
    absolute paths, no ``..``, no links outside ``dest``).
    """
    deb, dest = Path(deb), Path(dest)
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise DataError(f"{deb}: not a Debian package (no ar header)")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                raise DataError(f"{deb}: no data.tar member")
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            try:
                size = int(header[48:58].decode("ascii").strip())
            except ValueError:
                raise DataError(f"{deb}: corrupt ar header") from None
            if name.startswith("data.tar"):
                with tempfile.TemporaryFile() as member:
                    remaining = size
                    while remaining:
                        block = fh.read(min(remaining, 1 << 20))
                        if not block:
                            raise DataError(f"{deb}: truncated {name}")
                        member.write(block)
                        remaining -= len(block)
                    member.seek(0)
                    try:
                        with tarfile.open(fileobj=member, mode="r:*") as tar:
                            members = [m for m in tar.getmembers() if m.isfile() or m.isdir()]
                            tar.extractall(dest, members=members, filter="data")
                    except (tarfile.TarError, OSError, EOFError) as exc:
                        raise DataError(f"{deb}: cannot unpack {name} ({exc})") from None
                return dest
            fh.seek(size + (size % 2), os.SEEK_CUR)


def fetch_fashion_mnist(
    root: str | os.PathLike[str] | None = None, *, deb: str | os.PathLike[str] | None = None
) -> Path:
    """Make Fashion-MNIST available offline and return the directory holding its IDX files.

    Uses the installed Debian package if present; else unpacks ``deb`` (a local
    ``dataset-fashion-mnist_*.deb``) or one fetched with ``apt-get download`` into
    ``<root>/fashion-mnist``. Checks 60,000/10,000 items with 6,000/1,000 per class.

    Raises:
        DataError: apt is unavailable or fails, or the files are incomplete; the message says
            how to get the data another way.
    """
    base = Path(root) if root is not None else cache_dir()
    if deb is None:
        found = find_fashion_mnist(root)
        if found is not None:
            verify_fashion_mnist(found)
            return found
    target = base / "fashion-mnist"
    if deb is not None:
        if not Path(deb).is_file():
            raise MissingFileError(f"Debian package not found: {deb}")
        extract_deb(deb, target)
    else:
        apt = shutil.which("apt-get")
        if apt is None:
            raise DataError(f"Fashion-MNIST not found and apt-get is not available: {INSTALL_HINT}")
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
            proc = subprocess.run(
                [apt, "download", DEB_PACKAGE],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            debs = sorted(Path(tmp).glob(f"{DEB_PACKAGE}_*.deb"))
            if proc.returncode != 0 or not debs:
                tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
                raise DataError(
                    f"`apt-get download {DEB_PACKAGE}` failed (try `sudo apt-get update` first):\n{tail}\n"
                    f"Other ways: {INSTALL_HINT}"
                )
            extract_deb(debs[0], target)
    folder = target / _DEB_SUBDIR
    if not _complete(folder):
        raise DataError(f"{folder}: the package did not contain the four Fashion-MNIST files")
    verify_fashion_mnist(folder)
    return folder


def verify_fashion_mnist(folder: str | os.PathLike[str]) -> None:
    """Check 60,000 train / 10,000 test items, 28×28, balanced classes (6,000 / 1,000 each)."""
    for split, n in COUNTS.items():
        x, y = load_idx_dir(folder, split)
        if x.shape != (n, 28, 28):
            raise DataError(
                f"{folder}: Fashion-MNIST {split} images have shape {x.shape}, expected ({n}, 28, 28)"
            )
        counts = np.bincount(y, minlength=10)
        if counts.shape != (10,) or not np.all(counts == n // 10):
            raise DataError(
                f"{folder}: Fashion-MNIST {split} class counts {counts.tolist()} are not {n // 10} each"
            )


def load_fashion_mnist_arrays(
    split: str = "train", *, data_dir: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST ``split`` as uint8 arrays ``(N, 28, 28)`` and ``(N,)`` (labels 0..9, see CLASSES)."""
    if data_dir is not None:
        return load_idx_dir(data_dir, split)
    folder = find_fashion_mnist()
    if folder is None:
        raise DataError(f"Fashion-MNIST is not available offline: {INSTALL_HINT}")
    x, y = load_idx_dir(folder, split)
    n = COUNTS.get(split)
    if n is not None and x.shape[0] != n:
        raise DataError(f"{folder}: Fashion-MNIST {split} has {x.shape[0]} items, expected {n}")
    return x, y

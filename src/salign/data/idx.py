"""Reader and writer for the IDX format of MNIST and Fashion-MNIST (LeCun et al.).

An IDX file is a 4-byte magic number ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the values in C order, big-endian. Files may be gzip-compressed
(detected by content, not by name).
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from salign._io import atomic_path
from salign.errors import DataError, MissingFileError

#: IDX type byte -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytearray:
    """The (decompressed) bytes of ``path`` as a writable buffer."""
    if not path.is_file():
        raise MissingFileError(f"IDX file not found: {path}")
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head == _GZIP_MAGIC:
        try:
            with gzip.open(path, "rb") as fh:
                return bytearray(fh.read())
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(f"{path}: corrupt gzip archive ({exc})") from None
    size = path.stat().st_size
    buf = bytearray(size)
    with open(path, "rb") as fh:
        got = fh.readinto(buf)
    if got != size:
        raise DataError(f"{path}: short read ({got} of {size} bytes)")
    return buf


def parse_idx(buf: bytes | bytearray, *, source: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a native-endian array (validated; errors name ``source``)."""
    if len(buf) < 4:
        raise DataError(f"{source}: not an IDX file (only {len(buf)} bytes)")
    if buf[0] != 0 or buf[1] != 0 or buf[2] not in IDX_DTYPES or buf[3] == 0:
        raise DataError(f"{source}: not an IDX file (bad magic number {bytes(buf[:4]).hex()})")
    dtype = IDX_DTYPES[buf[2]]
    ndim = buf[3]
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(f"{source}: IDX header truncated ({len(buf)} bytes, header needs {header})")
    shape = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(buf) - header
    if found != expected:
        raise DataError(
            f"{source}: IDX data size mismatch: shape {shape} of {dtype.name} needs {expected} bytes, "
            f"file has {found} (truncated or corrupt)"
        )
    arr = np.frombuffer(buf, dtype=dtype, offset=header).reshape(shape)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    return arr


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    Raises:
        MissingFileError: ``path`` does not exist.
        DataError: the file is not valid IDX (bad magic number, truncated, wrong size, bad gzip);
            the message names the file.
    """
    path = Path(path)
    return parse_idx(_read_bytes(path), source=str(path))


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode ``array`` as IDX bytes (its dtype must be one IDX supports)."""
    arr = np.asarray(array)
    code = _CODE_OF.get(arr.dtype.newbyteorder("="))
    if code is None:
        raise DataError(
            f"IDX cannot store dtype {arr.dtype}; use uint8, int8, int16, int32, float32, float64"
        )
    if arr.ndim == 0 or arr.ndim > 255:
        raise DataError(f"IDX needs 1 to 255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, code, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return header + np.ascontiguousarray(arr, dtype=IDX_DTYPES[code]).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file atomically; gzip when ``compress`` (default: name ends ``.gz``)."""
    path = Path(path)
    data = idx_bytes(array)
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        data = gzip.compress(data, mtime=0)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path

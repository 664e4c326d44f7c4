"""A restricted unpickler for the numpy pickles of classic datasets (MNIST ``.pkl.gz``, CIFAR).

``pickle.load`` can run arbitrary code: any importable callable named in the stream is called.
:func:`safe_loads` resolves only the handful of numpy names an array pickle needs (plus a
latin-1-only ``_codecs.encode`` that Python 3 uses to pickle ``bytes`` at protocol 2); any
other global, e.g. ``os.system``, is refused with :class:`~salign.errors.DataError`.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable
from typing import Any

import numpy as np

from salign.errors import DataError


def _numpy_function(name: str, *modules: str) -> Callable[[], Any]:
    """A lazy resolver of numpy's private ``name``, from the first of ``modules`` that has it."""

    def resolve() -> Any:
        for module in modules:
            try:
                return getattr(importlib.import_module(module), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"numpy has no {name} in {modules}")

    return resolve


# numpy >= 2 moved numpy.core to numpy._core; old pickles still name numpy.core.
_reconstruct = _numpy_function("_reconstruct", "numpy._core.multiarray", "numpy.core.multiarray")
_frombuffer = _numpy_function("_frombuffer", "numpy._core.numeric", "numpy.core.numeric")


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    # Python 3 pickles ``bytes`` at protocol < 3 as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin-1")


_ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
    ("_codecs", "encode"): lambda: _latin1_encode,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        factory = _ALLOWED.get((module, name))
        if factory is None:
            raise pickle.UnpicklingError(f"refused to load global {module}.{name}")
        return factory()

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id")


def safe_loads(data: bytes, *, source: str, encoding: str = "latin1") -> Any:
    """Unpickle ``data`` allowing only numpy arrays, dtypes and plain containers.

    Args:
        data: the pickle stream.
        source: the file (or archive member) it came from, named in errors.
        encoding: how Python-2 ``str`` objects are decoded (``"latin1"`` for numpy arrays
            written by Python 2, ``"bytes"`` to keep them as bytes, as CIFAR needs).

    Raises:
        DataError: the stream names a global outside the allow list, or is not a valid pickle.
    """
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding=encoding).load()
    except pickle.UnpicklingError as exc:
        raise DataError(f"{source}: unsafe or corrupt pickle ({exc})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise DataError(f"{source}: corrupt pickle ({type(exc).__name__}: {exc})") from None

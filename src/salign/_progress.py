"""Progress bars that switch themselves off when output is not a terminal or when quiet."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def quiet_default() -> bool:
    """True when ``SALIGN_QUIET`` is set to a non-empty value other than ``0``."""
    return os.environ.get("SALIGN_QUIET", "") not in ("", "0")


def progress(
    iterable: Iterable[T], *, desc: str, total: int | None = None, quiet: bool | None = None
) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar; no bar when ``quiet`` or when stderr is not a TTY."""
    disable: bool | None = True if (quiet if quiet is not None else quiet_default()) else None
    yield from tqdm(iterable, desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True)


def progress_bar(*, desc: str, total: int | None = None, quiet: bool | None = None) -> tqdm:
    """A manual tqdm bar (call ``.update(n)``; use as a context manager)."""
    disable: bool | None = True if (quiet if quiet is not None else quiet_default()) else None
    return tqdm(desc=desc, total=total, disable=disable, leave=False, dynamic_ncols=True)

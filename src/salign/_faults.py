"""Fault injection for testing recovery at scale: off unless ``SALIGN_FAULT`` is set.

Recovery paths (a rank killed mid-epoch and restarted by ``torchrun --max-restarts``, an
out-of-memory error during evaluation) cannot be provoked on demand on a CPU, so the code calls
:func:`fault_point` where such a fault would strike, and the environment says which to simulate::

    SALIGN_FAULT="kill:train_step:5:rank=1"   # SIGKILL rank 1 when it reaches global step 5
    SALIGN_FAULT="oom:evaluate_chunk:1"       # the 1st evaluation chunk raises torch.OutOfMemoryError

Several faults are separated by ``;``. The number is the point's index (for ``train_step`` the
1-based global step of the run, which is restored on resume; otherwise the 1-based count of calls
in this process). ``SALIGN_FAULT_ONCE=PATH`` makes every fault fire at most once across
processes: the file is created just before the fault fires and, while it exists, nothing fires
again (a restarted rank resumes instead of dying at the same step forever).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import torch

ENV = "SALIGN_FAULT"
ONCE_ENV = "SALIGN_FAULT_ONCE"
ACTIONS = ("kill", "oom")
_calls: Counter[str] = Counter()


def _parse(text: str) -> list[tuple[str, str, int, int | None]]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        fields = item.split(":")
        rank = None
        if len(fields) == 4 and fields[3].startswith("rank="):
            rank = int(fields[3][len("rank=") :])
            fields = fields[:3]
        if len(fields) != 3 or fields[0] not in ACTIONS or not fields[2].isdigit():
            raise ValueError(f"{ENV}: expected '<kill|oom>:<point>:<n>[:rank=<r>]', got {item!r}")
        faults.append((fields[0], fields[1], int(fields[2]), rank))
    return faults


def fault_point(point: str, *, index: int | None = None, rank: int = 0) -> None:
    """Fire the fault ``SALIGN_FAULT`` names for this ``point`` (a no-op when it names none).

    ``index``: the position to match (default: the count of calls of ``point`` in this process).
    """
    text = os.environ.get(ENV)
    if not text:
        return
    _calls[point] += 1
    at = _calls[point] if index is None else index
    for action, where, n, only_rank in _parse(text):
        if where != point or n != at or (only_rank is not None and only_rank != rank):
            continue
        once = os.environ.get(ONCE_ENV)
        if once:
            if Path(once).exists():
                continue
            Path(once).touch()
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise torch.OutOfMemoryError(f"injected by {ENV}: out of memory at {point} #{at}")


def reset() -> None:
    """Forget the call counts (tests)."""
    _calls.clear()

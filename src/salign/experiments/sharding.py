"""Splitting the evaluation across torchrun ranks and gathering the per-sample tables on rank 0.

Under ``torchrun --nproc_per_node=N salign run CONFIG`` every rank evaluates a contiguous slice
of the evaluation subset (:func:`shard_bounds`), and rank 0 collects the slices in rank order
(:func:`gather_to_main`), so the gathered table has the same rows, in the same order, as a
single-process run. Without torch.distributed everything here is a single-process no-op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist

from salign.errors import InputError

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's rank and the number of ranks."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the files."""
        return self.rank == 0


def current_shard() -> Shard:
    """The rank and world size of an initialised default process group, else ``Shard(0, 1)``."""
    if dist.is_available() and dist.is_initialized():
        return Shard(dist.get_rank(), dist.get_world_size())
    return Shard()


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """The half-open slice ``[start, stop)`` of ``n`` items that ``rank`` of ``world_size`` takes.

    Slices are contiguous, in rank order, differ in size by at most one (the first ``n mod
    world_size`` ranks take one more), and together cover ``range(n)`` exactly once.
    """
    if world_size < 1:
        raise InputError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise InputError(f"rank must be in [0, {world_size}), got {rank}")
    if n < 0:
        raise InputError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    stop = start + base + (1 if rank < extra else 0)
    return start, stop


def shard_items(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """The items of ``rank``'s slice (see :func:`shard_bounds`)."""
    start, stop = shard_bounds(len(items), rank, world_size)
    return items[start:stop]


def gather_to_main(obj: Any, shard: Shard | None = None) -> list[Any] | None:
    """Collect one picklable object per rank on rank 0, in rank order.

    Returns the list on rank 0 and ``None`` on the other ranks; in a single process, ``[obj]``.
    Every rank must call it (a collective).
    """
    shard = shard or current_shard()
    if shard.world_size == 1:
        return [obj]
    out: list[Any] | None = [None] * shard.world_size if shard.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(shard: Shard | None = None) -> None:
    """Wait for every rank (no-op in a single process)."""
    shard = shard or current_shard()
    if shard.world_size > 1:
        dist.barrier()

"""torch.distributed plumbing for the trainer: torchrun environment, process group, helpers.

Under ``torchrun --nproc_per_node=N`` the environment holds ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; the trainer then joins a process group (gloo on CPU, nccl on CUDA) and wraps
the model in :class:`torch.nn.parallel.DistributedDataParallel`. Without those variables
everything here is a no-op for a single process.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> DistInfo:
    """Join the torchrun process group if the environment asks for one (idempotent)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available():
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        _init_process_group(backend, rank, world)
        created = True
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        initialized_here=created,
    )


def _init_process_group(backend: str, rank: int, world: int) -> None:
    """``init_process_group`` from the torchrun environment; after a ``--max-restarts`` restart,
    on a store prefixed by the restart count.

    torchrun keeps its store across restarts, so the restarted ranks would read the gloo/nccl
    addresses the killed ranks published ("Gloo connectFullMesh failed ... Connection refused",
    or a hang); a fresh prefix per restart makes every rank publish and read anew.
    """
    restart = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if restart == 0:
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        return
    from torch.distributed.rendezvous import rendezvous

    store, rank, world = next(iter(rendezvous("env://", rank=rank, world_size=world)))
    prefixed = dist.PrefixStore(f"salign/restart_{restart}/", store)
    dist.init_process_group(backend=backend, store=prefixed, rank=rank, world_size=world)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum ``t`` over ranks (returns a new tensor on ``t``'s device)."""
    if not info.enabled:
        return t
    work = t.clone()
    if dist.get_backend() == "nccl":
        work = work.to(torch.device("cuda", torch.cuda.current_device()))
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def gather_rng_states(info: DistInfo) -> list[torch.Tensor]:
    """Every rank's torch CPU RNG state (collective; all ranks must call it)."""
    state = torch.get_rng_state()
    if not info.enabled:
        return [state]
    if dist.get_backend() == "nccl":  # nccl moves CUDA tensors only
        state = state.to(torch.device("cuda", torch.cuda.current_device()))
    out = [torch.empty_like(state) for _ in range(info.world_size)]
    dist.all_gather(out, state)
    return [o.cpu() for o in out]


#: How many process groups this process has left: the same on every rank, since the ranks run
#: one program. It keeps the keys of :func:`leave_process_group` apart when one store serves
#: several groups in turn (a script that calls :func:`~salign.training.train` twice under
#: torchrun: the agent's store outlives each group), where a key of the first group would
#: otherwise let the ranks leave the second at once.
_groups_left = itertools.count()


@contextlib.contextmanager
def left_at_exit(info: DistInfo) -> Iterator[None]:
    """Run the block, then :func:`teardown`: with the other ranks if it returned, at once
    (``failed=True``) if it raised."""
    try:
        yield
    except BaseException:
        teardown(info, failed=True)
        raise
    teardown(info)


def teardown(info: DistInfo, *, failed: bool = False) -> None:
    """Leave the process group if :func:`setup` joined it (see :func:`leave_process_group`);
    ``failed``: this rank is leaving on an exception, so it does not wait for the others."""
    if info.initialized_here and dist.is_initialized():
        leave_process_group(wait=not failed)


def leave_process_group(
    *, wait: bool = True, timeout: datetime.timedelta = datetime.timedelta(minutes=5)
) -> None:
    """Destroy the default process group once every rank has reached this call.

    The ranks meet on the rendezvous store, not in a collective: a gloo barrier followed at once
    by destruction can close a socket while a peer still reads the barrier's last message
    (pytorch/gloo#155), and a rank then aborts in gloo's I/O thread. Objects that still hold the
    group (a finished ``DistributedDataParallel``) are collected first, so that none outlives it
    into interpreter shutdown. Rank 0 leaves last, as it may host the store. Each group's keys
    are its own (see ``_groups_left``). A rank that does not arrive within ``timeout`` (it failed) does
    not keep the others: they destroy the group anyway. ``wait=False`` (a rank leaving on an
    error) destroys at once, so that torchrun sees the failure and restarts without delay.
    """
    gc.collect()
    rank, world, group = dist.get_rank(), dist.get_world_size(), next(_groups_left)
    if not wait:
        dist.destroy_process_group()
        return
    key = f"salign/leave/{group}"
    try:
        store = dist.distributed_c10d._get_default_store()  # the group's (prefixed) store
        store.set(f"{key}/here/{rank}", "1")
        store.wait([f"{key}/here/{r}" for r in range(world)], timeout)
        # rank 0 may host the store (env:// without torchrun's agent): it leaves last, once no
        # other rank will call the store again (a client of a closed store retries until timeout)
        if rank == 0:
            store.wait([f"{key}/done/{r}" for r in range(1, world)], timeout)
        else:
            store.set(f"{key}/done/{rank}", "1")
    except (RuntimeError, ValueError, AttributeError):  # DistStoreError is a RuntimeError
        pass  # a rank failed or the store is gone: leave without waiting
    dist.destroy_process_group()

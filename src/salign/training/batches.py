"""Where the training loop's batches come from: in-memory tensors or a streaming dataset.

Both sources follow one plan. Epoch ``e`` visits the training set in the order
:func:`epoch_permutation` ``(n, seed, e)``; global batch ``s`` is positions
``[s·B, (s+1)·B)`` of it, and rank ``r`` of ``W`` takes the ``r``-th of ``W`` contiguous shards
of that batch (``torch.tensor_split``). So the union of the ranks' shards is exactly the
one-process batch — which is why a 2-rank run equals one process on the combined batch — and
the plan is a function of (seed, epoch, step) alone, so a run resumed at step ``s`` of an
epoch continues with the same batches (the sampler's position is the step number).
``DistributedSampler`` would shard the dataset instead of each batch and lose that equality.

A streaming source (:class:`DatasetBatches`) serves the plan through a ``DataLoader`` with
workers and pinned memory; each item's augmentation is seeded by (seed, epoch, index)
(:class:`SeededItems`), so the crops do not depend on the number of workers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from salign.data.streaming import Skipped

log = logging.getLogger(__name__)


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the training examples in ``epoch``: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63))
    return torch.randperm(n, generator=g)


def global_batches(n: int, batch_size: int, world_size: int) -> int:
    """Number of global batches per epoch (a last batch smaller than the world size is dropped)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world_size else 0)


def penalty_mask(n: int, fraction: float) -> Tensor:
    """Which positions of a global batch of ``n`` get the penalty: ⌊f·n⌋ (at least 1), evenly spaced.

    Position p is chosen when ⌊(p+1)·f⌋ > ⌊p·f⌋. The choice depends on the global position
    only, so it is the same set for any number of DDP ranks and is spread evenly over them.
    """
    if fraction >= 1:
        return torch.ones(n, dtype=torch.bool)
    pos = torch.arange(n, dtype=torch.float64)
    mask = torch.floor((pos + 1) * fraction + 1e-9) > torch.floor(pos * fraction + 1e-9)
    if not bool(mask.any()):
        mask[0] = True
    return mask


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one item in one epoch: a function of (seed, epoch, index) only."""
    return (seed * 1_000_003 + epoch * 104_729 + index * 7_919 + 97) % (2**63)


@dataclass(frozen=True)
class Batch:
    """One rank's share of global batch ``step``.

    ``penalised`` marks this rank's examples that get the penalty; ``global_size`` and
    ``global_penalised`` count the whole global batch (they scale the objective).
    """

    step: int
    x: Tensor
    y: Tensor
    penalised: Tensor
    global_size: int
    global_penalised: int


@dataclass(frozen=True)
class Plan:
    """The batch plan of one epoch for one rank (see the module docstring)."""

    n: int
    batch_size: int
    seed: int
    epoch: int
    world_size: int = 1
    rank: int = 0
    penalty_fraction: float = 1.0

    @property
    def steps(self) -> int:
        return global_batches(self.n, self.batch_size, self.world_size)

    def shards(self, start_step: int) -> Iterator[tuple[int, Tensor, Tensor, int, int]]:
        """``(step, local indices, local penalty mask, global size, global penalised)`` from a step."""
        perm = epoch_permutation(self.n, self.seed, self.epoch)
        for step in range(start_step, self.steps):
            idx = perm[step * self.batch_size : (step + 1) * self.batch_size]
            mask = penalty_mask(int(idx.numel()), self.penalty_fraction)
            local = torch.tensor_split(idx, self.world_size)[self.rank]
            local_mask = torch.tensor_split(mask, self.world_size)[self.rank]
            yield step, local, local_mask, int(idx.numel()), int(mask.sum())


class BatchSource(Protocol):
    """What the training loop consumes: the size of the training set and one epoch's batches."""

    def __len__(self) -> int: ...

    def batches(self, plan: Plan, start_step: int, device: torch.device) -> Iterator[Batch]: ...


class TensorBatches:
    """Batches indexed out of in-memory tensors (MNIST-sized data), already on ``device``."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def batches(self, plan: Plan, start_step: int, device: torch.device) -> Iterator[Batch]:
        for step, idx, mask, size, penalised in plan.shards(start_step):
            idx = idx.to(self.x.device)
            yield Batch(
                step, self.x[idx].to(device), self.y[idx].to(device), mask.to(device), size, penalised
            )


class SeededItems(torch.utils.data.Dataset[Any]):
    """``dataset[(index, seed)]`` → ``dataset[index]`` computed under ``torch.manual_seed(seed)``.

    The global RNG of the calling process is restored afterwards (``fork_rng``), so augmenting
    in the main process (``workers: 0``) does not disturb Dropout or attack randomness.
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]) -> Any:
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class _PlanSampler(torch.utils.data.Sampler[list[tuple[int, int]]]):
    def __init__(self, plan: Plan, start_step: int) -> None:
        self.plan, self.start_step = plan, start_step
        self.meta: dict[int, tuple[Tensor, int, int]] = {}

    def __len__(self) -> int:
        return max(self.plan.steps - self.start_step, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        p = self.plan
        for _, idx, _, _, _ in p.shards(self.start_step):
            yield [(int(i), item_seed(p.seed, p.epoch, int(i))) for i in idx]


def collate(items: Sequence[Any]) -> tuple[Tensor, Tensor, Tensor, list[str]]:
    """Stack ``(image, label)`` items: ``(x, y, kept, skipped paths)``; :class:`Skipped` items drop out."""
    kept = torch.tensor([not isinstance(it, Skipped) for it in items], dtype=torch.bool)
    good = [it for it in items if not isinstance(it, Skipped)]
    skipped = [it.path for it in items if isinstance(it, Skipped)]
    if not good:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), kept, skipped
    x = torch.stack([torch.as_tensor(im) for im, _ in good])
    y = torch.tensor([int(lab) for _, lab in good], dtype=torch.int64)
    return x, y, kept, skipped


class DatasetBatches:
    """Batches of a map-style dataset (items ``(image, label)``) through a ``DataLoader``.

    Args:
        dataset: e.g. :class:`salign.data.streaming.ImageFolderDataset` with a training transform.
        workers: ``DataLoader`` worker processes (0: decode in the training process).
        pin_memory: page-locked host batches (default: when CUDA is available).
        prefetch: batches each worker keeps ready.

    An item returned as :class:`~salign.data.streaming.Skipped` (an unreadable image with
    ``on_error="skip"``) is dropped from its batch; the objective keeps the planned global batch
    size as its denominator, so a skipped image just contributes nothing.
    """

    def __init__(
        self, dataset: Any, *, workers: int = 2, pin_memory: bool | None = None, prefetch: int = 2
    ) -> None:
        self.dataset = dataset
        self.workers = workers
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.prefetch = prefetch
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.dataset)

    def loader(self, plan: Plan, start_step: int) -> torch.utils.data.DataLoader[Any]:
        return torch.utils.data.DataLoader(
            SeededItems(self.dataset),
            batch_sampler=_PlanSampler(plan, start_step),
            num_workers=self.workers,
            pin_memory=self.pin_memory,
            collate_fn=collate,
            prefetch_factor=self.prefetch if self.workers > 0 else None,
        )

    def batches(self, plan: Plan, start_step: int, device: torch.device) -> Iterator[Batch]:
        shards = plan.shards(start_step)
        for (x, y, kept, skipped), (step, _, mask, size, penalised) in zip(
            self.loader(plan, start_step), shards, strict=True
        ):
            self.skipped += skipped
            if not bool(kept.all()):
                mask = mask[kept]
            nb = self.pin_memory
            yield Batch(step, x.to(device, non_blocking=nb), y.to(device, non_blocking=nb), mask.to(device),
                        size, penalised)  # fmt: skip


def evaluation_batches(
    dataset: Any, *, batch_size: int, world_size: int = 1, rank: int = 0, workers: int = 0
) -> Iterator[tuple[Tensor, Tensor]]:
    """This rank's contiguous shard of a dataset in order, as ``(x, y)`` batches (skips dropped)."""
    indices = torch.tensor_split(torch.arange(len(dataset)), world_size)[rank].tolist()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=collate,
    )
    for x, y, _, skipped in loader:
        for path in skipped:
            log.warning("validation: skipped unreadable image %s", path)
        if y.numel():
            yield x, y

"""Helpers for the training tests: tiny data, a slow model for kill tests, DDP workers."""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from salign.models.registry import MODELS
from salign.training.distributed import leave_process_group


def tiny_data(n_train: int = 96, n_val: int = 32, *, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """4-class 1×6×6 images in [0, 1] whose class depends on the mean and one pixel."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_train + n_val, 1, 6, 6, generator=g)
    y = (x.mean((1, 2, 3)) > 0.5).long() + 2 * (x[:, 0, 0, 0] > 0.5).long()
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def tiny_config(**over: object) -> dict:
    cfg: dict = {
        "model": {"name": "relu_mlp", "kwargs": {"input_shape": [1, 6, 6], "hidden": [12], "num_classes": 4}},
        "epochs": 2,
        "batch_size": 16,
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        "regularizer": {"lambda": 0.5},
        "tensorboard": False,
        "quiet": True,
        "num_threads": 1,
    }
    cfg.update(over)
    return cfg


class SlowMLP(nn.Module):
    """A small dropout MLP that sleeps in forward, so a test can kill it mid-epoch."""

    def __init__(self, delay: float = 0.02) -> None:
        super().__init__()
        self.delay = delay
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(36, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4)
        )

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(self.delay)
        return self.net(x)


PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def photo_tree(root: Path, copies: int = 4) -> Path:
    """A 3-class ImageFolder of real skimage photos (random 48-96 px crops of each, saved as PNG)."""
    import numpy as np
    from PIL import Image
    from skimage import data as skimage_data

    rng = np.random.default_rng(0)
    for split, n in (("train", copies), ("test", 2)):
        for k, name in enumerate(PHOTOS):
            image = getattr(skimage_data, name)()
            image = np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image
            folder = root / split / f"class{k % 3}"
            folder.mkdir(parents=True, exist_ok=True)
            for c in range(n):
                s = int(rng.integers(48, 96))
                top, left = (int(rng.integers(0, image.shape[d] - s)) for d in (0, 1))
                Image.fromarray(image[top : top + s, left : left + s]).save(folder / f"{name}-{c}.png")
    return root


def register_slow() -> None:
    """Add SlowMLP to the model registry: for the kill test's subprocess only; tests in this process
    use ``monkeypatch.setitem(MODELS, "slow_mlp_test", SlowMLP)`` so the registry is restored."""
    MODELS["slow_mlp_test"] = SlowMLP


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, then the previous count (it is process-global)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def slow_config() -> dict:
    return tiny_config(
        model={"name": "slow_mlp_test", "kwargs": {"delay": 0.02}},
        epochs=2,
        batch_size=8,
        checkpoint_every_steps=3,
        regularizer={"lambda": 0.3},
    )


@contextlib.contextmanager
def gloo_rank(rank: int, world: int, port: int) -> Iterator[None]:
    """Join a gloo process group on localhost as ``rank`` of ``world`` (one thread), and leave it."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world),
         "LOCAL_RANK": str(rank)}
    )  # fmt: skip
    faulthandler.enable()  # a rank that aborts in C++ still prints where its Python was
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        yield
    finally:
        leave_process_group()


def ddp_worker(rank: int, world: int, port: int, cfg: dict, run_dirs: list[str]) -> None:
    """One rank of a gloo job: trains every run dir in ``run_dirs`` with ``cfg`` variants."""
    from salign.training import train

    with gloo_rank(rank, world, port):
        for run_dir, variant in zip(run_dirs, cfg["variants"], strict=True):
            train(tiny_config(**variant), run_dir=run_dir, data=tiny_data())


def ddp_config_worker(rank: int, world: int, port: int, cfg: dict, run_dir: str) -> None:
    """One rank of a gloo job training one config dict (e.g. a streamed ImageFolder)."""
    from salign.training import train

    with gloo_rank(rank, world, port):
        train(cfg, run_dir=run_dir)


def leave_alone_worker(rank: int, world: int, port: int, out: str) -> None:
    """Rank 1 leaves as a failing rank does (no wait); rank 0 waits for it on the store, gives
    up after 1 s and records that it left."""
    import datetime

    import torch.distributed as dist

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    dist.init_process_group("gloo", rank=rank, world_size=world)
    if rank == 1:
        leave_process_group(wait=False)
        return
    leave_process_group(timeout=datetime.timedelta(seconds=1))
    Path(out).write_text(str(dist.is_initialized()))


if __name__ == "__main__":  # used by the kill-and-resume test: python _training_helpers.py RUN_DIR
    from salign.training import train

    torch.set_num_threads(1)
    register_slow()
    train(slow_config(), run_dir=Path(sys.argv[1]), data=tiny_data())

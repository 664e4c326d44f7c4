"""DDP with 2 gloo ranks on CPU equals one process on the combined batch (double backward included)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from _training_helpers import (
    ddp_config_worker,
    ddp_worker,
    leave_alone_worker,
    num_threads,
    photo_tree,
    tiny_config,
    tiny_data,
)
from salign import models
from salign.training import train

VARIANTS = [
    # double backprop, uneven shards (15 = 8 + 7), the authors' batch-mean scaling
    {"batch_size": 15, "regularizer": {"lambda": 2.0, "scaling": "batch_mean"}},
    # finite difference on half of each batch (two forwards per step: one through DDP). h = 0.1
    # because (s(x+hd) - s(x))/h amplifies float32 round-off (which differs between a batch of
    # 16 and two shards of 8) by 1/h: at h = 1e-2 the weights differ by ~5e-5 for that reason.
    {"regularizer": {"lambda": 1.0, "method": "finite_difference", "penalty_fraction": 0.5, "h": 0.1}},
    # binarized target with Adam
    {"optimizer": {"name": "adam", "lr": 0.01}, "regularizer": {"lambda": 1.0, "target": "binarized"}},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_match_one_process(tmp_path: Path) -> None:
    dirs = [str(tmp_path / f"ddp{i}") for i in range(len(VARIANTS))]
    mp.start_processes(
        ddp_worker,
        args=(2, _free_port(), {"variants": VARIANTS}, dirs),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    with num_threads(1):  # the trainer sets num_threads=1 too; restored afterwards
        for i, variant in enumerate(VARIANTS):
            single = train(tiny_config(**variant), run_dir=tmp_path / f"single{i}", data=tiny_data())
            want = models.load(single).state_dict()
            got = models.load(Path(dirs[i]) / "checkpoint.safetensors").state_dict()
            for key in want:
                torch.testing.assert_close(
                    got[key], want[key], rtol=1e-4, atol=1e-5, msg=f"variant {i}: {key}"
                )
            # rank 0 alone wrote the log, and its epoch metrics (summed over ranks) match too
            ddp_rows = (Path(dirs[i]) / "train_log.csv").read_text().splitlines()[1:]
            one_rows = (tmp_path / f"single{i}" / "train_log.csv").read_text().splitlines()[1:]
            for a, b in zip(ddp_rows, one_rows, strict=True):
                va, vb = [float(v) for v in a.split(",")[:-2]], [float(v) for v in b.split(",")[:-2]]
                assert va == pytest.approx(vb, rel=1e-4, abs=1e-6)


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_a_rank_that_leaves_on_an_error_does_not_keep_the_others(tmp_path: Path) -> None:
    """Ranks leave the group together on the store (not right after a gloo barrier, which can
    cut a peer's last message); a failed rank leaves at once and the waiting one gives up."""
    out = tmp_path / "rank0.txt"
    mp.start_processes(
        leave_alone_worker, args=(2, _free_port(), str(out)), nprocs=2, join=True, start_method="spawn"
    )
    assert out.read_text() == "False"  # rank 0 destroyed its group after the timeout


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_on_a_streamed_imagefolder_match_one_process(tmp_path: Path) -> None:
    """The streamed path: real photos decoded per item with the paper's seeded augmentation and
    loader workers; each rank takes its half of every global batch, so 2 ranks equal 1 process.
    (A BatchNorm-free net: BatchNorm normalises each rank's shard by its own statistics.)"""
    pytest.importorskip("torchvision")
    pytest.importorskip("skimage.data")
    from test_training_stream import stream_config

    tree = photo_tree(tmp_path / "photos")
    model = {"name": "relu_cnn", "kwargs": {"in_channels": 3, "channels": [4, 8], "num_classes": 3,
                                             "input_size": 24}}  # fmt: skip
    cfg = stream_config(tree, model=model, **{"data.stream.workers": 0, "optimizer.lr": 0.05})
    mp.start_processes(
        ddp_config_worker,
        args=(2, _free_port(), cfg, str(tmp_path / "ddp")),
        nprocs=2,
        join=True,
        start_method="spawn",
    )
    with num_threads(1):
        single = train(cfg, run_dir=tmp_path / "single")
    want = models.load(single).state_dict()
    got = models.load(tmp_path / "ddp" / "checkpoint.safetensors").state_dict()
    torch.manual_seed(0)  # the trainer's initial weights (seed 0)
    init = models.build("relu_cnn", **model["kwargs"]).state_dict()
    assert all(not torch.equal(want[k], init[k]) for k in want)  # it did train
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-4, atol=1e-5, msg=key)

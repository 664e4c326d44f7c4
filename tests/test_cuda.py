"""CUDA checks (``-m cuda``): the device-agnostic core and the trainer give the CPU's answers on a GPU.

Skipped without CUDA; ``benchmarks/gpu_check.py`` runs them on a GPU machine. Each compares
the GPU result with the same computation on the CPU (fp32; TF32 is off for the comparison), so
a device-dependent bug shows as a mismatch, not just as a crash.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import salign
from salign import models
from salign.training import train
from salign.training.penalty import penalty_terms
from salign.training.step import autocast

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]

CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_tf32() -> object:
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _smallnet_batch(n: int = 32) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    return models.build("smallnet").eval(), torch.rand(n, 1, 28, 28), torch.randint(0, 10, (n,))


def test_analyze_on_cuda_matches_cpu() -> None:
    model, x, y = _smallnet_batch()
    cpu = salign.analyze(model, x, y)
    gpu = salign.analyze(model.to(CUDA), x.to(CUDA), y.to(CUDA))
    assert gpu.pred.device.type == "cuda"
    assert torch.equal(gpu.pred.cpu(), cpu.pred)
    torch.testing.assert_close(
        gpu.linearized_robustness.cpu(), cpu.linearized_robustness, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(gpu.alignment_binarized.cpu(), cpu.alignment_binarized, rtol=1e-4, atol=1e-6)


def test_apgd_and_the_linf_ensemble_run_on_cuda() -> None:
    """APGD's random start comes from a generator on the input's device; the L∞ ensemble with
    its probes keeps every tensor there and finds verified points on every sample, at medians
    within 2% of the CPU's (the random starts differ between devices)."""
    model, x, _ = _smallnet_batch(16)
    cpu = salign.robustness(model, x, norm="inf", budget="fast", steps=20, quiet=True)
    gpu_model, xg = model.to(CUDA), x.to(CUDA)
    gpu = salign.robustness(gpu_model, xg, norm="inf", budget="fast", steps=20, quiet=True)
    assert gpu.distance.device.type == "cuda" and bool(gpu.success.all())
    assert "apgd_dlr" in gpu.per_attack
    assert abs(float(gpu.distance.median()) / float(cpu.distance.median()) - 1) < 0.02
    eps = float(cpu.distance.median())
    single = salign.attacks.apgd(gpu_model, xg, norm="inf", eps=eps, loss="dlr", warn=False)
    assert single.adv.device.type == "cuda" and int(single.success.sum()) >= len(x) // 2  # CPU: all 16


def test_deepfool_on_cuda_matches_cpu() -> None:
    model, x, _ = _smallnet_batch(16)
    cpu = salign.attacks.deepfool(model, x, model(x).argmax(1))
    model = model.to(CUDA)
    xg = x.to(CUDA)
    gpu = salign.attacks.deepfool(model, xg, model(xg).argmax(1))
    assert bool(gpu.success.all()) and gpu.adv.device.type == "cuda"
    torch.testing.assert_close(gpu.distance.cpu(), cpu.distance, rtol=1e-3, atol=1e-5)


def test_penalty_on_cuda_matches_cpu_and_bf16_is_close() -> None:
    model, x, y = _smallnet_batch()
    model.train()
    ref = penalty_terms(model, x, y).penalty.mean()
    model, x, y = model.to(CUDA), x.to(CUDA), y.to(CUDA)
    fp32 = penalty_terms(model, x, y).penalty.mean()
    with autocast(CUDA, "bf16"):
        bf16 = penalty_terms(model, x, y).penalty.float().mean()
    torch.testing.assert_close(fp32.cpu(), ref, rtol=1e-4, atol=0)
    assert abs(float(bf16 / fp32) - 1) < 0.05  # docs/benchmarks/imagenet.md: ~1e-2 on CPU


def test_train_on_cuda_bf16_channels_last(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(320, 1, 28, 28, generator=g), torch.randint(0, 10, (320,), generator=g)
    cfg = {
        "model": {"name": "smallnet"},
        "regularizer": {"lambda": 0.1},
        "epochs": 1,
        "batch_size": 32,
        "precision": "bf16",
        "channels_last": True,
        "device": "cuda",
        "tensorboard": False,
        "quiet": True,
    }
    path = train(cfg, run_dir=tmp_path, data=(x[:256], y[:256], x[256:], y[256:]))
    log = (tmp_path / "train_log.csv").read_text(encoding="utf-8")
    assert path.is_file() and "nan" not in log.lower()


def test_streaming_batches_reach_cuda_pinned(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from salign.data.phototree import write_photo_tree
    from salign.data.streaming import ImageFolderDataset, train_transform
    from salign.training.batches import DatasetBatches, Plan

    root = write_photo_tree(tmp_path, train_per_class=4, classes=2, long_side=(64, 96))
    ds = ImageFolderDataset(root, "train", transform=train_transform("standard", crop=32))
    batches = list(DatasetBatches(ds, workers=2, pin_memory=True).batches(Plan(len(ds), 4, 0, 0), 0, CUDA))
    assert len(batches) == 2 and all(
        b.x.device.type == "cuda" and b.x.shape == (4, 3, 32, 32) for b in batches
    )
    # the same plan on the CPU gives the same pixels (the augmentation is seeded per item)
    cpu = list(DatasetBatches(ds, workers=0).batches(Plan(len(ds), 4, 0, 0), 0, torch.device("cpu")))
    torch.testing.assert_close(batches[0].x.cpu(), cpu[0].x)
    assert F.mse_loss(batches[1].x.cpu(), cpu[1].x) == 0

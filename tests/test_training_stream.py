"""Streaming ImageFolder training: real photos on disk, seeded augmentation, workers, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from _training_helpers import PHOTOS, photo_tree
from salign import models
from salign.data.streaming import ImageFolderDataset, eval_transform, train_transform
from salign.errors import ConfigError, DataError, MissingFileError, TrainingError
from salign.training import train
from salign.training import trainer as trainer_module
from salign.training.batches import DatasetBatches, Plan

pytest.importorskip("torchvision")
skimage_data = pytest.importorskip("skimage.data")


def stream_config(root: Path, **over: object) -> dict:
    cfg: dict = {
        "model": {"name": "torchvision/resnet18", "kwargs": {"num_classes": 3, "normalization": None}},
        "data": {
            "name": "imagefolder",
            "data_dir": str(root),
            "val_subset": 6,
            "stream": {
                "augment": "paper",
                "crop": 24,
                "rescale": [26, 40],
                "eval_resize": 24,
                "eval_crop": 24,
                "workers": 0,
            },
        },
        "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "regularizer": {"lambda": 0.1},
        "epochs": 2,
        "batch_size": 6,
        "tensorboard": False,
        "quiet": True,
        "num_threads": 1,
    }
    for key, value in over.items():
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return cfg


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photo_tree(tmp_path_factory.mktemp("photos"))


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return models.load(path).state_dict()


def test_augmentation_depends_on_the_seed_only_not_on_workers(tree: Path) -> None:
    ds = ImageFolderDataset(tree, "train", transform=train_transform("paper", crop=24, rescale=(26, 40)))
    plan = Plan(len(ds), 6, seed=3, epoch=1)
    by_workers = []
    for workers in (0, 2):
        batches = list(DatasetBatches(ds, workers=workers).batches(plan, 1, torch.device("cpu")))
        by_workers.append(torch.cat([b.x for b in batches]))
        assert [b.step for b in batches] == list(range(1, plan.steps))
    assert torch.equal(by_workers[0], by_workers[1])
    assert by_workers[0].shape[1:] == (3, 24, 24)
    assert float(by_workers[0].min()) >= 0.0 and float(by_workers[0].max()) <= 1.0
    other = list(
        DatasetBatches(ds, workers=0).batches(Plan(len(ds), 6, seed=3, epoch=2), 1, torch.device("cpu"))
    )
    assert not torch.equal(torch.cat([b.x for b in other]), by_workers[0])  # a new epoch, new crops


def test_killed_mid_epoch_and_resumed_is_bit_identical(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = stream_config(tree, checkpoint_every_steps=1)
    reference = train(cfg, run_dir=tmp_path / "ref")
    original = trainer_module._Loop.step
    calls = {"n": 0}

    def dies_at_step_5(self: trainer_module._Loop, batch: object) -> object:
        calls["n"] += 1
        if calls["n"] == 5:  # mid-epoch 2 (3 steps per epoch)
            raise KeyboardInterrupt
        return original(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(trainer_module._Loop, "step", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run_dir=tmp_path / "run")
    monkeypatch.setattr(trainer_module._Loop, "step", original)
    resumed = train(cfg, run_dir=tmp_path / "run")
    ref, got = _weights(reference), _weights(resumed)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_workers_do_not_change_the_trained_weights(tree: Path, tmp_path: Path) -> None:
    a = train(stream_config(tree, epochs=1), run_dir=tmp_path / "w0")
    b = train(stream_config(tree, epochs=1, **{"data.stream.workers": 2}), run_dir=tmp_path / "w2")
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_freeze_batchnorm_keeps_the_running_statistics(tree: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    before = models.build("torchvision/resnet18", num_classes=3, normalization=None).state_dict()
    after = _weights(train(stream_config(tree, epochs=1, freeze_batchnorm=True), run_dir=tmp_path / "f"))
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    fc = next(k for k in before if k.endswith("fc.weight"))
    assert not torch.equal(before[fc], after[fc])


def test_unreadable_image_raises_naming_it_or_is_skipped(tree: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(tree, root)
    bad = root / "train" / "class0" / "zz-broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="zz-broken.png"):
        train(stream_config(root, epochs=1), run_dir=tmp_path / "r1")
    skip = stream_config(
        root, epochs=1, batch_size=5, **{"data.stream.on_error": "skip", "optimizer.lr": 1e-3}
    )
    path = train(skip, run_dir=tmp_path / "r2")
    assert path.is_file()


def test_bad_folders_and_class_counts_are_one_line_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="not found"):
        train(stream_config(tmp_path / "nowhere"), run_dir=tmp_path / "a")
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no class sub-directories"):
        train(stream_config(tmp_path / "empty"), run_dir=tmp_path / "b")
    with pytest.raises(Exception, match="label"):  # 3 classes on disk, a 2-class head
        train(
            stream_config(tree, **{"model.kwargs": {"num_classes": 2, "normalization": None}}),
            run_dir=tmp_path / "c",
        )
    with pytest.raises(ConfigError, match="imagefolder"):
        train(stream_config(tree, **{"data.name": "mnist"}), run_dir=tmp_path / "d")


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tree: Path, tmp_path: Path) -> None:
    """lr 1e30: step 1 is finite and checkpointed, step 2 overflows; training stops with one line
    naming the kept state, which holds the finite weights after step 1 (no final checkpoint)."""
    from salign.training.state import load_state

    cfg = stream_config(tree, epochs=3, checkpoint_every_steps=1, **{"optimizer.lr": 1e30})
    with pytest.raises(TrainingError, match=r"non-finite loss at epoch 1, step 2") as info:
        train(cfg, run_dir=tmp_path / "nan")
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "nan" / "state.safetensors") in message
    kept = load_state(tmp_path / "nan" / "state.safetensors")
    assert (kept.state.epoch, kept.state.step, kept.state.global_step) == (0, 1, 1)
    weights = [v for k, v in kept.tensors.items() if k.startswith("model.") and v.is_floating_point()]
    assert weights and all(bool(torch.isfinite(v).all()) for v in weights)
    assert not (tmp_path / "nan" / "checkpoint.safetensors").exists()


def test_eval_transform_is_resize_then_centre_crop(tree: Path) -> None:
    ds = ImageFolderDataset(tree, "test", transform=eval_transform(resize=32, crop=24))
    x, y = ds[0]  # type: ignore[misc]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and 0 <= y < 3
    assert len(ds) == 2 * len(PHOTOS) and ds.classes == ["class0", "class1", "class2"]

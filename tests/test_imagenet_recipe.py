"""The paper's ImageNet recipe (configs/imagenet-paper.yaml) run for real, at small scale.

The shipped config is loaded as a user would, only its paths, sizes and lengths overridden, and
run end to end (train → evaluate → report) on an ImageFolder tree of real scikit-image photos,
fine-tuning a 1000-class torchvision network from a weights file saved by plain torchvision code.
Also here: the recovery paths at scale that the config relies on (an out-of-memory error during
evaluation halves the batch and carries on; a rank killed under torchrun resumes), and the one-line
errors of bad input through ``salign run``.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml

from _training_helpers import photo_tree
from salign import _faults, models
from salign.cli import main as cli_main
from salign.experiments import pipeline as pipeline_mod
from salign.experiments.config import load_config
from salign.models.checkpoint import read_metadata
from salign.training.config import lr_at

tv = pytest.importorskip("torchvision", reason="needs the vision extra (torchvision 0.29 + torch 2.14)")
pytest.importorskip("skimage.data")

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "imagenet-paper.yaml"


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return photo_tree(tmp_path_factory.mktemp("photos"))


def torchvision_weights(path: Path, arch: str, num_classes: int = 1000) -> Path:
    """A state dict saved by plain torchvision code, as a user would bring it."""
    torch.manual_seed(0)
    torch.save(getattr(tv.models, arch)(num_classes=num_classes).state_dict(), path)
    return path


def tiny_recipe(root: Path, weights: Path, arch: str = "resnet18", **over: Any) -> dict[str, Any]:
    """configs/imagenet-paper.yaml with only paths, sizes and lengths changed (24-32 px, 1 epoch)."""
    data = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    data["dataset"].update(data_dir=str(root), options={"size": 32})
    data["model"].update(name=f"torchvision/{arch}", weights=str(weights))
    tr = data["training"]
    tr.update(
        epochs=1, batch_size=6, checkpoint_every_steps=None, tensorboard=False, num_threads=1, quiet=True
    )
    tr["data"]["val_subset"] = 6
    tr["data"]["stream"].update(crop=24, rescale=[26, 40], eval_resize=24, eval_crop=24, workers=0)
    data["sweep"]["lambdas"] = (
        data["sweep"]["lambdas"][:1] + data["sweep"]["lambdas"][3:4]
    )  # 0 and the paper's λ
    data["evaluation"].update(n=4, chunk_size=2, batch_size=2, gallery=2)
    data["attacks"].update(names=["ddn"], budget="fast", steps=3, batch_size=2)
    data["report"].update(n_bootstrap=100, figures=False)
    data["num_threads"] = 1
    for dotted, value in over.items():
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return data


def write_config(data: dict[str, Any], path: Path) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        cli_main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# 1. the config is the paper's recipe


def test_imagenet_paper_config_is_the_papers_recipe() -> None:
    text = CONFIG.read_text(encoding="utf-8")
    assert "resnet18" not in text and "stand-in" not in text
    assert "torchrun --nproc_per_node=8 -m salign.cli run configs/imagenet-paper.yaml" in text
    assert text.count("# EDIT") >= 3  # data root, weights file, batch for the GPU count

    cfg = load_config(CONFIG)
    assert cfg.model.name == "torchvision/resnet50" and cfg.model.weights
    assert cfg.model.kwargs == {"num_classes": 1000, "normalization": "imagenet"}
    assert cfg.dataset.name == "imagefolder" and cfg.dataset.options == {"size": 256}
    t = cfg.train_config(6.0e-4)
    assert t.model.name == "torchvision/resnet50" and t.model.weights == cfg.model.weights  # fine-tuning
    assert t.epochs == 20 and t.batch_size == 16 * 8
    o = t.optimizer
    assert (o.name, o.lr, o.momentum, o.weight_decay) == ("sgd", 1e-5, 0.9, 1e-4)
    assert [lr_at(t, e) for e in (0, 14, 15, 19)] == pytest.approx([1e-5, 1e-5, 1e-6, 1e-6])
    r = t.regularizer
    assert (r.method, r.target, r.scaling, r.batchnorm) == ("double_backprop", "loss", "per_example", "batch")
    st = t.data.stream
    assert st is not None and t.data.name == "imagefolder"
    assert (st.augment, st.crop, st.rescale, st.hue) == ("paper", 256, (258, 512), 0.06)
    assert (st.eval_resize, st.eval_crop) == (256, 256) and st.workers >= 2
    lams = cfg.lambdas()
    positive = [lam for lam in lams if lam]
    assert lams[0] == 0 and len(positive) >= 4
    ratios = [b / a for a, b in itertools.pairwise(positive)]  # type: ignore[operator]
    assert ratios == pytest.approx([10.0] * len(ratios))  # a log grid
    assert any(lam == pytest.approx(1e4 / (16**2 * 255**2), rel=0.01) for lam in positive)  # the authors' λ
    ev = cfg.evaluation
    assert ev.n >= 500 and ev.rival == "nearest" and ev.candidates == 10 and ev.accuracy_n is None
    assert cfg.attacks.batch_size is not None and cfg.attacks.budget == "standard"


def test_imagenet_paper_config_runs_on_real_photos(tree: Path, tmp_path: Path, capsys: Any) -> None:
    """The recipe end to end, small: fine-tune a 1000-class torchvision net from a file, evaluate, report."""
    weights = torchvision_weights(tmp_path / "resnet18.pth", "resnet18")
    recipe = tiny_recipe(tree, weights, **{"evaluation.n": 2, "evaluation.chunk_size": 2})
    cfg = write_config(recipe, tmp_path / "recipe.yaml")
    out = tmp_path / "run"
    code, err = run_cli(["run", str(cfg), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    summary = pd.read_csv(out / "summary.csv", dtype={"model": str})
    assert {"0", "0.0006"} <= set(summary["model"])
    subset = [
        line for line in (out / "eval" / "subset.txt").read_text().splitlines() if not line.startswith("#")
    ]
    assert len(subset) == 2
    for tag in ("0", "0.0006"):
        table = pd.read_csv(out / "eval" / f"{tag}.csv")
        assert len(table) == 2 and table["pred"].between(0, 999).all()
        # the subset file names the evaluated images, in order, with their labels
        assert [int(line.rsplit(" ", 1)[1]) for line in subset] == table["label"].tolist()
        assert (table["rival"] != table["pred"]).all() and table["rho"].gt(0).all()
        meta = read_metadata(out / "models" / tag / "checkpoint.safetensors")
        assert '"sha256"' in meta["salign_model"]  # provenance of the pretrained weights
    # fine-tuned FROM the file: lr 1e-5 for 4 steps moves the convolutions by far less than
    # the distance between the file and a fresh initialisation
    start = torch.load(weights, weights_only=True)
    tuned = models.load(out / "models" / "0" / "checkpoint.safetensors")[1].state_dict()
    torch.manual_seed(1)
    fresh = tv.models.resnet18().state_dict()
    key = "layer1.0.conv1.weight"
    assert (tuned[key] - start[key]).abs().max() < 1e-3 < (fresh[key] - start[key]).abs().max()


@pytest.mark.slow
def test_imagenet_paper_config_runs_resnet50_end_to_end(tree: Path, tmp_path: Path, capsys: Any) -> None:
    """As above with the recipe's own network, torchvision's ResNet-50 (at 24-32 px)."""
    weights = torchvision_weights(tmp_path / "resnet50.pth", "resnet50")
    cfg = write_config(tiny_recipe(tree, weights, arch="resnet50"), tmp_path / "recipe.yaml")
    out = tmp_path / "run"
    code, err = run_cli(["run", str(cfg), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    summary = pd.read_csv(out / "summary.csv", dtype={"model": str})
    assert {"0", "0.0006"} <= set(summary["model"]) and (out / "report.html").is_file()
    for tag in ("0", "0.0006"):
        table = pd.read_csv(out / "eval" / f"{tag}.csv")
        assert len(table) == 4 and table["rho"].notna().all()
        model = models.load(out / "models" / tag / "checkpoint.safetensors")
        assert sum(p.numel() for p in model.parameters()) == 25_557_032


# --------------------------------------------------------------------------------------------
# 5. evaluation at K = 1000 and 6b. out of memory during evaluation


def test_thousand_classes_bounded_batches_and_oom_halving(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """K = 1000: j* among the top logits, every forward of the evaluation at most the configured
    batch, fp32; an injected out-of-memory error in the second chunk halves the batches, is
    logged, and the evaluation carries on with the same per-sample values as analyze() in one go."""
    weights = torchvision_weights(tmp_path / "resnet18.pth", "resnet18")
    base = tiny_recipe(tree, weights, **{"attacks.steps": 3})
    base.pop("training"), base.pop("sweep")  # evaluate the pretrained model as is
    seen: list[tuple[int, int]] = []  # (chunk, batch) of every forward inside evaluate_chunk
    real_chunk = pipeline_mod.evaluate_chunk

    def recording_chunk(model: torch.nn.Module, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        assert all(p.dtype == torch.float32 for p in model.parameters()) and x.dtype == torch.float32
        chunk = len({c for c, _ in seen})
        hook = model.register_forward_pre_hook(
            lambda _m, inputs: seen.append((chunk, int(inputs[0].shape[0])))
        )
        try:
            return real_chunk(model, x, *args, **kwargs)
        finally:
            hook.remove()

    monkeypatch.setattr(pipeline_mod, "evaluate_chunk", recording_chunk)
    _faults.reset()
    monkeypatch.setenv("SALIGN_FAULT", "oom:evaluate_chunk:2")  # the second chunk runs out of memory
    with caplog.at_level(logging.WARNING, logger="salign.experiments.pipeline"):
        pipeline_mod.run(base, out=tmp_path / "oom", quiet=True)
    assert "out of memory" in caplog.text and "analyze batch 1 and attack batch 1 (halved)" in caplog.text
    first = [b for c, b in seen if c == 0]
    after = [b for c, b in seen if c == 1]
    assert first and after and max(first) == 2 and max(after) == 1  # batch 2 as configured, then halved
    table = pd.read_csv(tmp_path / "oom" / "eval" / "pretrained.csv")
    assert len(table) == 4 and (table["rival"] != table["pred"]).all()

    # the same images in one batch, by analyze() directly: identical per-sample values
    import salign
    from salign.data.imagefolder import read_imagefolder

    x, y, _ = read_imagefolder(tree, "test", size=32, indices=torch.tensor(table["sample_id"].to_numpy()))
    model = models.load_spec("torchvision/resnet18", weights=weights)
    direct = salign.analyze(model, x, y, candidates=10).to_frame()
    assert table["pred"].tolist() == direct["pred"].tolist()
    assert table["rival"].tolist() == direct["rival"].tolist()
    for col in ("alignment_binarized", "linearized_robustness", "effective_bias"):
        torch.testing.assert_close(
            torch.tensor(table[col].to_numpy()), torch.tensor(direct[col].to_numpy(), dtype=torch.float64),
            rtol=1e-4, atol=1e-6,
        )  # fmt: skip


def test_oom_at_batch_one_is_a_one_line_error(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    weights = torchvision_weights(tmp_path / "resnet18.pth", "resnet18")
    base = tiny_recipe(tree, weights, **{"evaluation.batch_size": 1, "attacks.batch_size": 1})
    base.pop("training"), base.pop("sweep")
    _faults.reset()
    monkeypatch.setenv("SALIGN_FAULT", "oom:evaluate_chunk:1")
    code, err = run_cli(
        ["run", str(write_config(base, tmp_path / "c.yaml")), "--out", str(tmp_path / "r")], capsys
    )
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert "out of memory even one image at a time" in line and "samples 0-2" in line


# --------------------------------------------------------------------------------------------
# 7. bad input through `salign run`: one line each


def _bad_inputs(tree: Path, tmp_path: Path) -> dict[str, tuple[dict[str, Any], str]]:
    r18 = torchvision_weights(tmp_path / "resnet18.pth", "resnet18")
    r18_10 = torchvision_weights(tmp_path / "resnet18-10.pth", "resnet18", num_classes=10)
    empty = tmp_path / "empty"
    (empty / "train").mkdir(parents=True)
    (empty / "test").mkdir(parents=True)
    broken = tmp_path / "broken"
    if not broken.exists():
        import shutil

        shutil.copytree(tree, broken)
        (broken / "train" / "class1" / "zz-broken.png").write_bytes(b"not an image")
    return {
        "missing folder": (tiny_recipe(tmp_path / "nowhere", r18), "image folder not found"),
        "empty folder": (tiny_recipe(empty, r18), "no class sub-directories"),
        "unreadable image": (tiny_recipe(broken, r18), "zz-broken.png: cannot decode image"),
        "resnet18 weights for resnet50": (
            tiny_recipe(tree, r18, arch="resnet50"),
            "does not fit torchvision/resnet50 (num_classes=1000): missing: layer1.0.conv3.weight",
        ),
        "wrong num_classes": (tiny_recipe(tree, r18_10), "holds weights for 10 classes"),
        "class count mismatch": (
            tiny_recipe(tree, r18_10, **{"model.kwargs": {"num_classes": 2}}),
            "holds weights for 10 classes",
        ),
    }


def test_bad_input_is_one_line_each(tree: Path, tmp_path: Path, capsys: Any) -> None:
    for case, (data, expected) in _bad_inputs(tree, tmp_path).items():
        path = write_config(data, tmp_path / "bad.yaml")
        code, err = run_cli(
            ["run", str(path), "--out", str(tmp_path / "runs" / case.replace(" ", "-"))], capsys
        )
        lines = [line for line in err.strip().splitlines() if line]
        assert code == 2 and len(lines) == 1, (case, err)
        assert expected in lines[0], (case, lines[0])


def test_class_count_mismatch_names_the_labels(tree: Path, tmp_path: Path, capsys: Any) -> None:
    """A 2-class head for a 3-class tree (no weights file): named as a label problem, one line."""
    data = tiny_recipe(
        tree, tmp_path / "unused", **{"model.kwargs": {"num_classes": 2, "normalization": None}}
    )
    data["model"].pop("weights")
    code, err = run_cli(
        ["run", str(write_config(data, tmp_path / "c.yaml")), "--out", str(tmp_path / "r")], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "label" in lines[0] and "2" in lines[0], err


# --------------------------------------------------------------------------------------------
# 3 / 6a. torchrun: a killed rank resumes from the last checkpoint with nothing lost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(config: Path, out: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
        "-m", "salign.cli", "train", str(config), "--out", str(out), "--quiet",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:  # also end the workers, which outlive a killed agent
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun did not finish in 600 s: {err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_rank_killed_mid_epoch_restarts_and_loses_nothing(tree: Path, tmp_path: Path) -> None:
    """Rank 1 is SIGKILLed at global step 6 (mid-epoch 2 of 4 steps each); torchrun --max-restarts=1
    restarts both ranks, they resume from the last checkpoint (step 5, or 4 if rank 0 was stopped
    while writing it: writes are atomic), and the final weights equal an uninterrupted 2-rank run
    bit for bit."""
    from test_training_stream import stream_config

    model = {"name": "relu_cnn", "kwargs": {"in_channels": 3, "channels": [4, 8], "num_classes": 3,
                                             "input_size": 24}}  # fmt: skip
    cfg = stream_config(tree, model=model, checkpoint_every_steps=1, **{"optimizer.lr": 0.05})
    config = write_config(cfg, tmp_path / "train.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SALIGN_QUIET": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    env.pop("SALIGN_FAULT", None)
    ref = _torchrun(config, tmp_path / "ref", env)
    assert ref.returncode == 0, ref.stderr[-3000:]
    marker = tmp_path / "fault-fired"
    faulty = _torchrun(
        config,
        tmp_path / "run",
        {**env, "SALIGN_FAULT": "kill:train_step:6:rank=1", "SALIGN_FAULT_ONCE": str(marker)},
    )
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    assert marker.is_file()  # the fault did fire
    assert "failed (exitcode: -9) local_rank: 1" in faulty.stderr  # torchrun saw rank 1 SIGKILLed
    want = models.load(tmp_path / "ref" / "checkpoint.safetensors").state_dict()
    got = models.load(tmp_path / "run" / "checkpoint.safetensors").state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)

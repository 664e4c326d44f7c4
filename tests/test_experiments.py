"""Experiments: config schema and errors, the pipeline end to end on a tiny synthetic study,
resuming after a simulated kill, --force, re-rendering, sharding, and the shipped configs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import salign
from _study_helpers import TINY, with_changes
from salign.cli import main as cli_main
from salign.errors import ConfigError, MissingFileError
from salign.experiments import (
    config_from_dict,
    evaluate_chunk,
    evaluation_subset,
    gallery_positions,
    load_config,
    packaged_config,
    run,
    shard_bounds,
    shard_items,
)
from salign.experiments import pipeline as pipeline_mod

REPO = Path(__file__).resolve().parent.parent


def _tiny(**changes: Any) -> dict[str, Any]:
    return with_changes(TINY, **changes)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny study, shared read-only by several tests (copy it to mutate)."""
    out = tmp_path_factory.mktemp("tiny") / "run"
    run(_tiny(**{"report.figures": True}), out=out, quiet=True)
    return out


# ---------------------------------------------------------------------------------------------
# config


def test_unknown_keys_are_named() -> None:
    with pytest.raises(ConfigError, match="unknown key 'evaluation.samples'"):
        config_from_dict(_tiny(**{"evaluation.samples": 5}))
    with pytest.raises(ConfigError, match="unknown key 'training.optimiser'"):
        config_from_dict(_tiny(**{"training.optimiser": {}}))
    with pytest.raises(ConfigError, match="unknown key 'colour'"):
        config_from_dict(_tiny(colour="red"))
    with pytest.raises(ConfigError, match="missing required key 'name'"):
        config_from_dict({"dataset": {"name": "mnist"}})


def test_inconsistent_configs_are_explained() -> None:
    cfg = _tiny()
    del cfg["sweep"]
    with pytest.raises(ConfigError, match="needs a 'sweep'"):
        config_from_dict(cfg)
    with pytest.raises(ConfigError, match="sweep.lambdas: .*>= 0"):
        config_from_dict(_tiny(**{"sweep.lambdas": [0, -1]}))
    with pytest.raises(ConfigError, match="distinct"):
        config_from_dict(_tiny(**{"sweep.lambdas": [1, 1.0]}))
    with pytest.raises(ConfigError, match=r"training\.model"):
        config_from_dict(_tiny(**{"training.model": {"name": "linear"}}))
    with pytest.raises(ConfigError, match=r"sweep\.lambdas.*not in 'training\.regularizer\.lambda'"):
        config_from_dict(_tiny(**{"training.regularizer": {"lambda": 3}}))
    with pytest.raises(ConfigError, match="unknown attack"):
        config_from_dict(_tiny(**{"attacks.names": ["pgd"]}))
    with pytest.raises(ConfigError, match="name"):
        config_from_dict(_tiny(name="../escape"))


def test_yaml_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ndataset: {name: mnist\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    with pytest.raises(MissingFileError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(listy)


def test_train_config_takes_model_data_lambda_and_seed_from_the_study() -> None:
    cfg = config_from_dict(_tiny(seed=7, **{"sweep.lambdas": [10, 0, 0.5]}))
    assert cfg.lambdas() == [0, 0.5, 10]
    tc = cfg.train_config(0.5)
    assert tc.regularizer.lambda_ == 0.5
    assert tc.model.name == "relu_mlp" and tc.model.kwargs["hidden"] == [16]
    assert tc.data.name == "synthetic-gaussian" and tc.data.val_subset == 64
    assert tc.seed == 7 and tc.epochs == 1
    # A resolved run config (with its versions/resolved records) loads back to the same config.
    record = {**cfg.to_dict(), "versions": {"torch": "x"}, "resolved": {"device": "cpu"}}
    assert config_from_dict(record) == cfg


def test_evaluation_subset_is_seeded_and_shared() -> None:
    a = evaluation_subset(1000, 50, seed=3)
    assert torch.equal(a, evaluation_subset(1000, 50, seed=3))
    assert not torch.equal(a, evaluation_subset(1000, 50, seed=4))
    assert len(set(a.tolist())) == 50 and torch.equal(a, a.sort().values)
    assert torch.equal(evaluation_subset(10, 50, seed=0), torch.arange(10))
    assert gallery_positions(torch.tensor([3, 3, 1, 3, 2, 1]), 3) == [0, 2, 4]
    assert gallery_positions(torch.tensor([0, 0, 0]), 2) == [0, 1]


# ---------------------------------------------------------------------------------------------
# sharding


@pytest.mark.parametrize("n", [0, 1, 7, 24, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 8])
def test_shards_cover_every_sample_once_in_order(n: int, world: int) -> None:
    items = list(range(n))
    pieces = [list(shard_items(items, r, world)) for r in range(world)]
    assert [i for p in pieces for i in p] == items
    sizes = [len(p) for p in pieces]
    assert max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="rank"):
        shard_bounds(n, world, world)


def test_sharded_evaluation_gathers_to_the_single_process_table() -> None:
    """Two 'ranks' evaluating their slices give, concatenated, the one-process table."""
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[16], num_classes=3)
    x, y = salign.data.load("synthetic-gaussian", "test")
    x, y = x[:10], y[:10] % 3
    ids = torch.arange(100, 110)
    kw = {"attacks": ["deepfool", "ddn"], "budget": "fast", "steps": 10}
    whole, _ = evaluate_chunk(model, x, y, ids, **kw)
    parts = []
    for rank in range(2):
        s, e = shard_bounds(10, rank, 2)
        frame, _ = evaluate_chunk(model, x[s:e], y[s:e], ids[s:e], **kw)
        parts.append(frame)
    gathered = pd.concat(parts, ignore_index=True)
    assert gathered["sample_id"].tolist() == list(range(100, 110))
    for col in ("pred", "alignment", "alignment_binarized", "linearized_robustness", "effective_bias"):
        np.testing.assert_allclose(
            gathered[col].to_numpy(float), whole[col].to_numpy(float), rtol=1e-5, atol=1e-6
        )
    # DeepFool and DDN are deterministic: the distances agree too.
    np.testing.assert_allclose(gathered["rho"], whole["rho"], rtol=1e-4)


def test_chunk_with_unknown_labels() -> None:
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[8], num_classes=2)
    x, _ = salign.data.load("synthetic-gaussian", "test")
    labels = torch.tensor([0, -1, 1, -1])
    frame, costs = evaluate_chunk(model, x[:4], labels, torch.arange(4), attacks=["deepfool"], budget="fast")
    assert frame["label"].tolist() == [0, -1, 1, -1]
    assert not frame["correct"][[1, 3]].any()
    assert frame["rho_success"].all() and np.isfinite(frame["rho"]).all()
    assert costs["forwards"] > 0


# ---------------------------------------------------------------------------------------------
# pipeline


def test_pipeline_writes_the_run_directory(tiny_run: Path) -> None:
    cfg_record = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert cfg_record["seed"] == 0 and "torch" in cfg_record["versions"]
    for tag in ("0", "1"):
        assert (tiny_run / "models" / tag / "checkpoint.safetensors").is_file()
        table = pd.read_csv(tiny_run / "eval" / f"{tag}.csv")
        assert len(table) == 24
        assert {"alignment", "alignment_binarized", "linearized_robustness", "rho", "rho_ddn"} <= set(table)
        meta = json.loads((tiny_run / "eval" / f"{tag}.json").read_text())
        assert meta["lambda"] == float(tag) and 0 <= meta["accuracy"] <= 1
    # The evaluation subset is identical across models.
    ids = [pd.read_csv(tiny_run / "eval" / f"{t}.csv")["sample_id"].tolist() for t in ("0", "1")]
    assert ids[0] == ids[1] == evaluation_subset(256, 24, 0).tolist()
    summary = pd.read_csv(tiny_run / "summary.csv")
    assert summary["model"].tolist() == ["0", "1", "pooled"]
    # T4 holds on every evaluated sample of real models.
    assert (summary["t4_holds"] == summary["t4_n"]).all()
    assert (tiny_run / "eval" / "sanity.csv").is_file()
    assert (tiny_run / "report.html").stat().st_size > 10_000
    assert not list(tiny_run.rglob(".*.tmp"))
    assert not (tiny_run / "eval" / ".parts").exists()


def test_pipeline_saves_the_sample_views_of_the_interactive_report(tiny_run: Path) -> None:
    """eval/<tag>.views.npz: the images, saliency maps and the perturbations whose L2 norm is
    the table's ρ, for the first report.interactive_samples samples (here all 24)."""
    x, _ = salign.data.load("synthetic-gaussian", "test")
    for tag in ("0", "1"):
        table = pd.read_csv(tiny_run / "eval" / f"{tag}.csv")
        with np.load(tiny_run / "eval" / f"{tag}.views.npz") as npz:
            views = {k: npz[k] for k in npz.files}
        assert views["sample_id"].tolist() == table["sample_id"].tolist()
        ids = torch.as_tensor(views["sample_id"])
        assert views["image"].dtype == np.uint8 and views["perturbation"].dtype == np.float16
        np.testing.assert_array_equal(views["image"], (x[ids] * 255).round().to(torch.uint8).numpy())
        delta = views["perturbation"].astype(np.float64) * views["perturbation_scale"][:, None, None, None]
        found = table["rho_success"].to_numpy(bool) & (table["rho"].to_numpy() > 0)
        assert found.sum() >= 20
        norms = np.sqrt((delta**2).reshape(len(delta), -1).sum(1))
        np.testing.assert_allclose(norms[found], table["rho"].to_numpy()[found], rtol=2e-3)
        model = salign.models.load(tiny_run / "models" / tag / "checkpoint.safetensors")
        grads = salign.saliency(model, x[ids], mode="logit").numpy()
        saliency = views["saliency"].astype(np.float64) * views["saliency_scale"][:, None, None, None]
        np.testing.assert_allclose(saliency, grads, atol=1e-3 * np.abs(grads).max())


def test_sample_views_of_large_images_are_downscaled() -> None:
    from salign.experiments.evaluate import VIEW_SIDE, sample_views

    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[3, 100, 80], hidden=[4], num_classes=3)
    x = torch.rand(2, 3, 100, 80)
    views = sample_views(model, x, x.clone())
    assert views is not None
    assert views["image"].shape == views["saliency"].shape == (2, 3, VIEW_SIDE, 51)
    pooled = torch.nn.functional.interpolate(x, size=(VIEW_SIDE, 51), mode="area")
    np.testing.assert_allclose(views["image"] / 255, pooled.numpy(), atol=0.5 / 255 + 1e-6)
    assert not views["perturbation"].any() and not views["perturbation_scale"].any()  # adv = x
    assert sample_views(model, x.flatten(1), x.flatten(1)) is None  # not images: nothing to show


class _Killed(RuntimeError):
    pass


def test_resume_after_kill_redoes_nothing_finished(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_chunk = pipeline_mod.evaluate_chunk
    calls: list[int] = []

    def dying_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 5:  # model "0" finished (3 chunks), model "1" has 1 chunk saved
            raise _Killed("simulated kill")
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "evaluate_chunk", dying_chunk)
    with pytest.raises(_Killed):
        run(_tiny(), out=out, quiet=True)
    assert (out / "eval" / "0.csv").is_file() and not (out / "eval" / "1.csv").exists()
    assert len(list((out / "eval" / ".parts" / "1").glob("*.csv"))) == 1
    ckpt_times = {t: (out / "models" / t / "checkpoint.safetensors").stat().st_mtime_ns for t in ("0", "1")}
    eval0 = (out / "eval" / "0.csv").read_bytes()

    def no_training(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a finished model was retrained")

    monkeypatch.setattr("salign.training.train", no_training)
    calls.clear()
    monkeypatch.setattr(
        pipeline_mod, "evaluate_chunk", lambda *a, **k: (calls.append(1), real_chunk(*a, **k))[1]
    )
    report = run(_tiny(), out=out, quiet=True)
    assert len(calls) == 2  # only the two missing chunks of model "1"
    assert (out / "eval" / "0.csv").read_bytes() == eval0
    assert {
        t: (out / "models" / t / "checkpoint.safetensors").stat().st_mtime_ns for t in ("0", "1")
    } == ckpt_times
    assert len(pd.read_csv(out / "eval" / "1.csv")) == 24
    assert report.checks["t4_holds_everywhere"]
    assert not list(out.rglob(".*.tmp"))


@pytest.mark.slow
def test_kill_during_training_resumes_the_sweep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import salign.training as training

    out = tmp_path / "run"
    real_train = training.train
    trained: list[str] = []

    def dying_train(cfg: Any, *, run_dir: Path, **kw: Any) -> Any:
        if Path(run_dir).name == "1":
            raise _Killed("simulated kill while training λ=1")
        trained.append(Path(run_dir).name)
        return real_train(cfg, run_dir=run_dir, **kw)

    monkeypatch.setattr(training, "train", dying_train)
    with pytest.raises(_Killed):
        run(_tiny(**{"report.linear_sanity": False}), out=out, quiet=True)
    monkeypatch.setattr(
        training,
        "train",
        lambda cfg, *, run_dir, **kw: (
            trained.append(Path(run_dir).name),
            real_train(cfg, run_dir=run_dir, **kw),
        )[1],
    )
    run(_tiny(**{"report.linear_sanity": False}), out=out, quiet=True)
    assert trained == ["0", "1"]  # λ=0 trained once, λ=1 once after the restart


@pytest.mark.slow
def test_different_config_in_the_same_directory_and_force(tiny_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    with pytest.raises(ConfigError, match="different config.*evaluation"):
        run(_tiny(**{"evaluation.n": 30}), out=out, quiet=True)
    before = (out / "models" / "0" / "checkpoint.safetensors").stat().st_mtime_ns
    run(_tiny(**{"evaluation.n": 10, "report.linear_sanity": False}), out=out, force=True, quiet=True)
    assert (out / "models" / "0" / "checkpoint.safetensors").stat().st_mtime_ns != before
    assert len(pd.read_csv(out / "eval" / "0.csv")) == 10
    assert not (out / "eval" / "sanity.csv").exists()


def test_pretrained_model_without_sweep(tmp_path: Path, tiny_run: Path) -> None:
    cfg = _tiny(**{"model.checkpoint": str(tiny_run / "models" / "1" / "checkpoint.safetensors")})
    del cfg["training"], cfg["sweep"]
    report = run(cfg, out=tmp_path / "eval", quiet=True)
    assert pd.read_csv(report.summary_csv)["model"].tolist() == ["pretrained"]
    expected = pd.read_csv(tiny_run / "eval" / "1.csv")["alignment"]
    np.testing.assert_allclose(
        pd.read_csv(tmp_path / "eval" / "eval" / "pretrained.csv")["alignment"], expected
    )


# ---------------------------------------------------------------------------------------------
# CLI and shipped configs


def test_cli_report_rerenders_without_recomputing(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    (out / "report.html").unlink()
    shutil.rmtree(out / "figures")
    monkeypatch.setattr(salign, "analyze", lambda *a, **k: pytest.fail("report recomputed the analysis"))
    monkeypatch.setattr(salign, "robustness", lambda *a, **k: pytest.fail("report recomputed the attacks"))
    cli_main(["report", str(out)])
    printed = capsys.readouterr().out
    assert str((out / "report.html").resolve()) in printed
    assert (out / "figures" / "p2_alpha_vs_rho.png").is_file()
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), pd.read_csv(tiny_run / "summary.csv"))


def test_cli_run_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_tiny(**{"evaluation.nn": 3})), encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        cli_main(["run", str(path), "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    assert "unknown key 'evaluation.nn'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["demo", "mnist-paper", "fashion-mnist", "imagenet-photos", "imagenet-paper", "zoo-example"]
)
def test_shipped_configs_validate(name: str) -> None:
    path = REPO / "configs" / f"{name}.yaml"
    if name == "mnist-paper":
        # owned by the trainer: a training config, not a study
        pytest.importorskip("salign.training").load_config(path)
        return
    cfg = load_config(path)
    assert cfg.name == name
    if cfg.trains:
        for lam in cfg.lambdas():
            assert cfg.train_config(lam).regularizer.lambda_ == lam  # type: ignore[arg-type]


def test_demo_config_is_packaged_and_matches_the_repository_copy() -> None:
    packaged = packaged_config("demo")
    assert packaged.read_text() == (REPO / "configs" / "demo.yaml").read_text()
    cfg = load_config(packaged)
    assert len(cfg.lambdas()) >= 4 and cfg.evaluation.n >= 500 and cfg.model.name == "smallnet"


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os

    os.environ.update(
        {
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(1)
    run(_tiny(**{"report.linear_sanity": False}), out=out, quiet=True)


@pytest.mark.slow
def test_two_ranks_shard_the_evaluation_and_gather_on_rank_0(tmp_path: Path) -> None:
    """A real 2-process gloo job (as under torchrun): rank 0 writes one complete, ordered table."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    mp.start_processes(_ddp_worker, args=(2, port, str(out)), nprocs=2, join=True, start_method="spawn")
    for tag in ("0", "1"):
        table = pd.read_csv(out / "eval" / f"{tag}.csv")
        assert table["sample_id"].tolist() == evaluation_subset(256, 24, 0).tolist()
        model = salign.models.load(out / "models" / tag / "checkpoint.safetensors")
        x, y = salign.data.load("synthetic-gaussian", "test")
        ids = torch.tensor(table["sample_id"].to_numpy())
        expected = salign.analyze(model, x[ids], y[ids])
        np.testing.assert_allclose(table["alignment"], expected.alignment.numpy(), rtol=1e-4, atol=1e-6)
    summary = pd.read_csv(out / "summary.csv")
    assert (summary["t4_holds"] == summary["t4_n"]).all()
    assert yaml.safe_load((out / "config.yaml").read_text())["resolved"]["world_size"] == 2

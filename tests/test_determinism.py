"""Determinism: the same config and seed give byte-identical result tables on CPU.

* the whole study pipeline (train a λ sweep → evaluate → summary) run twice, the second time
  interrupted in the middle of its evaluation and then resumed: the same tables as the
  uninterrupted run (nothing lost, nothing computed differently);
* ``salign analyze`` and ``salign attack`` run twice.

Only wall-clock columns (``seconds``) may differ; they are dropped before comparing.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import salign
from _training_helpers import num_threads
from salign.cli import main


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One thread in every test here, restored afterwards (set at import, it leaked into every
    module collected after this one)."""
    with num_threads(1):
        yield


#: A complete study small enough for a unit test: 2 models (λ = 0, 1) on synthetic data.
TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "seed": 3,
    "num_threads": 1,
    "dataset": {"name": "synthetic-gaussian"},
    "model": {"name": "relu_mlp", "kwargs": {"input_shape": [1, 8, 8], "hidden": [16], "num_classes": 2}},
    "training": {
        "epochs": 1,
        "batch_size": 32,
        "data": {"train_subset": 128, "val_subset": 64},
        "optimizer": {"name": "adam", "lr": 1.0e-2},
    },
    "sweep": {"lambdas": [0, 1]},
    "evaluation": {"n": 24, "batch_size": 12, "chunk_size": 8, "gallery": 2, "device": "cpu"},
    "attacks": {"names": ["deepfool", "ddn"], "budget": "fast", "steps": 10},
    "report": {"n_bootstrap": 100, "linear_sanity": False},
}
TIME_COLUMNS = {"seconds", "images_per_second", "seconds_analyze", "seconds_attacks", "time", "wall_seconds"}


def read_table(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if k not in TIME_COLUMNS} for row in csv.DictReader(fh)]


def tables(run_dir: Path) -> dict[str, list[dict[str, str]]]:
    """Every CSV of a run directory (eval tables, summary, training logs), keyed by relative path."""
    found = {str(p.relative_to(run_dir)): read_table(p) for p in sorted(run_dir.rglob("*.csv"))}
    assert "summary.csv" in found and "eval/0.csv" in found and "eval/1.csv" in found, sorted(found)
    return found


def test_study_is_deterministic_and_an_interrupted_run_resumes_to_the_same_tables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run the study once from scratch; run it again but kill it (KeyboardInterrupt) in the
    middle of the first model's evaluation, then resume: every CSV is identical."""
    import salign.experiments.pipeline as pipeline
    import salign.report.figures

    # figures are PNGs, not tables: skip drawing them (most of the run time of so small a study)
    monkeypatch.setattr(salign.report.figures, "save_figures", lambda *args, **kwargs: {}, raising=False)
    reference = tmp_path / "a"
    salign.experiments.run(dict(TINY_STUDY), out=reference, quiet=True)

    real = pipeline.evaluate_chunk
    calls = {"n": 0}

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # the second evaluation chunk of the first model
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "b"
    monkeypatch.setattr(pipeline, "evaluate_chunk", interrupted)
    with pytest.raises(KeyboardInterrupt):
        salign.experiments.run(dict(TINY_STUDY), out=out, quiet=True)
    assert calls["n"] == 2
    assert not (out / "eval" / "0.csv").exists() and not (out / "summary.csv").exists()
    assert not list(out.rglob(".*.tmp")), "a partial file was left behind"
    monkeypatch.setattr(pipeline, "evaluate_chunk", real)
    salign.experiments.run(dict(TINY_STUDY), out=out, quiet=True)

    first, second = tables(reference), tables(out)
    assert first.keys() == second.keys()
    for name in first:
        assert first[name] == second[name], f"{name} differs between two runs of the same config"
    assert len(first["eval/0.csv"]) == 24
    for tag in ("0", "1"):  # the interactive report's sample views, saved per chunk, resume too
        with (
            np.load(reference / "eval" / f"{tag}.views.npz") as a,
            np.load(out / "eval" / f"{tag}.views.npz") as b,
        ):
            assert a.files == b.files
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{tag}.views.npz {key}")


def _cli_twice(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> list[list[dict[str, str]]]:
    results = []
    for i in range(2):
        out = tmp_path / f"run{i}.csv"
        main([*argv, "--out", str(out)])
        capsys.readouterr()
        results.append(read_table(out))
    return results


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A linear model whose decision boundary passes through the middle of the data cube."""
    torch.manual_seed(1)
    model = salign.models.build("linear", input_shape=[1, 8, 8], num_classes=2)
    with torch.no_grad():
        model.fc.bias.copy_(-model.fc.weight.sum(1) * 0.5)
    return salign.models.save(model, tmp_path / "model.safetensors")


def test_analyze_cli_is_deterministic(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["analyze", str(checkpoint), "--data", "synthetic-gaussian", "--n", "30", "--seed", "5", "--quiet"]
    first, second = _cli_twice(argv, tmp_path, capsys)
    assert len(first) == 30 and first == second


def test_attack_cli_is_deterministic(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["attack", str(checkpoint), "--data", "synthetic-gaussian", "--n", "12", "--steps", "15"]
    argv += ["--attacks", "deepfool,ddn,fmn", "--seed", "2", "--quiet"]
    first, second = _cli_twice(argv, tmp_path, capsys)
    assert len(first) == 12 and first == second
    assert any(row["distance"] not in ("inf", "nan") for row in first)

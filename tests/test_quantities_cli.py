"""``salign analyze``: per-sample CSV from a checkpoint and a dataset."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import salign
from salign.cli import app, main
from salign.quantities import Analysis


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=[1, 8, 8], hidden=[16], num_classes=3)
    path = tmp_path / "model.safetensors"
    salign.models.save(model, path)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_analyze_writes_the_per_sample_table(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "results.csv"
    result = CliRunner().invoke(
        app,
        [
            "analyze",
            str(checkpoint),
            "--data",
            "synthetic-gaussian",
            "--n",
            "40",
            "--out",
            str(out),
            "--batch-size",
            "16",
            "--seed",
            "3",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "40 samples" in result.output and "medians:" in result.output
    rows = read_rows(out)
    assert len(rows) == 40
    assert list(rows[0]) == ["id", *Analysis.columns()]
    # the table is the library's analyze() on the same seeded subset
    x, y = salign.data.load("synthetic-gaussian", "test")
    from salign.commands.analyze import select_subset

    idx = select_subset(x.shape[0], 40, 3)
    assert [int(r["id"]) for r in rows] == idx.tolist()
    ref = salign.analyze(salign.models.load(checkpoint), x[idx], y[idx])
    got = torch.tensor([float(r["alignment_binarized"]) for r in rows])
    assert torch.allclose(got, ref.alignment_binarized, rtol=1e-6, equal_nan=True)
    assert [int(r["label"]) for r in rows] == y[idx].tolist()
    assert [int(r["correct"]) for r in rows] == ref.correct.int().tolist()
    assert all(math.isfinite(float(r["linearized_robustness"])) for r in rows)
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, no temp file left


def test_analyze_runner_up_and_same_seed_same_rows(checkpoint: Path, tmp_path: Path) -> None:
    outs = [tmp_path / "a.csv", tmp_path / "b.csv"]
    for out in outs:
        args = ["analyze", str(checkpoint), "--data", "synthetic-gaussian", "--n", "12", "--out", str(out)]
        result = CliRunner().invoke(app, [*args, "--rival", "runner_up", "--quiet"])
        assert result.exit_code == 0, result.output
    a, b = read_rows(outs[0]), read_rows(outs[1])
    assert a == b
    assert all(r["rival"] == r["rival_runner_up"] and r["rival_nearest"] == "-1" for r in a)


def test_analyze_errors_are_one_line(
    checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(tmp_path / "missing.safetensors"), "--data", "synthetic-gaussian"])
    assert exc.value.code == 2
    assert "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(checkpoint), "--data", "synthetic-gaussian", "--rival", "second"])
    assert exc.value.code == 2
    assert "--rival" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["analyze", str(checkpoint), "--data", "no-such-data"])
    assert exc.value.code == 2

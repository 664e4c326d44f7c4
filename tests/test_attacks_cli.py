"""`salign attack`: end to end on a saved bias-free linear model and synthetic data."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

import salign
from salign.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _checkpoint(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = salign.models.build("linear", input_shape=(1, 8, 8), num_classes=2, bias=False)
    path = tmp_path / "linear.safetensors"
    salign.models.save(model, path)
    return path, model


def test_attack_command_writes_verified_distances(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, model = _checkpoint(tmp_path)
    out = tmp_path / "rho.csv"
    main(
        [
            "attack", str(path), "--data", "synthetic-gaussian", "--n", "6", "--attacks", "deepfool,ddn",
            "--steps", "20", "--batch-size", "4", "--out", str(out), "--quiet",
        ]
    )  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6
    assert {"index", "true_label", "distance", "success", "adv_class", "label", "best_attack",
            "distance_deepfool", "distance_ddn"} <= set(rows[0])  # fmt: skip
    # exact ρ of a bias-free two-class linear model: |⟨w1 − w0, x⟩| / ‖w1 − w0‖
    x, _ = salign.data.load("synthetic-gaussian", "test")
    w = model.fc.weight.detach()
    rho = ((x[:6].flatten(1) @ (w[1] - w[0])).abs() / (w[1] - w[0]).norm()).tolist()
    for row, expected in zip(rows, rho, strict=True):
        if row["success"] == "True":
            assert float(row["distance"]) == pytest.approx(expected, rel=1e-3)
    assert "median ρ" in capsys.readouterr().out


@pytest.mark.parametrize(("norm", "q"), [("inf", 1.0), ("1", float("inf"))])
def test_attack_command_in_other_norms(
    tmp_path: Path, norm: str, q: float, capsys: pytest.CaptureFixture[str]
) -> None:
    """--norm: ρ_p of a bias-free two-class linear model is |⟨w1 − w0, x⟩| / ‖w1 − w0‖_q where the
    minimiser stays in the box (L∞ here); in L1 it moves one pixel by more than the box allows,
    so the closed form is only a lower bound."""
    path, model = _checkpoint(tmp_path)
    out = tmp_path / "rho.csv"
    main(["attack", str(path), "--data", "synthetic-gaussian", "--n", "4", "--norm", norm, "--steps", "100",
          "--out", str(out), "--quiet"])  # fmt: skip
    rows = list(csv.DictReader(out.open()))
    assert {"distance_deepfool", "distance_fmn"} <= set(rows[0]) and "distance_ddn" not in rows[0]
    x, _ = salign.data.load("synthetic-gaussian", "test")
    w = model.fc.weight.detach()
    rho = ((x[:4].flatten(1) @ (w[1] - w[0])).abs() / (w[1] - w[0]).norm(p=q)).tolist()
    for row, expected in zip(rows, rho, strict=True):
        assert row["success"] == "True"
        if norm == "inf":
            assert float(row["distance"]) == pytest.approx(expected, rel=1e-3)
        else:
            # verified in float32: at most a few rounding errors short of the closed form
            # (measured: 5.2e-6 relative on one sample)
            assert float(row["distance"]) >= expected * (1 - 2e-5)
    assert f"median ρ ({'L∞' if norm == 'inf' else 'L' + norm})" in capsys.readouterr().out


def test_attack_command_rejects_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = _checkpoint(tmp_path)
    for extra, message in (
        (["--attacks", "pgd"], "unknown attack"),
        (["--budget", "huge"], "budget"),
        (["--norm", "3"], "norm must be 1, 2 or inf"),
        (["--norm", "inf", "--attacks", "ddn"], "do not minimise the norm inf"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(["attack", str(path), "--data", "synthetic-gaussian", "--n", "2", *extra])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["attack", str(tmp_path / "missing.safetensors"), "--data", "synthetic-gaussian"])
    assert exc.value.code == 2


def test_attack_command_exact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--exact: the MIP's ρ per sample (a relu_mlp checkpoint, L∞ with HiGHS), with its lower
    bound, gap and status, equal to salign.exact.exact_robustness on the same points; options of
    the attacks are refused with it, and its own without it; a missing solver names the extra."""
    pytest.importorskip("highspy")
    from salign.exact import exact_robustness

    torch.manual_seed(0)
    model = salign.models.build("relu_mlp", input_shape=(1, 8, 8), hidden=(6,), num_classes=2)
    path = tmp_path / "mlp.safetensors"
    salign.models.save(model, path)
    out = tmp_path / "exact.csv"
    args = ["attack", str(path), "--data", "synthetic-gaussian", "--n", "3", "--norm", "inf"]
    main([*args, "--exact", "--time-limit", "20", "--out", str(out), "--quiet"])
    rows = list(csv.DictReader(out.open()))
    assert [r["status"] for r in rows] == ["optimal"] * 3
    assert {"index", "true_label", "distance", "lower_bound", "gap", "adv_class", "nodes"} <= set(rows[0])
    x, _ = salign.data.load("synthetic-gaussian", "test")
    want = exact_robustness(salign.models.load(path), x[:3], norm="inf", time_limit=20, quiet=True)
    for row, d, lb in zip(rows, want.distance.tolist(), want.lower_bound.tolist(), strict=True):
        assert float(row["distance"]) == pytest.approx(d, rel=1e-4)
        assert float(row["lower_bound"]) <= float(row["distance"])
        assert float(row["gap"]) <= 1e-4 and lb <= d
    assert "exact ρ (L∞, highs)" in capsys.readouterr().out
    for extra, message in (
        (["--exact", "--steps", "10"], "--steps does not apply with --exact"),
        (
            ["--exact", "--attacks", "ddn", "--budget", "fast"],
            "--attacks, --budget do not apply with --exact",
        ),
        (["--time-limit", "5"], "--time-limit and --gap apply only with --exact"),
    ):
        with pytest.raises(SystemExit) as exc:
            main([*args, *extra])
        assert exc.value.code == 2
        assert message in capsys.readouterr().err
    # without the solvers: exit 2 and the extra to install, nothing written
    monkeypatch.setitem(sys.modules, "highspy", None)
    monkeypatch.setitem(sys.modules, "pyscipopt", None)
    missing = tmp_path / "missing.csv"
    with pytest.raises(SystemExit) as exc:
        main([*args, "--exact", "--out", str(missing)])
    assert exc.value.code == 2
    assert "pip install 'saliency-alignment[exact]'" in capsys.readouterr().err
    assert not missing.exists()

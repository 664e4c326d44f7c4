"""A study of a model zoo: the config's ``models`` list (arms with nothing to train), alone or
beside a λ sweep, every arm evaluated on the same seeded MNIST images into one report.

The three forms of the same weights (a user's file + ``torch.save``d state dict, a ``.pt2``
export, a salign checkpoint; tests/_spec_helpers.py) must give identical evaluation rows.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import salign
from _spec_helpers import make_forms
from salign.cli import main as cli_main
from salign.errors import CheckpointError, ConfigError, MissingFileError
from salign.experiments import config_from_dict, evaluation_subset, run
from salign.experiments import pipeline as pipeline_mod

MNIST_TEST = 10_000
FAST: dict[str, Any] = {
    "dataset": {"name": "mnist"},
    "evaluation": {"n": 6, "chunk_size": 3, "gallery": 2, "accuracy_n": 200},
    "attacks": {"names": ["deepfool", "ddn"], "budget": "fast", "steps": 10},
    "report": {"n_bootstrap": 100, "linear_sanity": False, "figures": False},
}


def _zoo(forms: dict[str, Any], *, name: str = "zoo", **sections: Any) -> dict[str, Any]:
    """A zoo config listing the three forms (tags mine, exported, ckpt)."""
    models = [
        {"tag": "mine", "spec": f"{forms['user']}:make_model", "weights": str(forms["state"])},
        {"tag": "exported", "spec": str(forms["pt2"])},
        {"tag": "ckpt", "spec": str(forms["ckpt"])},
    ]
    return json.loads(json.dumps({"name": name, **FAST, "models": models, **sections}))


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_forms(tmp_path_factory.mktemp("forms"))


@pytest.fixture(scope="module")
def zoo_run(forms: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("zoo") / "run"
    run(_zoo(forms), out=out, quiet=True)
    return out


def test_three_forms_of_the_same_weights_give_identical_rows(zoo_run: Path, forms: dict[str, Any]) -> None:
    tables = {tag: (zoo_run / "eval" / f"{tag}.csv").read_text() for tag in ("mine", "exported", "ckpt")}
    assert tables["mine"] == tables["ckpt"] and tables["exported"] == tables["ckpt"]
    frame = pd.read_csv(zoo_run / "eval" / "ckpt.csv")
    ids = evaluation_subset(MNIST_TEST, 6, 0)
    assert frame["sample_id"].tolist() == ids.tolist()  # the seeded images every arm sees
    # the rows are the library's analyze() of the user's own module on those MNIST images
    x, y = salign.data.load("mnist", "test")
    direct = salign.analyze(forms["net"], x[ids], y[ids])
    np.testing.assert_allclose(frame["alignment"], direct.alignment.numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        frame["linearized_robustness"], direct.linearized_robustness.numpy(), rtol=1e-5
    )
    assert (frame["rho_success"]).all() and (frame["rho"] > 0).all()
    summary = pd.read_csv(zoo_run / "summary.csv")
    assert summary["model"].tolist() == ["mine", "exported", "ckpt", "pooled"]  # config order
    assert summary["lambda"].isna().all()
    per_model = summary.set_index("model").drop(columns="lambda").iloc[:3]
    numeric = per_model.select_dtypes("number")
    assert (numeric.nunique(dropna=False) == 1).all(), "the three forms' T1 rows differ"
    for tag in ("mine", "exported", "ckpt"):
        meta = json.loads((zoo_run / "eval" / f"{tag}.json").read_text())
        assert meta["lambda"] is None and meta["arm"]["kind"] == "listed"
        assert not (zoo_run / "models" / tag / "checkpoint.safetensors").exists()  # nothing trained
    source = json.loads((zoo_run / "models" / "mine" / "source.json").read_text())
    assert set(source["sha256"]) == {str(forms["user"]), str(forms["state"])}
    assert (
        source["sha256"][str(forms["state"])]
        == __import__("hashlib").sha256(forms["state"].read_bytes()).hexdigest()
    )
    page = (zoo_run / "report.html").read_text(encoding="utf-8")
    assert all(f">{tag}<" in page for tag in ("mine", "exported", "ckpt"))
    assert "median alpha increasing" not in (zoo_run / "summary.md").read_text()  # no λ, no λ trend


class _Killed(RuntimeError):
    pass


def test_zoo_resumes_and_reevaluates_only_a_changed_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "forms").mkdir()
    forms = make_forms(tmp_path / "forms")
    cfg = _zoo(forms)
    cfg["models"] = cfg["models"][:1] + cfg["models"][2:]  # mine, ckpt
    out = tmp_path / "run"
    real_chunk = pipeline_mod.evaluate_chunk
    calls: list[int] = []

    def dying_chunk(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 4:  # "mine" finished (2 chunks), "ckpt" has 1 chunk saved
            raise _Killed("simulated kill")
        return real_chunk(*args, **kwargs)

    monkeypatch.setattr(pipeline_mod, "evaluate_chunk", dying_chunk)
    with pytest.raises(_Killed):
        run(cfg, out=out, quiet=True)
    assert (out / "eval" / "mine.csv").is_file() and not (out / "eval" / "ckpt.csv").exists()
    mine = (out / "eval" / "mine.csv").read_bytes()
    calls.clear()
    monkeypatch.setattr(
        pipeline_mod, "evaluate_chunk", lambda *a, **k: (calls.append(1), real_chunk(*a, **k))[1]
    )
    run(cfg, out=out, quiet=True)
    assert len(calls) == 1  # only the missing chunk of "ckpt"
    assert (out / "eval" / "mine.csv").read_bytes() == mine
    assert (out / "eval" / "ckpt.csv").read_bytes() == mine

    def scale_weights(factor: float) -> None:
        """New weights in the same file: the config is unchanged, the model is not."""
        net = salign.models.load_spec(f"{forms['user']}:make_model", weights=forms["state"])
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(factor)
        torch.save(net.state_dict(), forms["state"])

    scale_weights(2.0)
    calls.clear()
    run(cfg, out=out, quiet=True)
    assert len(calls) == 2  # both chunks of "mine", nothing of "ckpt"
    doubled = (out / "eval" / "mine.csv").read_bytes()
    assert doubled != mine and (out / "eval" / "ckpt.csv").read_bytes() == mine
    calls.clear()
    run(cfg, out=out, quiet=True)
    assert calls == []
    # changed back while its evaluation was half done: the saved chunk is of the old weights
    scale_weights(0.5)
    calls.clear()
    monkeypatch.setattr(pipeline_mod, "evaluate_chunk", dying_chunk)
    calls.extend([1, 1])  # the next call is the 4th: "mine" keeps 1 chunk, then the kill
    with pytest.raises(_Killed):
        run(cfg, out=out, quiet=True)
    assert len(list((out / "eval" / ".parts" / "mine").glob("*.csv"))) == 1
    scale_weights(2.0)
    calls.clear()
    monkeypatch.setattr(
        pipeline_mod, "evaluate_chunk", lambda *a, **k: (calls.append(1), real_chunk(*a, **k))[1]
    )
    run(cfg, out=out, quiet=True)
    assert len(calls) == 2 and (out / "eval" / "mine.csv").read_bytes() == doubled


def test_mixed_study_sweep_and_listed_model_in_one_report(forms: dict[str, Any], tmp_path: Path) -> None:
    from salign.report import load_run
    from salign.report.figures import figure_medians

    cfg = {
        "name": "mixed",
        **FAST,
        "model": {"name": "relu_cnn", "kwargs": {"channels": [4]}},
        "training": {
            "epochs": 1,
            "batch_size": 64,
            "optimizer": {"name": "adam", "lr": 0.01},
            "tensorboard": False,
            "quiet": True,
            "data": {"train_subset": 256, "val_subset": 64},
        },
        "sweep": {"lambdas": [0, 1]},
        "models": [{"tag": "mine", "spec": f"{forms['user']}:make_model", "weights": str(forms["state"])}],
        "report": {"n_bootstrap": 100, "linear_sanity": False, "figures": True},
    }
    out = tmp_path / "run"
    report = run(cfg, out=out, quiet=True)
    assert (out / "models" / "0" / "checkpoint.safetensors").is_file()  # λ runs keep their names
    assert (out / "models" / "mine" / "source.json").is_file()
    assert not (out / "models" / "mine" / "checkpoint.safetensors").exists()
    summary = pd.read_csv(report.summary_csv)
    assert summary["model"].tolist() == ["0", "1", "mine", "pooled"]
    assert summary["lambda"].tolist()[:2] == [0, 1] and math.isnan(summary["lambda"][2])
    ids = {tag: pd.read_csv(out / "eval" / f"{tag}.csv")["sample_id"].tolist() for tag in ("0", "1", "mine")}
    assert ids["0"] == ids["1"] == ids["mine"] == evaluation_subset(MNIST_TEST, 6, 0).tolist()
    # the listed model's rows are those of the zoo study (same images, same seeds)
    zoo_frame = salign.analyze(
        forms["net"], *[t[evaluation_subset(MNIST_TEST, 6, 0)] for t in salign.data.load("mnist", "test")]
    )
    np.testing.assert_allclose(
        pd.read_csv(out / "eval" / "mine.csv")["alignment"], zoo_frame.alignment.numpy(), rtol=1e-5
    )
    page = report.html.read_text(encoding="utf-8")
    assert ">mine<" in page and "p3_medians_vs_lambda" in " ".join(report.figures)
    assert {"median_alpha_increasing", "median_rho_increasing"} <= set(report.checks)
    # medians vs λ: only the λ arms; the listed model appears in the per-image figures
    fig = figure_medians(load_run(out))
    assert next(list(line.get_xdata()) for line in fig.axes[0].lines if len(line.get_xdata()) > 1) == [0, 1]
    assert "mine" in (out / "summary.md").read_text()


# ---------------------------------------------------------------------------------------------
# bad input: one-line errors naming the model's tag


def test_config_errors_name_the_tag(forms: dict[str, Any]) -> None:
    base = _zoo(forms)

    def with_models(*entries: dict[str, Any]) -> dict[str, Any]:
        return {**base, "models": list(entries)}

    with pytest.raises(ConfigError, match=r"unknown key 'models\[exported\]\.wieghts'"):
        config_from_dict(with_models({"tag": "exported", "spec": "m.pt2", "wieghts": "w.pt"}))
    with pytest.raises(ConfigError, match=r"missing required key 'models\[#2\]\.tag'"):
        config_from_dict(with_models({"tag": "a", "spec": "m.pt2"}, {"spec": "m.pt2"}))
    with pytest.raises(ConfigError, match=r"tag 'mine' is used twice; every model needs its own tag"):
        config_from_dict(with_models({"tag": "mine", "spec": "a.pt2"}, {"tag": "mine", "spec": "b.pt2"}))
    with pytest.raises(ConfigError, match=r"tag 'Mine' is used twice \(as 'mine', ignoring case\)"):
        config_from_dict(with_models({"tag": "mine", "spec": "a.pt2"}, {"tag": "Mine", "spec": "b.pt2"}))
    for tag, why in [
        ("../up", "must be 1–64 letters, digits"),
        ("a b", "must be 1–64 letters, digits"),
        ("x" * 65, "must be 1–64 letters, digits"),
        ("3", "is a number, which names a model of the λ sweep"),
        ("1e-3", "is a number"),
        ("sanity", "is reserved"),
        ("pooled", "is reserved"),
    ]:
        with pytest.raises(ConfigError, match=rf"models\[.*\]\.tag: tag .* {why}"):
            config_from_dict(with_models({"tag": tag, "spec": "a.pt2"}))
    with pytest.raises(
        ConfigError, match=r"'model' is the λ sweep's architecture.*put the model into the 'models' list"
    ):
        config_from_dict({**base, "model": {"name": "smallnet"}})


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        cli_main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_a_model_that_fails_to_load_stops_the_study_before_anything_runs(
    forms: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        pipeline_mod, "evaluate_chunk", lambda *a, **k: pytest.fail("evaluated before the check")
    )
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no GPU found')\n")
    cases = [
        (
            {"tag": "gone", "spec": str(tmp_path / "gone.pt2")},
            MissingFileError,
            r"models\[gone\]: model checkpoint not found: .*gone\.pt2",
        ),
        (
            {"tag": "nofile", "spec": f"{tmp_path}/nope.py:make"},
            MissingFileError,
            r"models\[nofile\]: model file not found",
        ),
        (
            {
                "tag": "mine",
                "spec": f"{forms['user']}:make_model",
                "weights": str(forms["state"]),
                "kwargs": {"width": 5},
            },
            CheckpointError,
            r"models\[mine\]: .*weights\.pt does not fit",
        ),
        (
            {"tag": "broken", "spec": f"{broken}:make"},
            ConfigError,
            r"models\[broken\]: .*broken\.py: importing the model file raised RuntimeError: no GPU found",
        ),
        (
            {"tag": "pickle", "spec": str(forms["state"])},
            CheckpointError,
            r"models\[pickle\]: .*looks like a torch\.save pickle",
        ),
    ]
    for entry, exc, pattern in cases:
        cfg = _zoo(forms, name=f"bad-{entry['tag']}")
        cfg["models"] = [*cfg["models"][2:], entry]  # a good model first: it is not evaluated either
        with pytest.raises(exc, match=pattern):
            run(cfg, out=tmp_path / entry["tag"], quiet=True)
        assert not (tmp_path / entry["tag"] / "eval").exists()
    # on the command line: one line, exit 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, err = _cli(["run", str(path), "--out", str(tmp_path / "cli")], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: models[pickle]: ")


def test_copying_a_finished_zoo_run_rerenders_without_loading_models(
    zoo_run: Path, forms: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    shutil.copytree(zoo_run, out)
    (out / "report.html").unlink()
    monkeypatch.setattr(
        salign.models, "load_spec", lambda *a, **k: pytest.fail("a finished model was loaded")
    )
    run(_zoo(forms), out=out, quiet=True)
    assert (out / "report.html").is_file()
    pd.testing.assert_frame_equal(pd.read_csv(out / "summary.csv"), pd.read_csv(zoo_run / "summary.csv"))

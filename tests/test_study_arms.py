"""Studies beyond one robustifier and one saliency map (issue 18): adversarial-training arms
(``models: [{tag, adversarial: {method, epsilon}}]``) trained beside the λ sweep, and attribution
columns (``evaluation.attributions``, ``evaluation.boundary``) in every model's table.

Oracles: the ``gradient`` attribution's α and α_bin equal salign.analyze's (same map, same rival);
boundary IG is complete (Σ = f(x) − f(x_b)); the boundary columns cost no attack run (forward and
backward counts unchanged, ρ identical); AT arms are trained by the trainer's PGD/DDN code with
the study's training section (their saved config says so).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from salign.errors import ConfigError
from salign.experiments import config_from_dict, run
from salign.experiments.evaluate import evaluate_chunk
from salign.report import columns as C

captum = pytest.importorskip("captum")

TRAINING: dict[str, Any] = {
    "epochs": 1,
    "batch_size": 50,
    "optimizer": {"name": "adam", "lr": 2.0e-3},
    "regularizer": {"method": "double_backprop", "target": "loss", "scaling": "per_example"},
    "data": {"train_subset": 300, "val_subset": 50},
    "tensorboard": False,
}


def _study(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "arms",
        "num_threads": 1,
        "dataset": {"name": "mnist"},
        "model": {"name": "smallnet"},
        "training": TRAINING,
        "sweep": {"lambdas": [0, 1]},
        "models": [
            {"tag": "pgd-1", "adversarial": {"method": "pgd_l2", "epsilon": 1.0, "steps": 2}},
            {"tag": "ddn-1", "adversarial": {"method": "ddn", "epsilon": 1.0, "steps": 3}},
        ],
        "evaluation": {
            "n": 8,
            "batch_size": 8,
            "chunk_size": 8,
            "gallery": 2,
            "accuracy_n": 100,
            "attributions": [
                "gradient",
                "integrated_gradients",
                {"method": "smoothgrad", "options": {"nt_samples": 4}},
            ],
            "boundary": True,
        },
        "attacks": {"names": ["deepfool", "ddn"], "budget": "fast", "steps": 15},
        "report": {"n_bootstrap": 100, "linear_sanity": False, "figures": False, "interactive_samples": 0},
    }
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def arms_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("arms") / "run"
    run(_study(), out=out, quiet=True)
    return out


def test_adversarial_arms_are_trained_with_the_study_training_section(arms_run: Path) -> None:
    for tag, method, steps in (("pgd-1", "pgd_l2", 2), ("ddn-1", "ddn", 3)):
        saved = yaml.safe_load((arms_run / "models" / tag / "config.yaml").read_text())
        assert saved["adversarial"]["method"] == method
        assert saved["adversarial"]["epsilon"] == 1.0 and saved["adversarial"]["steps"] == steps
        assert saved["regularizer"]["lambda"] == 0.0
        assert (
            saved["optimizer"]
            == yaml.safe_load((arms_run / "models" / "0" / "config.yaml").read_text())["optimizer"]
        )
        meta = json.loads((arms_run / "eval" / f"{tag}.json").read_text())
        assert meta["lambda"] is None
        assert meta["arm"] == {"kind": "adversarial", "method": method, "epsilon": 1.0, "steps": steps}
    assert json.loads((arms_run / "eval" / "1.json").read_text())["arm"] == {"kind": "sweep", "lambda": 1.0}
    summary = pd.read_csv(arms_run / "summary.csv")
    assert {"0", "1", "pgd-1", "ddn-1"} <= set(summary["model"].astype(str))
    # the PGD arm differs from the λ = 0 model trained from the same seed: its training really ran PGD
    a = pd.read_csv(arms_run / "eval" / "0.csv")
    b = pd.read_csv(arms_run / "eval" / "pgd-1.csv")
    assert not np.allclose(a[C.ALPHA], b[C.ALPHA])


def test_attribution_columns_match_their_oracles(arms_run: Path) -> None:
    for tag in ("0", "1", "pgd-1", "ddn-1"):
        frame = pd.read_csv(arms_run / "eval" / f"{tag}.csv")
        assert C.attribution_methods(frame.columns) == [
            "gradient", "integrated_gradients", "smoothgrad",
            "boundary_gradient", "boundary_integrated_gradients", "gradient_binarized",
        ]  # fmt: skip
        # the gradient attribution is the paper's map: its α, α_bin are analyze's own
        np.testing.assert_allclose(
            frame[C.attribution_column("gradient", "alignment")], frame[C.ALPHA], rtol=1e-5
        )
        np.testing.assert_allclose(
            frame[C.attribution_column("gradient", "alignment_binarized")], frame[C.ALPHA_BIN], rtol=1e-5
        )
        ok = ~frame["boundary_failed"].astype(bool)
        assert ok.sum() >= 4
        # the boundary points are the attack's: failed exactly where ρ was not found
        np.testing.assert_array_equal(ok.to_numpy(), frame[C.RHO_SUCCESS].astype(bool).to_numpy())
        # boundary IG from x_b to x is complete up to the quadrature error (float32 logits of size ~10)
        assert np.abs(frame.loc[ok, "boundary_ig_completeness_gap"]).max() < 1e-3
        assert (
            (frame.loc[ok, "boundary_cosine"] > -1) & (frame.loc[ok, "boundary_cosine"] <= 1 + 1e-6)
        ).all()
        for method in ("gradient", "smoothgrad", "boundary_gradient"):
            rows = ok if method.startswith("boundary") else slice(None)  # NaN where the attack failed
            mass = frame.loc[rows, C.attribution_column(method, "stroke_mass")]
            lift = frame.loc[rows, C.attribution_column(method, "stroke_lift")]
            assert ((mass >= 0) & (mass <= 1)).all() and (lift > 0).all()
        assert frame.loc[~ok, C.attribution_column("boundary_gradient", "stroke_mass")].isna().all()
        # IG (zero baseline) is x ⊙ (mean gradient): no mass on MNIST's black background, so
        # nearly all of it on the strokes (the rest on the anti-aliased edges, 0 < x <= 0.5)
        assert (frame[C.attribution_column("integrated_gradients", "stroke_mass")] > 0.9).all()
        assert (frame[C.attribution_column("gradient", "stroke_mass")] < 0.9).all()


def test_boundary_columns_cost_no_attack_run() -> None:
    from salign.data import load

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    )
    x, y = load("mnist", "test")
    x, y = x[:6], y[:6]
    kwargs: dict[str, Any] = {"attacks": ["deepfool", "ddn"], "budget": "fast", "steps": 20, "seed": 3}
    plain, plain_costs = evaluate_chunk(model, x, y, torch.arange(6), **kwargs)
    full, full_costs = evaluate_chunk(
        model, x, y, torch.arange(6), attributions=[("gradient", "gradient", {})], boundary=True, **kwargs
    )
    assert full_costs["forwards"] == plain_costs["forwards"]
    assert full_costs["backwards"] == plain_costs["backwards"]
    np.testing.assert_array_equal(full[C.RHO].to_numpy(), plain[C.RHO].to_numpy())
    assert full_costs["seconds_attributions"] > 0 and plain_costs["seconds_attributions"] == 0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"models": [{"tag": "pgd", "adversarial": {"method": "pgd_l2"}}]}, "models[pgd]: an adversarial-training arm needs"),
        ({"models": [{"tag": "pgd", "adversarial": {"epsilon": 1.0}}]}, "missing: method"),
        ({"models": [{"tag": "nothing"}]}, "models[nothing]: give 'spec'"),
        ({"models": [{"tag": "x", "spec": "smallnet", "adversarial": {"method": "ddn", "epsilon": 1}}]}, "remove spec"),
        ({"training": None, "sweep": None, "models": [{"tag": "pgd", "adversarial": {"method": "ddn", "epsilon": 1}}]},
         "models[pgd]: an adversarial-training arm is trained with the study's 'training' section"),
        ({"evaluation": {"attributions": ["gradcam"]}}, "unknown attribution 'gradcam'"),
        ({"evaluation": {"attributions": ["boundary_gradient"]}}, "set evaluation.boundary: true"),
        ({"evaluation": {"attributions": ["gradient", "gradient"]}}, "used twice"),
        ({"evaluation": {"norms": ["inf"], "boundary": True}, "attacks": {"names": ["fmn"]}}, "add 2 to evaluation.norms"),
    ],
)  # fmt: skip
def test_bad_study_arms_and_attributions_are_one_line_errors(change: dict[str, Any], message: str) -> None:
    cfg = _study(**change)
    if cfg.get("training") is None:
        cfg.pop("training")
        cfg.pop("sweep")
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"method": "captum.attr.GradientShap"}, "needs baselines"),
        ({"method": "captum.attr.LayerGradCam"}, "needs a layer argument"),
        ({"method": "captum.attr.NoSuchThing"}, "captum.attr has no class 'NoSuchThing'"),
        ({"method": "os.path.join"}, "is not a captum.attr class"),
        ({"method": "integrated_gradients", "options": {"n_stepz": 3}}, "does not take n_stepz"),
    ],
)
def test_a_captum_method_the_study_cannot_run_fails_before_training(
    entry: dict[str, Any], message: str, tmp_path: Path
) -> None:
    cfg = _study(evaluation={"n": 4, "attributions": [entry]})
    with pytest.raises(ConfigError) as err:
        run(cfg, out=tmp_path / "run", quiet=True)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run" / "models").exists()  # nothing was trained


def test_a_captum_class_with_its_options_runs_in_a_study_chunk() -> None:
    from salign.data import load
    from salign.experiments.config import AttributionEntry

    entry = AttributionEntry(
        method="captum.attr.GradientShap", name="gshap", options={"baselines": 0.0, "n_samples": 4}
    )
    entry.check()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    x, y = load("mnist", "test")
    frame, _ = evaluate_chunk(
        model, x[:4], y[:4], torch.arange(4), attacks=["deepfool"], budget="fast", steps=5,
        attributions=[(entry.label, entry.resolve(), entry.options)],
    )  # fmt: skip
    assert np.isfinite(frame[C.attribution_column("gshap", "alignment")]).all()

"""Studies in several norms (``evaluation.norms``): config validation, the per-norm columns of
the evaluation, L2 results identical to an L2-only study, T4_p on every sample, resuming per
chunk, and a report that shows every norm (docs/theory.md, "Other norms")."""

from __future__ import annotations

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
from _study_helpers import TINY, with_changes
from salign.errors import ConfigError
from salign.experiments import config_from_dict, load_config, run
from salign.experiments import pipeline as pipeline_mod
from salign.report import columns as C
from salign.report import render

REPO = Path(__file__).resolve().parent.parent
INF = math.inf

#: test_experiments' tiny study with 3 classes (so the nearest rival is a choice) and 16 images.
BASE = with_changes(
    TINY,
    name="tiny-norms",
    **{
        "model.kwargs.num_classes": 3,
        "evaluation.n": 16,
        "evaluation.batch_size": 8,
        "report.linear_sanity": False,
    },
)
MULTI = {
    "evaluation.norms": [2, "inf"],
    "attacks.names": {2: ["deepfool", "ddn"], "inf": ["deepfool", "fmn"]},
}
L2_ONLY = {"attacks.names": ["deepfool", "ddn"]}


def _cfg(**changes: Any) -> dict[str, Any]:
    return with_changes(BASE, **changes)


# ---------------------------------------------------------------------------------------------
# config


def test_norms_default_to_l2_and_round_trip() -> None:
    cfg = config_from_dict(_cfg())
    assert cfg.evaluation.norms == [2.0]
    multi = config_from_dict(_cfg(**{**MULTI, "evaluation.norms": ["linf", 2.0]}))
    assert multi.evaluation.norms == [INF, 2.0]
    assert multi.attacks.for_norm(INF) == ["deepfool", "fmn"] and multi.attacks.for_norm(2) == [
        "deepfool",
        "ddn",
    ]
    data = multi.to_dict()
    assert data["evaluation"]["norms"] == ["inf", 2] and set(data["attacks"]["names"]) == {"2", "inf"}
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(data))) == multi
    # one list for every norm: each attack must minimise each norm
    one_list = config_from_dict(_cfg(**{"evaluation.norms": [1, "inf"], "attacks.names": ["fmn"]}))
    assert one_list.attacks.for_norm(1.0) == one_list.attacks.for_norm(INF) == ["fmn"]


def test_unset_attack_names_are_robustness_default_ensemble_in_every_norm() -> None:
    from salign.attacks.ensemble import DEFAULT_ATTACKS

    data = _cfg(**{"evaluation.norms": [2, "inf", 1]})
    data["attacks"].pop("names", None)
    cfg = config_from_dict(data)  # a study in L∞ and L1 needs no attack list
    assert cfg.attacks.names is None
    for p in (2.0, INF, 1.0):
        assert cfg.attacks.for_norm(p) == list(DEFAULT_ATTACKS[p])
    assert "fab" in cfg.attacks.for_norm(2.0)  # FAB-T in L2, as robustness() runs it
    assert config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"evaluation.norms": [2, 3]}, r"evaluation\.norms: every norm must be 1, 2 or inf .*got 3$"),
        ({"evaluation.norms": ["l7"]}, r"evaluation\.norms: .*got 'l7'"),
        ({"evaluation.norms": [2, "l2"]}, r"norms must be distinct"),
        ({"evaluation.norms": []}, r"evaluation\.norms"),
        (
            {"evaluation.norms": [2, "inf"], "attacks.names": ["deepfool", "ddn"]},
            r"^invalid experiment config: attacks\.names: ddn does not minimise the norm inf of "
            r"evaluation\.norms \(it supports 2\)",
        ),
        (
            {"evaluation.norms": [2, "inf"], "attacks.names": {2: ["ddn"], "inf": ["alma"]}},
            r"alma does not minimise the norm inf .*\(it supports 1, 2\)",
        ),
        (
            {"evaluation.norms": [2, "inf"], "attacks.names": {2: ["ddn"]}},
            r"lists for the norms \['2'\] but evaluation\.norms is \['2', 'inf'\]",
        ),
        ({"attacks.names": {"l3": ["ddn"]}}, r"every key of attacks\.names must be 1, 2 or inf"),
        ({"attacks.names": {2: []}}, r"at least one attack"),
        ({"attacks.names": {2: ["pgd"]}}, r"unknown attack\(s\) \['pgd'\]"),
    ],
)
def test_bad_norm_configs_are_one_line_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as exc:
        config_from_dict(_cfg(**changes))
    assert "\n" not in str(exc.value)


def test_demo_norms_config_validates() -> None:
    cfg = load_config(REPO / "configs" / "demo-norms.yaml")
    assert cfg.evaluation.norms == [2.0, INF]
    assert cfg.attacks.for_norm(INF) and cfg.model.name == "smallnet"


# ---------------------------------------------------------------------------------------------
# columns


def test_norm_view_renames_a_norms_columns_and_keeps_the_shared_ones() -> None:
    frame = pd.DataFrame(
        {
            "sample_id": [0, 1],
            "pred": [1, 2],
            "alignment_binarized": [1.0, 2.0],
            "linearized_robustness": [1.5, 2.5],
            "bias_distance": [0.5, 0.5],
            "rho": [1.1, 2.1],
            "rho_ddn": [1.1, 2.1],
            "alignment_binarized_linf": [0.1, 0.2],
            "linearized_robustness_linf": [0.1, 0.5],
            "bias_distance_linf": [0.0, 0.1],
            "rho_linf": [0.11, 0.21],
            "rho_fmn_linf": [0.11, 0.21],
        }
    )
    assert C.norms_in(frame.columns) == [2.0, INF]
    assert C.attack_names(frame.columns) == ["ddn"]
    l2 = C.norm_view(frame, 2)
    assert "rho_linf" not in l2 and l2["t4_holds"].tolist() == [True, True]
    linf = C.norm_view(frame, INF)
    assert list(linf.columns[:6]) == ["sample_id", "pred", "alignment_binarized", "linearized_robustness",
                                      "bias_distance", "rho"]  # fmt: skip
    assert linf["rho"].tolist() == [0.11, 0.21] and C.attack_names(linf.columns) == ["fmn"]
    # |0.2 − 0.5| = 0.3 > 0.1: the second sample violates T4 in L∞
    assert linf["t4_holds"].tolist() == [True, False]


# ---------------------------------------------------------------------------------------------
# end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An L2-only study, and the same models (copied, not retrained) evaluated in L2 and L∞."""
    root = tmp_path_factory.mktemp("norms")
    l2, multi = root / "l2", root / "multi"
    run(_cfg(**L2_ONLY), out=l2, quiet=True)
    (multi).mkdir()
    shutil.copytree(l2 / "models", multi / "models")
    run(_cfg(**MULTI, **{"report.figures": True}), out=multi, quiet=True)
    return {"l2": l2, "multi": multi}


def test_l2_columns_are_those_of_an_l2_only_study(runs: dict[str, Path]) -> None:
    for tag in ("0", "1"):
        alone = pd.read_csv(runs["l2"] / "eval" / f"{tag}.csv")
        both = pd.read_csv(runs["multi"] / "eval" / f"{tag}.csv")
        assert list(both.columns[: len(alone.columns)]) == list(alone.columns)
        pd.testing.assert_frame_equal(both[alone.columns], alone, check_exact=True)
    pd.testing.assert_frame_equal(
        pd.read_csv(runs["multi"] / "summary.csv"), pd.read_csv(runs["l2"] / "summary.csv"), check_exact=True
    )


def test_linf_columns_hold_the_dual_norm_quantities(runs: dict[str, Path]) -> None:
    frame = pd.read_csv(runs["multi"] / "eval" / "0.csv")
    for name in ("alignment_binarized", "linearized_robustness", "bias_distance", "rival", "rho", "rho_success",
                 "rho_fmn", "rho_deepfool", "best_attack", "adv_class"):  # fmt: skip
        assert f"{name}_linf" in frame, name
    assert "rho_ddn_linf" not in frame and "pred_linf" not in frame
    assert frame["rho_success_linf"].all()
    rho2, rho_inf = frame["rho"].to_numpy(), frame["rho_linf"].to_numpy()
    # ‖e‖_∞ ≤ ‖e‖_2: the L2 adversarial is an L∞ one no farther; ρ_∞ ≥ ρ_2/√d holds for the minima
    assert np.median(rho_inf) < np.median(rho2) and np.all(rho_inf * 8 >= 0.5 * rho2)
    # α_∞ = |⟨x, g⟩| / ‖g‖₁ with g = ∇(Ψ^i − Ψ^{j*_∞}), recomputed here by autograd
    model = salign.models.load(runs["multi"] / "models" / "0" / "checkpoint.safetensors")
    x, _ = salign.data.load("synthetic-gaussian", "test")
    xs = x[torch.tensor(frame["sample_id"].to_numpy())].double().requires_grad_(True)
    logits = model.double()(xs)
    i = torch.tensor(frame["pred"].to_numpy())
    j = torch.tensor(frame["rival_linf"].to_numpy())
    diff = logits.gather(1, i[:, None]) - logits.gather(1, j[:, None])
    (g,) = torch.autograd.grad(diff.sum(), xs)
    g = g.flatten(1)
    inner = (xs.detach().flatten(1) * g).sum(1)
    np.testing.assert_allclose(
        frame["alignment_binarized_linf"], (inner.abs() / g.abs().sum(1)).numpy(), rtol=1e-4
    )
    np.testing.assert_allclose(
        frame["linearized_robustness_linf"], (diff[:, 0].detach() / g.abs().sum(1)).numpy(), rtol=1e-4
    )
    # ‖g‖₂ ≤ ‖g‖₁ ≤ √d ‖g‖₂ (d = 64) and j*_∞ minimises margin / ‖g_j‖₁: ρ̃_2 / 8 ≤ ρ̃_∞ ≤ ρ̃_2
    lin2, lin_inf = frame["linearized_robustness"].to_numpy(), frame["linearized_robustness_linf"].to_numpy()
    assert np.all(lin_inf <= lin2 * (1 + 1e-6)) and np.all(lin_inf >= lin2 / 8 * (1 - 1e-6))


def test_t4_holds_in_every_norm_and_the_report_shows_both(runs: dict[str, Path]) -> None:
    out = runs["multi"]
    report = render(out)
    assert set(report.summaries) == {2.0, INF}
    for p, sfx in ((2.0, ""), (INF, "_linf")):
        table = report.summaries[p]
        assert (table["t4_holds"] == table["t4_n"]).all() and table["t4_n"].iloc[-1] == 32
        assert report.checks[f"t4_holds_everywhere{sfx}"]
        assert pd.read_csv(out / f"summary{sfx}.csv")["rho_median"].tolist() == pytest.approx(
            table["rho_median"].tolist()
        )
    frame = pd.read_csv(out / "eval" / "1.csv")
    gap = np.abs(frame["alignment_binarized_linf"] - frame["linearized_robustness_linf"])
    assert (gap <= frame["bias_distance_linf"] * (1 + 1e-5) + 1e-6).all()
    linf_rho = report.summaries[INF].set_index("model")["rho_median"]
    assert linf_rho["0"] == pytest.approx(np.median(pd.read_csv(out / "eval" / "0.csv")["rho_linf"]))
    assert [s for s in report.sentences if s.startswith("L2: The T4 bound")]
    assert [s for s in report.sentences if s.startswith("L∞: The T4 bound") and "32/32" in s]
    assert sum("Clean test accuracy" in s for s in report.sentences) == 1
    for name in (
        "p2_alpha_vs_rho",
        "p2_alpha_vs_rho_linf",
        "p3_medians_vs_lambda_linf",
        "p5_linearization_linf",
    ):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name
    assert "p1_saliency_gallery_linf" not in report.figures
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Table T1 — L2" in page and "Table T1 — L∞" in page and "alt='p2_alpha_vs_rho_linf'" in page
    assert "### L∞" in (out / "summary.md").read_text(encoding="utf-8")
    # the L2-only run's report keeps its single-norm layout
    alone = (runs["l2"] / "report.html").read_text(encoding="utf-8")
    assert "<h2>Table T1</h2>" in alone and "L∞" not in alone


def test_a_linf_only_study_reports_linf(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "linf"
    out.mkdir()
    shutil.copytree(runs["l2"] / "models", out / "models")
    cfg = _cfg(**{"evaluation.norms": ["inf"], "sweep.lambdas": [0], "attacks.names": ["fmn"]})
    report = run(cfg, out=out, quiet=True)
    frame = pd.read_csv(out / "eval" / "0.csv")
    assert "rho" not in frame and "alignment" not in frame and "rho_linf" in frame and "pred" in frame
    assert report.summary_csv.name == "summary_linf.csv" and set(report.summaries) == {INF}
    assert report.sentences[0].startswith("In L∞, α = |⟨x, g⟩|/‖g‖")
    assert report.summary["t4_holds"].iloc[0] == 16


def test_resume_mid_norm_reproduces_the_uninterrupted_table(
    runs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copytree(runs["l2"] / "models", out / "models")
    real = salign.robustness
    calls: list[float] = []

    def dying(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["norm"])
        if len(calls) == 4:  # chunk 2 of model "0": its L2 attacks ran, then the kill in L∞
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(salign, "robustness", dying)
    cfg = _cfg(**MULTI)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, out=out, quiet=True)
    assert len(list((out / "eval" / ".parts" / "0").glob("*.csv"))) == 1
    monkeypatch.setattr(salign, "robustness", real)
    chunks: list[int] = []
    real_chunk = pipeline_mod.evaluate_chunk
    monkeypatch.setattr(
        pipeline_mod, "evaluate_chunk", lambda *a, **k: (chunks.append(1), real_chunk(*a, **k))[1]
    )
    run(cfg, out=out, quiet=True)
    assert len(chunks) == 3  # the missing chunk of model "0", both of model "1"
    for tag in ("0", "1"):
        resumed = pd.read_csv(out / "eval" / f"{tag}.csv")
        pd.testing.assert_frame_equal(
            resumed, pd.read_csv(runs["multi"] / "eval" / f"{tag}.csv"), check_exact=True
        )


def test_a_run_directory_from_before_norms_still_resumes(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "old"
    shutil.copytree(runs["l2"], out)
    record = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    del record["evaluation"]["norms"]  # as written before evaluation.norms existed
    (out / "config.yaml").write_text(yaml.safe_dump(record, sort_keys=False), encoding="utf-8")
    before = (out / "eval" / "0.csv").read_bytes()
    run(_cfg(**L2_ONLY), out=out, quiet=True)
    assert (out / "eval" / "0.csv").read_bytes() == before
    with pytest.raises(ConfigError, match="differs in: attacks, evaluation"):
        run(_cfg(**MULTI), out=out, quiet=True)

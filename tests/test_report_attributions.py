"""The report's attribution methods, boundary attributions and robustifier arms: the bootstrap
median, the long table attributions.csv, arms.csv, the comparison at matched robustness, P9/P10,
the reading, and that runs without these columns render as before."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from _report_helpers import ARMS, write_arms_run, write_synthetic_run
from salign.errors import InputError
from salign.report import load_run, render
from salign.report.attributions import (
    ARMS_FILE,
    ATTRIBUTIONS_FILE,
    BOUNDARY_METHOD,
    arm_kind,
    arm_parameter,
    attribution_summary,
    interpolate_line,
    robustifier,
)
from salign.report.stats import bootstrap_median, bootstrap_medians


def test_bootstrap_medians_are_the_medians_of_the_resamples() -> None:
    """Oracle: the counting shortcut equals np.median of each resample drawn with the same seed
    (odd and even n, ties); NaN and ±inf entries are left out."""
    for n in (1, 2, 7, 50):
        v = np.round(np.random.default_rng(n).normal(size=n), 1)  # ties
        draws = np.random.default_rng(5).integers(0, n, size=(300, n))
        expected = np.median(v[draws], axis=1)
        np.testing.assert_array_equal(bootstrap_medians(v, n_bootstrap=300, seed=5), expected)
    v = np.random.default_rng(0).normal(size=40)
    noisy = np.concatenate([v[:10], [np.nan, np.inf], v[10:], [-np.inf]])
    assert bootstrap_median(noisy, seed=3, n_bootstrap=200) == bootstrap_median(v, seed=3, n_bootstrap=200)
    assert math.isnan(bootstrap_median([np.nan, np.inf]).value) and bootstrap_median([np.nan]).n == 0
    with pytest.raises(InputError, match="level"):
        bootstrap_median(v, level=1.0)
    with pytest.raises(InputError, match="n_bootstrap"):
        bootstrap_median(v, n_bootstrap=0)


def test_bootstrap_median_ci_covers_the_true_median_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(11)
    true = math.exp(0.3)  # median of a lognormal(0.3, 0.5)
    covered = [
        (ci.low <= true <= ci.high)
        for ci in (
            bootstrap_median(np.exp(rng.normal(0.3, 0.5, 101)), n_bootstrap=400, seed=k) for k in range(80)
        )
    ]
    assert 0.85 <= np.mean(covered) <= 1.0
    small = bootstrap_median(np.exp(rng.normal(0.3, 0.5, 100)), n_bootstrap=1000, seed=1)
    large = bootstrap_median(np.exp(rng.normal(0.3, 0.5, 1600)), n_bootstrap=1000, seed=1)
    assert large.low <= true <= large.high and small.low <= true <= small.high
    ratio = (small.high - small.low) / (large.high - large.low)
    assert 2.5 < ratio < 6.5  # ≈ √16 = 4


def test_interpolate_line() -> None:
    line_rho, line_alpha = np.array([3.0, 1.0, 2.0]), np.array([3.0, 1.0, 2.0])  # α = ρ, out of order
    assert interpolate_line(1.5, line_rho, line_alpha) == pytest.approx([1.5])
    assert interpolate_line(2.75, line_rho, 2 * line_alpha) == pytest.approx([5.5])
    assert np.isnan(interpolate_line(4.0, line_rho, line_alpha)).all()
    assert np.isnan(interpolate_line(0.5, line_rho, line_alpha)).all()
    # one line per column (bootstrap replicates)
    cols = interpolate_line(
        np.array([1.5, 2.5]), np.stack([line_rho, line_rho], 1), np.stack([line_alpha, -line_alpha], 1)
    )
    assert cols == pytest.approx([1.5, -2.5])


def test_arms_report(tmp_path: Path) -> None:
    run_dir = write_arms_run(tmp_path / "run")
    report = render(run_dir, n_bootstrap=200, figures=False)
    run = load_run(run_dir)
    assert [m.tag for m in run.models] == list(ARMS)
    assert [arm_kind(m) for m in run.models] == ["sweep"] * 3 + ["adversarial"] * 2 + ["listed"]
    assert [robustifier(m) for m in run.models][2:] == ["gradient penalty", "pgd_l2", "pgd_l2", "listed"]
    assert arm_parameter(run.models[3]) == 0.5 and math.isnan(arm_parameter(run.models[5]))

    table = pd.read_csv(run_dir / ATTRIBUTIONS_FILE)
    methods = ["gradient", "integrated_gradients", "boundary_gradient", "boundary_integrated_gradients"]
    assert list(dict.fromkeys(table["method"])) == [*methods, BOUNDARY_METHOD]
    assert len(table) == 7 * 5  # 6 models and the pooled rows, 4 methods + the boundary rows
    # The medians are the NaN-ignoring medians of the saved columns, inside their intervals.
    frame = pd.read_csv(run_dir / "eval" / "pgd-0.5.csv")
    row = table[(table["model"] == "pgd-0.5") & (table["method"] == "integrated_gradients")].iloc[0]
    for q in ("alignment", "alignment_binarized", "stroke_mass", "stroke_lift", "rank_correlation"):
        assert row[f"{q}_median"] == pytest.approx(np.nanmedian(frame[f"attr_integrated_gradients_{q}"]))
        assert row[f"{q}_low"] <= row[f"{q}_median"] <= row[f"{q}_high"]
    assert row["n"] == 98 and row["spearman_alignment_rho_low"] > 0.5
    boundary = table[(table["model"] == "pgd-0.5") & (table["method"] == BOUNDARY_METHOD)].iloc[0]
    assert boundary["boundary_cosine_median"] == pytest.approx(np.nanmedian(frame["boundary_cosine"]))
    assert boundary["boundary_failed_rate"] == pytest.approx(2 / 101)
    gap = np.nanmax(np.abs(frame["boundary_ig_completeness_gap"]))
    assert boundary["boundary_ig_completeness_gap_max_abs"] == pytest.approx(gap)
    pooled = table[(table["model"] == "pooled") & (table["method"] == "gradient")].iloc[0]
    assert pooled["spearman_alignment_rho_n"] == 6 * 98

    arms = pd.read_csv(run_dir / ARMS_FILE)
    for tag, (_, _, rho, alpha, quality) in ARMS.items():
        r = arms[arms["model"].astype(str) == tag].iloc[0]
        assert (r["rho_median"], r["alpha_median"]) == pytest.approx((rho, alpha))
        assert r["rho_low"] < rho < r["rho_high"] and r["quality_low"] < quality < r["quality_high"]

    # The gradient-penalty line is α = ρ: the PGD arm at ρ = 1.5 with α = 2 lies +0.5 above it.
    summary = report.attributions
    assert summary is not None
    near, far = summary.comparisons
    assert (near.model, near.reference, near.difference) == (
        "pgd-0.5",
        pytest.approx(1.5),
        pytest.approx(0.5),
    )
    assert near.low < 0.5 < near.high and near.verdict == "higher"
    assert far.model == "pgd-2" and far.verdict == "outside" and far.rho_range == (1.0, 3.0)
    assert summary.quality_comparisons[0].reference == pytest.approx(0.3, abs=0.02)  # between 0.2 and 0.4

    text = "\n".join(report.sentences)
    assert "a difference of +0.500 [" in text and "more than the gradient penalty at the same ρ" in text
    assert "pgd-2 (pgd_l2, ε=2): its median ρ = 4.00 lies outside the sweep's ρ range [1.00, 3.00]" in text
    assert "gradient: median rank correlation with the image rose from" in text
    assert "integrated_gradients: median rank correlation with the image did NOT rise with λ" in text
    assert (
        "The boundary_gradient map's median rank correlation with the image exceeds the gradient map's"
        in text
    )
    page = report.html.read_text(encoding="utf-8")
    assert "<h2>Attributions and robustifiers</h2>" in page and "Boundary attributions" in page
    md = (run_dir / "summary.md").read_text(encoding="utf-8")
    assert "### Attributions and robustifiers" in md and "| pgd-0.5 | pgd_l2 | 0.5 | 101 |" in md


def test_attribution_figures(tmp_path: Path) -> None:
    from salign.report.figures import (
        ATTRIBUTION_FIGURES,
        figure_matched_robustness,
        save_figure,
        save_figures,
    )

    run = load_run(write_arms_run(tmp_path / "run", n=51))
    summary = attribution_summary(run, n_bootstrap=100)
    fig = figure_matched_robustness(run, summary)
    ax = fig.axes[0]
    lines = {c.get_label(): c.lines[0].get_xdata() for c in ax.containers}
    assert list(lines) == ["gradient penalty", "pgd_l2", "mine (listed)"]
    assert list(lines["gradient penalty"]) == pytest.approx([1.0, 2.0, 3.0])
    assert list(lines["pgd_l2"]) == pytest.approx([1.0, 1.5, 4.0])  # from the λ = 0 model, in ε order
    assert len(fig.axes) == 2  # α and the gradient map's quality
    written = save_figures(
        run, summary, tmp_path, names=("p9_quality_vs_lambda",), figures=ATTRIBUTION_FIGURES
    )
    written["p10"] = save_figure(fig, tmp_path / "p10.png")
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000


def test_runs_without_the_new_columns(tmp_path: Path) -> None:
    """An old run (no attribution columns, no "arm" records) renders without the section or its
    files; adversarial arms without attribution columns still get arms.csv and the comparison."""
    old = write_synthetic_run(tmp_path / "old", lambdas=(0.0, 1.0), n=40)
    (old / ATTRIBUTIONS_FILE).write_text("stale, from an earlier render\n", encoding="utf-8")
    report = render(old, n_bootstrap=50, figures=False)
    assert report.attributions is None
    assert not (old / ATTRIBUTIONS_FILE).exists() and not (old / ARMS_FILE).exists()
    assert "Attributions and robustifiers" not in report.html.read_text(encoding="utf-8")
    assert [arm_kind(m) for m in load_run(old).models] == ["sweep", "sweep"]
    arms_only = load_run(write_arms_run(tmp_path / "arms", n=31, attributions=False))
    summary = attribution_summary(arms_only, n_bootstrap=50)
    assert summary is not None and summary.attributions is None
    assert summary.comparisons[0].difference == pytest.approx(0.5) and summary.quality_comparisons == []

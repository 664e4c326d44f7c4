"""Report: statistics (vs scipy and known population values), T1 table, figures and HTML."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from _report_helpers import write_synthetic_run
from salign.errors import DataError, InputError, MissingFileError
from salign.report import bootstrap_correlation, bound_holds, load_run, pearson, render, spearman, spread
from salign.report.stats import average_ranks


def _bivariate(n: int, r: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    y = r * x + math.sqrt(1 - r * r) * rng.normal(size=n)
    return x, y


def test_correlations_match_scipy_with_ties_and_nonfinite() -> None:
    x, y = _bivariate(400, 0.5, 1)
    x[:80] = np.round(x[:80])  # ties
    assert spearman(x, y) == pytest.approx(ss.spearmanr(x, y).statistic, abs=1e-12)
    assert pearson(x, y) == pytest.approx(ss.pearsonr(x, y).statistic, abs=1e-12)
    np.testing.assert_allclose(average_ranks(x), ss.rankdata(x))
    y2 = y.copy()
    y2[:5] = np.inf  # failed attacks: dropped, not mixed in
    assert spearman(x, y2) == pytest.approx(ss.spearmanr(x[5:], y[5:]).statistic, abs=1e-12)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_bootstrap_ci_covers_the_true_correlation(method: str) -> None:
    r = 0.6
    # Population Spearman of a bivariate normal: (6/π)·asin(r/2).
    truth = r if method == "pearson" else 6 / math.pi * math.asin(r / 2)
    covered = 0
    for seed in range(20):
        x, y = _bivariate(300, r, seed)
        c = bootstrap_correlation(x, y, method=method, n_bootstrap=400, seed=seed)
        assert c.low < c.value < c.high
        assert c.n == 300
        covered += c.low <= truth <= c.high
    # Nominal 95%: with 20 trials, fewer than 16 covered would be a 1-in-1000 event.
    assert covered >= 16


def test_bootstrap_is_seeded_and_matches_scipy_bootstrap() -> None:
    x, y = _bivariate(250, 0.4, 3)
    a = bootstrap_correlation(x, y, seed=7, n_bootstrap=1000)
    b = bootstrap_correlation(x, y, seed=7, n_bootstrap=1000)
    assert (a.low, a.high) == (b.low, b.high)
    ref = ss.bootstrap(
        (x, y),
        lambda u, v: ss.spearmanr(u, v).statistic,
        paired=True,
        vectorized=False,
        n_resamples=1000,
        method="percentile",
        rng=np.random.default_rng(0),
    ).confidence_interval
    assert a.low == pytest.approx(ref.low, abs=0.03)
    assert a.high == pytest.approx(ref.high, abs=0.03)


def test_bootstrap_degenerate_and_bad_arguments() -> None:
    c = bootstrap_correlation([1.0, 2.0], [3.0, 4.0])
    assert math.isnan(c.value) and c.n == 2
    c = bootstrap_correlation(np.ones(10), np.arange(10.0))
    assert math.isnan(c.value)
    with pytest.raises(InputError, match="method"):
        bootstrap_correlation([1.0], [1.0], method="kendall")
    with pytest.raises(InputError, match="same length"):
        pearson([1.0, 2.0], [1.0])


def test_spread_and_bound() -> None:
    s = spread([1.0, 2.0, 3.0, 4.0, np.inf, np.nan])
    assert (s.median, s.q25, s.q75, s.n) == (2.5, 1.75, 3.25, 4)
    ok = bound_holds([1.0, 1.0, 1.0], [1.2, 1.2, 1.0], [0.2, 0.1, 0.0])
    assert ok.tolist() == [True, False, True]
    assert not bound_holds([np.nan], [1.0], [1.0])[0]


def test_render_synthetic_run(tmp_path: Path) -> None:
    run_dir = write_synthetic_run(tmp_path / "run", n=150, views=20)
    report = render(run_dir, n_bootstrap=200)
    assert report.html.is_file() and report.summary_csv.is_file()
    assert set(report.figures) >= {
        "p1_saliency_gallery",
        "p2_alpha_vs_rho",
        "p3_medians_vs_lambda",
        "p4_accuracy_vs_lambda",
        "p5_linearization",
        "p6_bias_histograms",
        "p7_rival_agreement",
    }
    for path in report.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(report.summary_csv)
    assert list(summary["model"]) == ["0", "0.1", "1", "10", "pooled"]
    # The T1 medians are the medians of the saved tables.
    table = pd.read_csv(run_dir / "eval" / "1.csv")
    row = summary[summary["model"] == "1"].iloc[0]
    assert row["rho_median"] == pytest.approx(float(np.median(table["rho"])))
    assert row["alpha_median"] == pytest.approx(float(np.median(table["alignment"])))
    assert row["spearman_alpha_rho"] == pytest.approx(
        ss.spearmanr(table["alignment"], table["rho"]).statistic
    )
    assert int(row["t4_holds"]) == int(row["t4_n"]) == 150
    assert report.checks == {
        "median_alpha_increasing": True,
        "median_rho_increasing": True,
        "pooled_spearman_ci_above_0": True,
        "t4_holds_everywhere": True,
    }
    page = report.html.read_text(encoding="utf-8")
    # Self-contained: every image is a data URI, nothing is fetched (plotly.js, inlined, holds
    # such strings for features the page does not use: tests/test_report_browser.py watches the
    # browser's requests).
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    assert "<img" in markup
    assert not re.search(r"""src=['"](?!data:)""", markup)
    assert not re.search(r"""href=['"]http""", markup)
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert "holds on 600/600 samples" in page
    assert "median α rose" in page
    # Formulas render as maths: no raw TeX scripts left in the text.
    assert "∇Ψ<sup>i*</sup>" in markup and "β<sub>j*</sub>" in markup and "α<sub>bin</sub>" in markup
    assert not re.search(r"[_^]\{", markup)
    # The interactive section: every sample a point, the first 20 with images.
    assert "Explore samples" in page and "images for the first 20 of the 150 samples" in page


def test_summary_is_deterministic_and_single_model_report(tmp_path: Path) -> None:
    from salign.report.tables import summary_table

    run_dir = write_synthetic_run(tmp_path / "run", lambdas=(0.0, 1.0), n=80)
    first = summary_table(load_run(run_dir), n_bootstrap=100, seed=3)
    second = summary_table(load_run(run_dir), n_bootstrap=100, seed=3)
    pd.testing.assert_frame_equal(first, second)
    single = write_synthetic_run(tmp_path / "single", lambdas=(0.0,), n=60)
    report = render(single, n_bootstrap=100)
    assert "p3_medians_vs_lambda" not in report.figures  # needs a sweep
    assert "p2_alpha_vs_rho" in report.figures
    assert report.checks == {}
    assert "Across the 60 images, Spearman(α, ρ)" in report.html.read_text(encoding="utf-8")


def test_load_run_errors(tmp_path: Path) -> None:
    with pytest.raises(MissingFileError, match="run directory not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no finished evaluation"):
        load_run(tmp_path / "empty")


def test_math_html_renders_tex_scripts_only_in_formulas() -> None:
    from salign.report.html import math_html

    assert math_html("α = |⟨x,∇Ψ^{i*}⟩|/‖∇Ψ^{i*}‖") == "α = |⟨x,∇Ψ<sup>i*</sup>⟩|/‖∇Ψ<sup>i*</sup>‖"
    assert math_html("|β_j*|/‖g‖_q, ρ̃_p") == "|β<sub>j*</sub>|/‖g‖<sub>q</sub>, ρ̃<sub>p</sub>"
    assert math_html("summary_linf.csv <b>") == "summary_linf.csv &lt;b&gt;"


def test_embedded_views_respect_the_image_budget(tmp_path: Path) -> None:
    """Samples in order, every model's views of a sample together, until the megabyte cap; the
    clean image of a sample is embedded once for all models."""
    from salign.report.interactive import embedded_views

    run = load_run(write_synthetic_run(tmp_path / "run", n=60, views=50))
    full = embedded_views(run.models, image_mb=100)
    assert full["count"] == {m.tag: 50 for m in run.models}
    # 50 shared images + 3 views per model and sample (noise: every URI distinct)
    assert len(full["uris"]) == 50 + 3 * 4 * 50
    first = full["views"]["0"]["0"]
    assert all(full["views"][t]["0"][0] == first[0] for t in full["views"])
    size = sum(map(len, full["uris"]))
    capped = embedded_views(run.models, image_mb=size / 4 / 1e6)
    k = capped["count"]["0"]
    assert 10 <= k <= 15 and set(capped["count"].values()) == {k}  # a quarter, whole samples
    assert sum(map(len, capped["uris"])) < size / 4 + size / 50 * 1.01  # at most one sample over
    assert embedded_views(run.models, image_mb=0)["count"] == {m.tag: 0 for m in run.models}


@pytest.mark.slow
@pytest.mark.parametrize("models", [4, 12])
def test_report_stays_under_10_mb_with_1000_samples_per_model(tmp_path: Path, models: int) -> None:
    """Worst case (white-noise views, every figure drawn): 4 models get the default 2 MB of
    sample images; 12 models leave less of the 9.5 MB page budget, so fewer samples get images,
    and the page still stays under 10 MB (docs/benchmarks.md, "Interactive report size")."""
    lambdas = tuple(float(k) for k in range(models))
    run_dir = write_synthetic_run(tmp_path / "run", lambdas=lambdas, n=1000, views=200)
    report = render(run_dir, n_bootstrap=100)
    size = report.html.stat().st_size
    assert size < 10e6
    page = report.html.read_text(encoding="utf-8")
    counts = json.loads(re.search(r"id='salign-views'>(.*?)</script>", page, flags=re.S).group(1))["count"]
    assert len(set(counts.values())) == 1 and next(iter(counts.values())) >= 20
    assert page.count('"meta":"') >= 3 * models  # every model's three traces are there

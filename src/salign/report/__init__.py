"""Statistics, figures P1–P8, table T1 and the self-contained HTML report of a run directory.

``render(run_dir)`` re-reads the saved per-sample tables (nothing is recomputed), writes
``summary.csv``, ``figures/*.png`` and ``report.html`` (with the interactive scatter of
:mod:`salign.report.interactive`), and returns a :class:`Report`. A study
with several norms (``evaluation.norms``) gets T1, the norm-dependent figures
(:data:`~salign.report.figures.NORM_FIGURES`), the reading and the T4 check once per norm; a
norm p ≠ 2 writes ``summary_linf.csv`` / ``figures/p2_alpha_vs_rho_linf.png`` (its suffix). The
statistics in :mod:`salign.report.stats` need only numpy; the figures and tables need the
``report`` extra (matplotlib, pandas, plotly).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from salign.report.rundata import (
    CONFIG_FILE,
    EVAL_DIR,
    FIGURES_DIR,
    MODELS_DIR,
    REPORT_FILE,
    SUMMARY_FILE,
    SUMMARY_MD_FILE,
    RunData,
    lambda_tag,
    load_run,
    summary_file,
)
from salign.report.stats import (
    Correlation,
    MedianCI,
    Spread,
    bootstrap_correlation,
    bootstrap_median,
    bound_holds,
    pearson,
    spearman,
    spread,
)

__all__ = [
    "CONFIG_FILE",
    "EVAL_DIR",
    "FIGURES_DIR",
    "MODELS_DIR",
    "REPORT_FILE",
    "SUMMARY_FILE",
    "SUMMARY_MD_FILE",
    "Correlation",
    "MedianCI",
    "Report",
    "RunData",
    "Spread",
    "bootstrap_correlation",
    "bootstrap_median",
    "bound_holds",
    "lambda_tag",
    "load_run",
    "pearson",
    "render",
    "spearman",
    "spread",
    "summary_file",
]


@dataclass(frozen=True)
class Report:
    """What :func:`render` wrote: paths, the T1 table, the reading and the trend checks.

    ``summary``/``summary_csv`` are the first norm's (L2 when evaluated); ``summaries`` has T1 of
    every norm (norm → table), and the checks of a norm p ≠ 2 carry its suffix
    (``t4_holds_everywhere_linf``).
    """

    html: Path
    summary_csv: Path
    figures: dict[str, Path]
    summary: Any  # pandas.DataFrame
    sentences: list[str]
    checks: dict[str, bool]
    summaries: dict[float, Any] = field(default_factory=dict)
    #: the "Attributions and robustifiers" tables (:class:`salign.report.attributions.AttributionSummary`),
    #: None for a run without attribution columns and without adversarial-training arms
    attributions: Any = None


def render(
    run_dir: str | os.PathLike[str],
    *,
    n_bootstrap: int | None = None,
    seed: int | None = None,
    level: float = 0.95,
    figures: bool | None = None,
) -> Report:
    """Compute T1, draw P1–P8 and write ``summary.csv``, ``summary.md``, ``figures/`` and ``report.html``.

    A run with attribution columns (``evaluation.attributions``, ``evaluation.boundary``) or
    adversarial-training arms also gets ``attributions.csv`` (when it has attribution columns),
    ``arms.csv``, figures P9/P10, their reading and the report section "Attributions and
    robustifiers" (:mod:`salign.report.attributions`).

    Args:
        run_dir: a run directory with finished evaluations (``eval/<model>.csv`` + ``.json``).
        n_bootstrap: bootstrap resamples for the correlation intervals (default: the config's
            ``report.n_bootstrap`` or 2000).
        seed: bootstrap seed (default: the config's ``seed`` or 0).
        level: confidence level of the intervals.
        figures: draw the PNG figures (default: the config's ``report.figures`` or True);
            False writes only summary.csv and a report.html without figures.
    """
    from salign._io import atomic_open, write_text_atomic
    from salign.report.columns import norm_suffix
    from salign.report.figures import NORM_FIGURES, save_figures
    from salign.report.html import render_html, write_html
    from salign.report.interactive import IMAGE_MB, PAGE_MB, interactive_html
    from salign.report.markdown import summary_markdown
    from salign.report.reading import attribution_reading, reading, trend_checks
    from salign.report.tables import summary_table

    run = load_run(run_dir)
    report_cfg = run.config.get("report", {}) if isinstance(run.config.get("report"), dict) else {}
    if n_bootstrap is None:
        n_bootstrap = int(report_cfg.get("n_bootstrap", 2000))
    if seed is None:
        seed = int(run.config.get("seed", 0) or 0)
    if figures is None:
        figures = bool(report_cfg.get("figures", True))
    root = Path(run_dir)
    norms = run.norms or [2.0]
    several = len(norms) > 1
    summaries: dict[float, Any] = {}
    written: dict[str, Path] = {}
    sentences: list[str] = []
    checks: dict[str, bool] = {}
    for i, p in enumerate(norms):
        view = run.for_norm(p)
        sfx = norm_suffix(p)
        summary = summary_table(view, n_bootstrap=n_bootstrap, seed=seed, level=level)
        summaries[p] = summary
        with atomic_open(root / summary_file(p), "w", encoding="utf-8", newline="") as fh:
            summary.to_csv(fh, index=False)
        if figures:
            names = None if i == 0 else NORM_FIGURES
            written.update(save_figures(view, summary, root / FIGURES_DIR, names=names, suffix=sfx))
        sentences += reading(summary, level=level, norm=p, label=several, accuracy=i == 0)
        if len(run.models) > 1:
            checks.update({k + sfx: v for k, v in trend_checks(summary).items()})
    attributions, attr_section, attr_figures = _render_attributions(
        run, n_bootstrap=n_bootstrap, seed=seed, level=level, figures=figures
    )
    if attributions is not None:
        sentences += attribution_reading(attributions)
    first = norms[0]
    summary_path = root / summary_file(first)
    config_text = (root / CONFIG_FILE).read_text(encoding="utf-8") if (root / CONFIG_FILE).is_file() else ""
    explore = run.for_norm(first)

    def page_with_images(image_mb: float) -> str:
        section = interactive_html(explore, image_mb=image_mb)
        return render_html(
            run,
            summaries,
            written,
            sentences,
            config_text=config_text,
            checks=checks,
            interactive=section,
            attributions=attr_section,
        )

    # The sample images get report.interactive_mb, or what the rest of the page leaves of PAGE_MB.
    page = page_with_images(0.0)
    image_mb = min(float(report_cfg.get("interactive_mb", IMAGE_MB)), PAGE_MB - len(page.encode()) / 1e6)
    if image_mb > 0:
        page = page_with_images(image_mb)
    html_path = write_html(root / REPORT_FILE, page)
    write_text_atomic(
        root / SUMMARY_MD_FILE, summary_markdown(run, summaries, sentences, checks, attributions)
    )
    return Report(
        html_path,
        summary_path,
        {**written, **attr_figures},
        summaries[first],
        sentences,
        checks,
        summaries,
        attributions,
    )


def _render_attributions(
    run: RunData, *, n_bootstrap: int, seed: int, level: float, figures: bool
) -> tuple[Any, str, dict[str, Path]]:
    """The "Attributions and robustifiers" part of :func:`render`: writes ``attributions.csv``,
    ``arms.csv`` (removing stale ones the run no longer has) and P9/P10; returns the
    AttributionSummary (None when the run has no such columns or arms), the HTML section and the
    figures."""
    from salign._io import atomic_open
    from salign.report.attributions import ARMS_FILE, ATTRIBUTIONS_FILE, attribution_summary
    from salign.report.figures import ATTRIBUTION_FIGURES, save_figures
    from salign.report.html import attributions_html

    summary = attribution_summary(run, n_bootstrap=n_bootstrap, seed=seed, level=level)
    tables = (summary.attributions, summary.arms) if summary is not None else (None, None)
    for name, table in zip((ATTRIBUTIONS_FILE, ARMS_FILE), tables, strict=True):
        if table is None:  # a stale table of an earlier render of this directory
            (run.run_dir / name).unlink(missing_ok=True)
            continue
        with atomic_open(run.run_dir / name, "w", encoding="utf-8", newline="") as fh:
            table.to_csv(fh, index=False)
    if summary is None:
        return None, "", {}
    drawn = (
        save_figures(run, summary, run.run_dir / FIGURES_DIR, figures=ATTRIBUTION_FIGURES) if figures else {}
    )
    return summary, attributions_html(summary, drawn), drawn

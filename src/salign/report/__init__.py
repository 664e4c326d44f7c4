"""Statistics, figures P1–P8, table T1 and the self-contained HTML report of a run directory.

``render(run_dir)`` re-reads the saved per-sample tables (nothing is recomputed), writes
``summary.csv``, ``figures/*.png`` and ``report.html``, and returns a :class:`Report`. The
statistics in :mod:`salign.report.stats` need only numpy; the figures and tables need the
``report`` extra (matplotlib, pandas).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
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
)
from salign.report.stats import (
    Correlation,
    Spread,
    bootstrap_correlation,
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
    "Report",
    "RunData",
    "Spread",
    "bootstrap_correlation",
    "bound_holds",
    "lambda_tag",
    "load_run",
    "pearson",
    "render",
    "spearman",
    "spread",
]


@dataclass(frozen=True)
class Report:
    """What :func:`render` wrote: paths, the T1 table, the reading and the trend checks."""

    html: Path
    summary_csv: Path
    figures: dict[str, Path]
    summary: Any  # pandas.DataFrame
    sentences: list[str]
    checks: dict[str, bool]


def render(
    run_dir: str | os.PathLike[str],
    *,
    n_bootstrap: int | None = None,
    seed: int | None = None,
    level: float = 0.95,
    figures: bool | None = None,
) -> Report:
    """Compute T1, draw P1–P8 and write ``summary.csv``, ``summary.md``, ``figures/`` and ``report.html``.

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
    from salign.report.figures import save_figures
    from salign.report.html import render_html, write_html
    from salign.report.markdown import summary_markdown
    from salign.report.reading import reading, trend_checks
    from salign.report.tables import summary_table

    run = load_run(run_dir)
    report_cfg = run.config.get("report", {}) if isinstance(run.config.get("report"), dict) else {}
    if n_bootstrap is None:
        n_bootstrap = int(report_cfg.get("n_bootstrap", 2000))
    if seed is None:
        seed = int(run.config.get("seed", 0) or 0)
    summary = summary_table(run, n_bootstrap=n_bootstrap, seed=seed, level=level)
    root = Path(run_dir)
    summary_path = root / SUMMARY_FILE
    with atomic_open(summary_path, "w", encoding="utf-8", newline="") as fh:
        summary.to_csv(fh, index=False)
    if figures is None:
        figures = bool(report_cfg.get("figures", True))
    written = save_figures(run, summary, root / FIGURES_DIR) if figures else {}
    sentences = reading(summary, level=level)
    checks = trend_checks(summary) if len(run.models) > 1 else {}
    config_text = (root / CONFIG_FILE).read_text(encoding="utf-8") if (root / CONFIG_FILE).is_file() else ""
    page = render_html(run, summary, written, sentences, config_text=config_text, checks=checks)
    html_path = write_html(root / REPORT_FILE, page)
    write_text_atomic(root / SUMMARY_MD_FILE, summary_markdown(run, summary, sentences, checks))
    return Report(html_path, summary_path, written, summary, sentences, checks)

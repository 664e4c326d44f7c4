"""A Markdown version of the report's reading and main table (``summary.md``), for docs and PRs."""

from __future__ import annotations

from typing import Any

from salign.report.html import MAIN_COLUMNS, _cell, as_summaries, attribution_tables
from salign.report.rundata import RunData


def _plain(cell: str) -> str:
    """Strip the HTML span that marks the T4 count."""
    if cell.startswith("<span"):
        return cell[cell.index(">") + 1 : cell.rindex("</span>")]
    return cell


def _md(cell: str) -> str:
    return cell.replace("|", "\\|")


def summary_markdown(
    run: RunData,
    summary: Any,
    sentences: list[str],
    checks: dict[str, bool] | None = None,
    attributions: Any = None,
) -> str:
    """The reading (bullets), the checks and table T1's main columns (one table per norm, for
    ``summary`` = ``{norm: T1}``) as Markdown; with ``attributions`` (an
    :class:`~salign.report.attributions.AttributionSummary`), the tables of the "Attributions and
    robustifiers" section after T1."""
    from salign._norms import norm_label

    summaries = as_summaries(summary)
    lines = [f"## {run.name}", ""]
    n_eval = int(run.models[0].frame.shape[0]) if run.models else 0
    seed = run.config.get("seed", "–")
    lines.append(f"{len(run.models)} model(s), N = {n_eval} evaluated samples per model, seed {seed}.")
    lines.append("")
    lines += [f"- {s}" for s in sentences]
    if checks:
        lines.append("")
        lines += [f"- [{'x' if ok else ' '}] {name.replace('_', ' ')}" for name, ok in checks.items()]
    for p, table in summaries.items():
        cols = [(c, h) for c, h in MAIN_COLUMNS if c in table.columns]
        if len(summaries) > 1 or p != 2:
            lines += ["", f"### {norm_label(p)}"]
        header = " | ".join(h.replace("|", "\\|") for _, h in cols)
        lines += ["", f"| {header} |", "|" + "---|" * len(cols)]
        for _, row in table.iterrows():
            r = row.to_dict()
            lines.append("| " + " | ".join(_plain(_cell(r, c)) for c, _ in cols) + " |")
    if attributions is not None:
        lines += ["", "### Attributions and robustifiers"]
        for title, heads, rows in attribution_tables(attributions):
            lines += [
                "",
                f"{title}:",
                "",
                "| " + " | ".join(map(_md, heads)) + " |",
                "|" + "---|" * len(heads),
            ]
            lines += ["| " + " | ".join(map(_md, cells)) + " |" for cells in rows]
    return "\n".join(lines) + "\n"

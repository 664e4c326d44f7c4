"""The self-contained ``report.html``: figures embedded as base64 PNG, the interactive scatter
(:mod:`salign.report.interactive`, plotly.js inlined), no external resources. Formulas written
TeX-style in captions and the reading (``∇Ψ^{i*}``, ``β_{j*}``, ``α_bin``) are rendered with
HTML sub- and superscripts by :func:`math_html`."""

from __future__ import annotations

import base64
import html
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from salign._io import write_text_atomic
from salign._norms import dual_exponent
from salign.report.rundata import RunData

#: (T1 column, header) shown in the report's main table; the full table is in summary.csv.
MAIN_COLUMNS = (
    ("model", "model"),
    ("lambda", "λ"),
    ("accuracy", "test acc."),
    ("n", "N"),
    ("rho_success_rate", "attack success"),
    ("rho_median", "median ρ"),
    ("alpha_median", "median α"),
    ("alpha_bin_median", "median α_bin"),
    ("alpha_norm_median", "median α/‖x‖"),
    ("rho_lin_median", "median ρ̃"),
    ("bias_ratio_median", "median |β|/‖g‖"),
    ("homogeneous_median", "median ⟨x,g⟩/margin"),
    ("spearman_alpha_rho", "Spearman(α,ρ) [95% CI]"),
    ("pearson_alpha_rho", "Pearson(α,ρ) [95% CI]"),
    ("t4_holds", "T4 holds"),
)

FIGURE_CAPTIONS = {
    "p1_saliency_gallery": "P1 — saliency gallery: inputs and ∇Ψ^{F(x)} per model; symmetric scale per image and channel "
    "(±99.5th percentile of |s|), zero at mid-grey.",
    "p2_alpha_vs_rho": "P2 — alignment vs robustness per image, identity line α = ρ, diamonds = per-model medians.",
    "p3_medians_vs_lambda": "P3 — median α and median ρ with interquartile bars across the λ sweep.",
    "p4_accuracy_vs_lambda": "P4 — clean accuracy and median ρ vs λ.",
    "p5_linearization": "P5 — linearization (ρ̃ vs ρ) and the effective-bias band of T4.",
    "p6_bias_histograms": "P6 — effective bias β_{j*}, its slack relative to ρ̃, and the homogeneous fraction.",
    "p7_rival_agreement": "P7 — agreement of the rival classes j*, runner-up and attack class; best attack.",
    "p8_linear_sanity": "P8 — exact linear cases of the theory.",
    "p9_quality_vs_lambda": "P9 — saliency quality of each attribution method across the λ sweep: median rank "
    "correlation of |map| with the image and median stroke lift (share of |map| on the digit's strokes ÷ their "
    "area; 1 = chance), bars = bootstrap intervals of the medians; boundary_* methods (dashed) are the maps at "
    "the boundary point x_b. Quality compares models for one method, not methods with each other "
    '(docs/theory.md, "Saliency quality").',
    "p10_matched_robustness": "P10 — robustifiers at matched robustness: median α (and the gradient map's median "
    "rank correlation with the image) against median ρ, one point per model; the gradient-penalty sweep joined "
    "in λ order, each adversarial-training method in ε order from the λ = 0 model; diamonds = listed models; "
    "bars = bootstrap intervals of both medians. At equal ρ, a higher line buys more alignment per unit ρ.",
}

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:2em auto;max-width:1180px;
color:#222;line-height:1.45;padding:0 1em}
h1{margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.6em}
.sub{color:#666;margin-top:0}
table{border-collapse:collapse;font-size:.8em;margin:.6em 0;display:block;overflow-x:auto}
th,td{border:1px solid #ddd;padding:.3em .55em;text-align:right}th{background:#f4f4f4}
td:first-child,th:first-child{text-align:left}
.reading li{margin:.3em 0}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{color:#555;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;overflow-x:auto;font-size:.8em;border:1px solid #eee}
.ok{color:#1a7f37;font-weight:600}.bad{color:#b42318;font-weight:600}
details summary{cursor:pointer;color:#0b57d0}
sub,sup{font-size:.72em;line-height:0}
.panel{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;margin:.4em 0 1em}
.panel-title{margin:.2em 0;font-size:.9em;color:#333}
.views{display:flex;flex-wrap:wrap;gap:1em}.views figure{margin:.2em 0;text-align:center}
.views img{width:150px;height:150px;object-fit:contain;image-rendering:pixelated;border:1px solid #ccc;
background:#fafafa}.views figcaption{font-size:.8em}
"""

#: A TeX-style sub- or superscript after a Greek letter, ρ̃, ‖ or ")": ``^{i*}``, ``_{j*}``, ``_bin``.
_SCRIPT = re.compile(r"(?<=[\u0370-\u03ff\u0303‖)])([_^])(?:\{([^{}]*)\}|([A-Za-z0-9]+\*?))")


def math_html(text: str) -> str:
    """``text`` HTML-escaped, with its TeX-style scripts as ``<sub>``/``<sup>``: ``∇Ψ^{i*}`` →
    ∇Ψ<sup>i*</sup>, ``β_{j*}`` and ``β_j*`` → β<sub>j*</sub>, ``α_bin`` → α<sub>bin</sub>, ``‖g‖_q``.
    Only a script after a Greek letter, ρ̃, ‖ or ")" is converted, so file and column names
    (``summary_linf.csv``) are left alone."""

    def script(m: re.Match[str]) -> str:
        tag = "sub" if m[1] == "_" else "sup"
        return f"<{tag}>{m[2] if m[2] is not None else m[3]}</{tag}>"

    return _SCRIPT.sub(script, html.escape(text))


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return "–"
        if math.isinf(value):
            return "∞"
        return f"{value:.{digits}g}"
    return str(value)


def sig3(value: Any) -> str:
    """A number with 3 significant digits, trailing zeros kept (2.00, 0.0450, 1.50e+03; – for
    NaN or None): the numbers of the attribution tables and their reading."""
    if value is None or not np.isfinite(value):
        return "–" if value is None or math.isnan(value) else _fmt(value)
    text = f"{value:#.3g}"
    return text[:-1] if text.endswith(".") else text


def _cell(row: Any, col: str) -> str:
    if col in ("spearman_alpha_rho", "pearson_alpha_rho"):
        v = row.get(col, float("nan"))
        if v is None or not np.isfinite(v):
            return "–"
        return f"{v:.2f} [{row[col + '_low']:.2f}, {row[col + '_high']:.2f}]"
    if col == "accuracy" or col == "rho_success_rate":
        v = row.get(col, float("nan"))
        return "–" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"
    if col == "t4_holds":
        if "t4_holds" not in row or not np.isfinite(row.get("t4_n", np.nan)):
            return "–"
        holds, n = int(row["t4_holds"]), int(row["t4_n"])
        cls = "ok" if holds == n else "bad"
        return f'<span class="{cls}">{holds}/{n}</span>'
    if col == "lambda":
        v = row.get(col)
        return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"
    return html.escape(_fmt(row.get(col)))


def summary_html(summary: Any) -> str:
    """The main T1 table as HTML."""
    cols = [(c, h) for c, h in MAIN_COLUMNS if c in summary.columns]
    head = "".join(f"<th>{math_html(h)}</th>" for _, h in cols)
    body = []
    for _, row in summary.iterrows():
        r = row.to_dict()
        body.append("<tr>" + "".join(f"<td>{_cell(r, c)}</td>" for c, _ in cols) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def full_table_html(summary: Any) -> str:
    """Every T1 column, transposed (one column per model), for the collapsible section."""
    models = [str(m) for m in summary["model"]]
    head = "<th>quantity</th>" + "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for col in summary.columns:
        if col == "model":
            continue
        cells = "".join(f"<td>{html.escape(_fmt(v, 4))}</td>" for v in summary[col])
        rows.append(f"<tr><td>{html.escape(col)}</td>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _timings_html(run: RunData) -> str:
    t = run.timings
    if not t:
        return "<p>no timings recorded</p>"
    rows = []
    for key, value in t.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                rows.append(
                    f"<tr><td>{html.escape(key)} / {html.escape(str(sub))}</td><td>{_fmt(v)} s</td></tr>"
                )
        else:
            rows.append(f"<tr><td>{html.escape(str(key))}</td><td>{_fmt(value)} s</td></tr>")
    return f"<table><tbody>{''.join(rows)}</tbody></table>"


def as_summaries(summary: Any) -> dict[float, Any]:
    """``{norm: T1}`` from one T1 table (L2) or an existing mapping."""
    return dict(summary) if isinstance(summary, dict) else {2.0: summary}


def figure_caption(name: str) -> str:
    """The caption of figure ``name`` (``<stem><norm suffix>``: the stem's caption and the norm)."""
    from salign._norms import norm_label
    from salign.report.columns import NORM_SUFFIXES

    for p, sfx in NORM_SUFFIXES.items():
        if sfx and name.endswith(sfx) and name[: -len(sfx)] in FIGURE_CAPTIONS:
            return f"{FIGURE_CAPTIONS[name[: -len(sfx)]]} Norm: {norm_label(p)} (α, ρ̃ with the dual norm of the gradient)."
    return FIGURE_CAPTIONS.get(name, name)


def _median_cell(row: Any, prefix: str) -> str:
    """``0.123 [0.101, 0.145]`` from ``<prefix>_median``/``_low``/``_high`` (– when absent or NaN)."""
    v = row.get(prefix + "_median", float("nan"))
    if v is None or not np.isfinite(v):
        return "–"
    return f"{sig3(v)} [{sig3(row.get(prefix + '_low'))}, {sig3(row.get(prefix + '_high'))}]"


def _corr_cell(row: Any, key: str) -> str:
    v = row.get(key, float("nan"))
    if v is None or not np.isfinite(v):
        return "–"
    return f"{v:.2f} [{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"


def attribution_tables(summary: Any) -> list[tuple[str, list[str], list[list[str]]]]:
    """The section's tables as plain text cells, (title, headers, rows), for the HTML page and
    summary.md: the arms (median ρ, α and gradient quality per model), the attribution methods
    (medians [interval] per model × method) and the boundary attributions."""
    from salign.report.attributions import BOUNDARY_METHOD, COMPLETENESS_GAP

    out = []
    pct = f"{round(summary.level * 100)}%"
    arms = summary.arms
    heads = ["model", "robustifier", "λ or ε", "N", f"median ρ [{pct} CI]", f"median α [{pct} CI]"]
    show_quality = "quality_median" in arms
    if show_quality:
        heads.append("median rank corr. of |∇Ψ| [CI]")
    rows = []
    for _, r in arms.iterrows():
        d = r.to_dict()
        cells = [str(d["model"]), str(d["robustifier"]), _fmt(d["parameter"]), _fmt(d["n"])]
        cells += [_median_cell(d, "rho"), _median_cell(d, "alpha")]
        if show_quality:
            cells.append(_median_cell(d, "quality"))
        rows.append(cells)
    out.append(("Arms: robustness, alignment and saliency quality per model", heads, rows))
    table = summary.attributions
    if table is None or not len(table):
        return out
    methods = table[table["method"] != BOUNDARY_METHOD]
    if len(methods):
        quantities = [
            ("alignment", "α"),
            ("alignment_binarized", "α_bin"),
            ("stroke_mass", "stroke mass"),
            ("stroke_lift", "stroke lift"),
            ("rank_correlation", "rank corr."),
        ]
        quantities = [(q, h) for q, h in quantities if q + "_median" in methods]
        heads = ["model", "method"] + [f"median {h} [CI]" for _, h in quantities]
        with_corr = "spearman_alignment_rho" in methods
        if with_corr:
            heads.append(f"Spearman(α_m, ρ) [{pct} CI]")
        rows = []
        for _, r in methods.iterrows():
            d = r.to_dict()
            cells = [str(d["model"]), str(d["method"])] + [_median_cell(d, q) for q, _ in quantities]
            if with_corr:
                cells.append(_corr_cell(d, "spearman_alignment_rho"))
            rows.append(cells)
        out.append(("Attribution methods: medians per model and method", heads, rows))
    boundary = table[table["method"] == BOUNDARY_METHOD]
    if len(boundary):
        cols = [
            ("boundary_cosine", "cos(−∇f(x), x_b − x)"),
            ("boundary_alignment", "α of x, boundary map"),
            ("alignment_at_boundary", "α at x_b"),
            ("boundary_ig_alignment", "α of boundary IG"),
        ]
        cols = [(c, h) for c, h in cols if c + "_median" in boundary]
        gap = f"{COMPLETENESS_GAP}_max_abs"
        heads = ["model", "attack failed"] + [f"median {h} [CI]" for _, h in cols]
        if gap in boundary:
            heads.append("max |completeness gap|")
        rows = []
        for _, r in boundary.iterrows():
            d = r.to_dict()
            failed = d.get("boundary_failed_rate", float("nan"))
            cells = [str(d["model"]), "–" if not np.isfinite(failed) else f"{100 * failed:.1f}%"]
            cells += [_median_cell(d, c) for c, _ in cols]
            if gap in boundary:
                cells.append(sig3(d.get(gap)))
            rows.append(cells)
        out.append(("Boundary attributions (at the attack's boundary point x_b)", heads, rows))
    return out


def _figure_html(name: str, path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (
        f"<figure><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{math_html(figure_caption(name))}</figcaption></figure>"
    )


def attributions_html(summary: Any, figures: dict[str, Path]) -> str:
    """The "Attributions and robustifiers" section: its tables and figures P9, P10
    (``summary``: an :class:`~salign.report.attributions.AttributionSummary`)."""
    parts = ["<h2>Attributions and robustifiers</h2>"]
    for title, heads, rows in attribution_tables(summary):
        head = "".join(f"<th>{math_html(h)}</th>" for h in heads)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in rows
        )
        parts.append(
            f"<h3>{math_html(title)}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        )
    parts.append(
        "<p class='sub'>"
        + math_html(
            "Medians over the evaluated images with seeded bootstrap percentile intervals; α_m and α_bin of a "
            "method m score its map of the predicted logit (binarized: against the rival j*); stroke mass, stroke "
            "lift and rank correlation measure how much |map| looks like the digit (docs/theory.md, "
            '"Saliency quality"). The full table is attributions.csv, the arms arms.csv.'
        )
        + "</p>"
    )
    parts += [_figure_html(name, path) for name, path in figures.items()]
    return "\n".join(parts)


def render_html(
    run: RunData,
    summary: Any,
    figures: dict[str, Path],
    sentences: list[str],
    *,
    config_text: str = "",
    checks: dict[str, bool] | None = None,
    interactive: str = "",
    attributions: str = "",
) -> str:
    """Assemble the report page (a string) with every figure inlined as a data URI.

    ``summary``: table T1, or ``{norm: T1}`` for a study of several norms (one table each).
    ``interactive``: the "Explore samples" section (:func:`salign.report.interactive.interactive_html`),
    placed after the tables. ``attributions``: the "Attributions and robustifiers" section
    (:func:`attributions_html`), placed before it; empty for a run without attribution columns
    and adversarial arms.
    """
    from salign._norms import norm_label

    summaries = as_summaries(summary)
    several = len(summaries) > 1
    cfg = run.config
    versions = cfg.get("versions", {}) if isinstance(cfg, dict) else {}
    seed = cfg.get("seed", "–") if isinstance(cfg, dict) else "–"
    dataset = cfg.get("dataset", {}) if isinstance(cfg, dict) else {}
    ds_name = dataset.get("name", "–") if isinstance(dataset, dict) else str(dataset)
    n_eval = int(run.models[0].frame.shape[0]) if run.models else 0
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>salign report — {html.escape(run.name)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(run.name)}</h1>",
        f"<p class='sub'>Robustness vs saliency alignment (Etmann et al., ICML 2019) — dataset "
        f"<b>{html.escape(str(ds_name))}</b>, {len(run.models)} model(s), N = {n_eval} evaluated samples per "
        f"model, seed {html.escape(str(seed))}.</p>",
        "<h2>Reading</h2><ul class='reading'>",
        *[f"<li>{math_html(s)}</li>" for s in sentences],
        "</ul>",
    ]
    if checks:
        items = "".join(
            f"<li><span class='{'ok' if v else 'bad'}'>{'✓' if v else '✗'}</span> {html.escape(k.replace('_', ' '))}</li>"
            for k, v in checks.items()
        )
        parts.append(f"<p>Checks:</p><ul>{items}</ul>")
    for p, table in summaries.items():
        title = f"Table T1 — {norm_label(p)}" if several or p != 2 else "Table T1"
        parts += [f"<h2>{html.escape(title)}</h2>", summary_html(table)]
        if p == 2:
            caption = (
                "ρ: L2 distance to the nearest adversarial example found by the attack ensemble "
                "(attacking the predicted class); α = |⟨x,∇Ψ^{i*}⟩|/‖∇Ψ^{i*}‖; α_bin uses g = ∇(Ψ^{i*}−Ψ^{j*}) with "
                "j* the nearest linearized boundary; ρ̃ = (Ψ^{i*}−Ψ^{j*})/‖g‖; β = Ψ − ⟨∇Ψ, x⟩."
            )
        else:
            dual = norm_label(dual_exponent(p))
            caption = (
                f"ρ: {norm_label(p)} distance to the nearest adversarial example found by the "
                f"{norm_label(p)} attack ensemble; α, α_bin, ρ̃ and |β|/‖g‖ divide by the {dual} norm of the "
                f'gradient (the dual norm: α_p = |⟨x,g⟩|/‖g‖_q, docs/theory.md "Other norms"); j* is the '
                f"nearest linearized boundary in {norm_label(p)}."
            )
        parts.append(f"<p class='sub'>{math_html(caption)}</p>")
        parts.append(f"<details><summary>all T1 columns</summary>{full_table_html(table)}</details>")
    if attributions:
        parts.append(attributions)
    if interactive:
        parts += ["<h2>Explore samples</h2>", interactive]
    parts.append("<h2>Figures</h2>")
    parts += [_figure_html(name, path) for name, path in figures.items()]
    parts.append("<h2>Run</h2>")
    if versions:
        vrows = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in versions.items()
        )
        parts.append(f"<h3>Versions</h3><table><tbody>{vrows}</tbody></table>")
    parts.append(f"<h3>Timings</h3>{_timings_html(run)}")
    notes = []
    for m in run.models:
        flags = {k: v for k, v in (m.meta.get("flags") or {}).items() if v}
        msgs = m.meta.get("warnings") or []
        if flags or msgs:
            text = ", ".join(f"{k}: {v}" for k, v in flags.items())
            items = "".join(f"<li>{html.escape(str(w))}</li>" for w in msgs)
            notes.append(f"<li><b>{html.escape(m.label)}</b> {html.escape(text)}<ul>{items}</ul></li>")
    if notes:
        parts.append(f"<h3>Evaluation warnings and attack sanity flags</h3><ul>{''.join(notes)}</ul>")
    if config_text:
        parts.append(f"<h3>Resolved config</h3><pre>{html.escape(config_text)}</pre>")
    parts.append(f"<p class='sub'>Run directory: {html.escape(str(run.run_dir.resolve()))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: str | os.PathLike[str], page: str) -> Path:
    """Write the page atomically."""
    write_text_atomic(path, page)
    return Path(path)

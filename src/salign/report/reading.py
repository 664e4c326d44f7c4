"""A short written reading of a run, generated from the T1 numbers (no hand-written claims)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from salign._norms import dual_exponent, norm_label
from salign.report.html import sig3 as _g3
from salign.report.tables import POOLED


def _fmt_ci(row: Any, key: str) -> str:
    return f"{row[key]:.2f} [{row[key + '_low']:.2f}, {row[key + '_high']:.2f}]"


def _change(a: float, b: float) -> str:
    """ "rose 3.1×" / "fell 2.0×" / "stayed at" for a change from b to a."""
    if not (b > 0 and a > 0 and np.isfinite(a) and np.isfinite(b)):
        return "changed"
    if a >= b:
        return f"rose {a / b:.1f}×"
    return f"fell {b / a:.1f}×"


def _ratio(a: float, b: float) -> str:
    if b > 0 and np.isfinite(a) and np.isfinite(b):
        return f"{a / b:.1f}×"
    return "n/a"


def _monotone(values: list[float]) -> str:
    diffs = np.diff(values)
    if np.all(diffs > 0):
        return "increasing at every step"
    if np.all(diffs < 0):
        return "decreasing at every step"
    ups = int(np.sum(diffs > 0))
    return f"not monotone ({ups} of {len(diffs)} steps up)"


def _model_label(row: Any) -> str:
    """``λ=10`` for a model of the sweep, its tag for any other (a T1 row)."""
    lam = row.get("lambda")
    if lam is None or (isinstance(lam, float) and math.isnan(lam)):
        return str(row["model"])
    return f"λ={float(lam):g}"


def is_increasing(values: list[float]) -> bool:
    """True when ``values`` strictly increase."""
    return bool(len(values) > 1 and np.all(np.diff(values) > 0))


def reading(
    summary: Any, *, level: float = 0.95, norm: float = 2.0, label: bool = False, accuracy: bool = True
) -> list[str]:
    """Sentences describing the trend, the correlations, the linearization and the T4 check.

    ``summary`` is T1 in the norm ``norm`` (ρ, α, ρ̃ and ‖g‖ of that norm, docs/theory.md "Other
    norms"); with ``label`` (a study of several norms) every sentence starts with the norm
    ("L∞: ..."), and a norm p ≠ 2 opens with what α_p and ρ_p are. ``accuracy=False`` leaves out
    the clean-accuracy sentence (said once, with the first norm).
    """
    out = _reading(summary, level=level, accuracy=accuracy)
    if norm != 2:
        name, dual = norm_label(norm), norm_label(dual_exponent(norm))
        intro = (
            f"α = |⟨x, g⟩|/‖g‖, ρ̃ = margin/‖g‖ and |β_j*|/‖g‖ divide by the {dual} norm of the gradient "
            f"(the dual of {name}), and ρ is the {name} distance to the nearest adversarial example found "
            f"by {name} attacks."
        )
        out.insert(0, intro if label else f"In {name}, {intro}")
    if label:
        out = [f"{norm_label(norm)}: {sentence}" for sentence in out]
    return out


def _reading(summary: Any, *, level: float, accuracy: bool) -> list[str]:
    rows = summary[summary["model"] != POOLED]
    sweep = rows[rows["lambda"].notna()].sort_values("lambda")
    out: list[str] = []
    pct = f"{round(level * 100)}%"
    if len(sweep) >= 2:
        first, last = sweep.iloc[0], sweep.iloc[-1]
        lam0, lam1 = f"{first['lambda']:g}", f"{last['lambda']:g}"
        a_med = list(sweep["alpha_median"])
        r_med = list(sweep["rho_median"])
        out.append(
            f"Across {len(sweep)} models (λ = {', '.join(f'{v:g}' for v in sweep['lambda'])}), median α "
            f"{_change(last['alpha_median'], first['alpha_median'])} from λ={lam0} to λ={lam1} "
            f"({first['alpha_median']:.3g} → {last['alpha_median']:.3g}; {_monotone(a_med)}) and median ρ "
            f"{_change(last['rho_median'], first['rho_median'])} ({first['rho_median']:.3g} → "
            f"{last['rho_median']:.3g}; {_monotone(r_med)})."
        )
        acc0, acc1 = first.get("accuracy", math.nan), last.get("accuracy", math.nan)
        if accuracy and np.isfinite(acc0) and np.isfinite(acc1):
            out.append(
                f"Clean test accuracy went from {100 * acc0:.1f}% at λ={lam0} to {100 * acc1:.1f}% at λ={lam1}."
            )
    pooled = summary[summary["model"] == POOLED]
    if len(pooled) and "spearman_alpha_rho" in pooled:
        p = pooled.iloc[0]
        verdict = (
            "positive"
            if p["spearman_alpha_rho_low"] > 0
            else ("negative" if p["spearman_alpha_rho_high"] < 0 else "not distinguishable from 0")
        )
        out.append(
            f"Pooled over all {int(p['corr_alpha_rho_n'])} (image, model) pairs, Spearman(α, ρ) = "
            f"{_fmt_ci(p, 'spearman_alpha_rho')} and Pearson = {_fmt_ci(p, 'pearson_alpha_rho')} "
            f"({pct} bootstrap intervals): the association is {verdict}."
        )
        if "spearman_alpha_bin_rho" in p:
            out.append(
                f"For the binarized alignment, Spearman(α_bin, ρ) = {_fmt_ci(p, 'spearman_alpha_bin_rho')}."
            )
    if len(rows) and "spearman_alpha_rho" in rows:
        within = rows["spearman_alpha_rho"].to_numpy(dtype=float)
        if len(rows) == 1:
            r = rows.iloc[0]
            out.append(
                f"Across the {int(r['corr_alpha_rho_n'])} images, Spearman(α, ρ) = {_fmt_ci(r, 'spearman_alpha_rho')}, "
                f"Pearson = {_fmt_ci(r, 'pearson_alpha_rho')}; median α = {r['alpha_median']:.3g}, "
                f"median ρ = {r['rho_median']:.3g} (median α/ρ ≈ {_ratio(r['alpha_median'], r['rho_median'])})."
            )
        elif np.isfinite(within).any():
            out.append(
                f"Within single models (across images), Spearman(α, ρ) ranges from {np.nanmin(within):.2f} "
                f"to {np.nanmax(within):.2f}."
            )
    if "spearman_rho_lin_rho" in rows and len(rows):
        lin = rows["spearman_rho_lin_rho"].to_numpy(dtype=float)
        ratio_txt = ""
        if "rho_lin_median" in rows:
            ratios = (rows["rho_lin_median"] / rows["rho_median"]).to_numpy(dtype=float)
            ratio_txt = f"; median ρ̃ / median ρ lies in [{np.nanmin(ratios):.2f}, {np.nanmax(ratios):.2f}]"
        out.append(
            f"The linearized robustness ρ̃ follows ρ with within-model Spearman between {np.nanmin(lin):.2f} and "
            f"{np.nanmax(lin):.2f}{ratio_txt}."
        )
    if "bias_ratio_median" in rows and "rho_lin_median" in rows and len(rows):
        rel = (rows["bias_ratio_median"] / rows["rho_lin_median"]).to_numpy(dtype=float)
        hom = rows["homogeneous_median"].to_numpy(dtype=float) if "homogeneous_median" in rows else None
        text = (
            f"The effective-bias slack |β_j*|/‖g‖ has a median of {', '.join(f'{v:.2f}' for v in rel)} × the median ρ̃ "
            f"({', '.join(_model_label(r) for _, r in rows.iterrows())})"
        )
        if hom is not None:
            text += f"; the median homogeneous fraction ⟨x,g⟩/(Ψ^i* − Ψ^j*) is {', '.join(f'{v:.2f}' for v in hom)}"
        out.append(text + ".")
    t4 = summary[summary["model"] == POOLED] if len(pooled) else rows
    if "t4_holds" in t4 and len(t4):
        holds, n = int(t4["t4_holds"].sum()), int(t4["t4_n"].sum())
        out.append(
            f"The T4 bound |α_bin − ρ̃| ≤ |β_j*|/‖g‖ holds on {holds}/{n} samples"
            + (" (100%)." if holds == n else f" ({100 * holds / max(n, 1):.2f}%): check the violations.")
        )
    return out


def trend_checks(summary: Any) -> dict[str, bool]:
    """The demo's acceptance checks: medians of α and ρ increase with λ (only for a study with a
    λ sweep of two or more models); pooled CI excludes 0; T4 holds."""
    everyone = summary[summary["model"] != POOLED]
    rows = everyone[everyone["lambda"].notna()].sort_values("lambda")
    pooled = summary[summary["model"] == POOLED]
    checks: dict[str, bool] = {}
    if len(rows) >= 2:
        checks["median_alpha_increasing"] = is_increasing(list(rows["alpha_median"]))
        checks["median_rho_increasing"] = is_increasing(list(rows["rho_median"]))
    if len(pooled):
        p = pooled.iloc[0]
        checks["pooled_spearman_ci_above_0"] = bool(p["spearman_alpha_rho_low"] > 0)
    if "t4_holds" in summary:
        sub = pooled if len(pooled) else everyone
        checks["t4_holds_everywhere"] = bool((sub["t4_holds"] == sub["t4_n"]).all())
    return checks


# ---------------------------------------------------------------------------------------------
# Attribution methods, boundary attributions and robustifiers (the "Attributions and
# robustifiers" section; salign.report.attributions)

#: Quantities of an attribution method read against λ: (table prefix, name in the sentence).
_TREND_QUANTITIES = (
    ("alignment", "median α"),
    ("rank_correlation", "median rank correlation with the image"),
    ("stroke_lift", "median stroke lift"),
)


def _g3s(value: float) -> str:
    """:func:`~salign.report.html.sig3` with a sign."""
    return ("+" if value >= 0 else "") + _g3(value)


def _median_ci(row: Any, prefix: str) -> str:
    """``0.123 [0.101, 0.145]``: a median and its interval, 3 significant digits."""
    return f"{_g3(row[prefix + '_median'])} [{_g3(row[prefix + '_low'])}, {_g3(row[prefix + '_high'])}]"


def _has(rows: Any, prefix: str) -> bool:
    key = prefix + "_median"
    return key in rows and bool(np.isfinite(rows[key].to_numpy(dtype=float)).all())


def _trend_sentence(method: str, name: str, sweep: Any, prefix: str) -> str:
    """Does ``name`` of ``method`` rise from the first to the last sweep model?"""
    first, last = sweep.iloc[0], sweep.iloc[-1]
    values = list(sweep[prefix + "_median"])
    lam0, lam1 = f"λ={first['lambda']:g}", f"λ={last['lambda']:g}"
    a, b = first[prefix + "_median"], last[prefix + "_median"]
    at0, at1 = f"{_median_ci(first, prefix)} at {lam0}", f"{_median_ci(last, prefix)} at {lam1}"
    if b > a and last[prefix + "_low"] > first[prefix + "_high"]:
        return (
            f"{method}: {name} rose from {at0} to {at1} ({_monotone(values)}; the intervals do not overlap)."
        )
    if b > a:
        return (
            f"{method}: {name} rose from {at0} to {at1} ({_monotone(values)}), but the intervals overlap: "
            "not a clear rise."
        )
    how = "stayed level" if b == a else "fell"
    return f"{method}: {name} did NOT rise with λ: {at0}, {at1} ({_monotone(values)}; it {how})."


def attribution_reading(summary: Any) -> list[str]:
    """Sentences on the attribution methods, the boundary attributions and the robustifiers.

    ``summary`` is a :class:`~salign.report.attributions.AttributionSummary`. (i) per method:
    do its α, rank correlation and stroke lift rise from the first to the last λ of the sweep
    (with intervals; said plainly when they do not), and Spearman(α_m, ρ) pooled over the models;
    (ii) the boundary cosine and whether the boundary map's quality exceeds the map's at x;
    (iii) per adversarial-training arm, its median α (and quality) minus the gradient-penalty
    line's at the arm's median ρ, or that the arm lies outside the sweep's ρ range.
    """
    from salign.report.attributions import BOUNDARY_METHOD

    out: list[str] = []
    pct = f"{round(summary.level * 100)}%"
    table = summary.attributions
    if table is not None and len(table):
        out += _method_sentences(table, pct)
        boundary = table[table["method"] == BOUNDARY_METHOD]
        if len(boundary):
            out += _boundary_sentences(table, boundary)
    out += _arm_sentences(summary.comparisons, "α", pct)
    out += _arm_sentences(
        summary.quality_comparisons, "rank correlation of the gradient map with the image", pct
    )
    return out


def _method_sentences(table: Any, pct: str) -> list[str]:
    from salign.report.attributions import BOUNDARY_METHOD, SWEEP

    out = []
    methods = [m for m in dict.fromkeys(table["method"]) if m != BOUNDARY_METHOD]
    for method in methods:
        rows = table[(table["method"] == method) & (table["model"] != POOLED)]
        sweep = rows[rows["arm"] == SWEEP].sort_values("lambda")
        if len(sweep) >= 2:
            out += [
                _trend_sentence(method, name, sweep, prefix)
                for prefix, name in _TREND_QUANTITIES
                if _has(sweep, prefix)
            ]
        pooled = table[(table["method"] == method) & (table["model"] == POOLED)]
        key = "spearman_alignment_rho"
        if len(pooled) and key in pooled and np.isfinite(pooled.iloc[0][key]):
            p = pooled.iloc[0]
            verdict = (
                "positive"
                if p[key + "_low"] > 0
                else ("negative" if p[key + "_high"] < 0 else "not distinguishable from 0")
            )
            out.append(
                f"{method}: pooled over all {int(p[key + '_n'])} (image, model) pairs, Spearman(α_{method}, ρ) = "
                f"{_g3(p[key])} [{_g3(p[key + '_low'])}, {_g3(p[key + '_high'])}] ({pct} bootstrap interval; {verdict})."
            )
    return out


def _boundary_sentences(table: Any, boundary: Any) -> list[str]:
    from salign.report.attributions import COMPLETENESS_GAP

    out = []
    models = boundary[boundary["model"] != POOLED]
    pooled = boundary[boundary["model"] == POOLED]
    ref = pooled.iloc[0] if len(pooled) else models.iloc[0]
    if _has(boundary, "boundary_cosine"):
        per_model = models["boundary_cosine_median"].to_numpy(dtype=float)
        text = (
            f"Boundary attributions: the cosine between −∇f(x) and the attack direction x_b − x has a median of "
            f"{_median_ci(ref, 'boundary_cosine')}" + (" pooled over the models" if len(pooled) else "")
        )
        if len(models) > 1:
            text += f" (per model {_g3(np.nanmin(per_model))} to {_g3(np.nanmax(per_model))})"
        text += "; 1 would mean the attack walks straight down the gradient, as for a linear model."
        out.append(text)
    parts = []
    for name, col in (
        ("α of x under the boundary map", "boundary_alignment"),
        ("α at x_b", "alignment_at_boundary"),
        ("α of boundary IG", "boundary_ig_alignment"),
    ):
        if _has(pooled if len(pooled) else models, col):
            parts.append(f"{name} {_median_ci(ref, col)}")
    if parts:
        out.append("Median " + ", ".join(parts) + ".")
    gap = f"{COMPLETENESS_GAP}_max_abs"
    if gap in ref and np.isfinite(ref[gap]):
        out.append(f"Boundary IG completeness: the largest |Σ BIG − (f(x) − f(x_b))| is {_g3(ref[gap])}.")
    # The boundary map s(x_b) is a binarized map (the normal of the boundary x_b lies on): its
    # reference at x is the binarized gradient map (``gradient_binarized``, written beside the
    # boundary columns), else the logit map. Boundary IG has no like-for-like map at x (IG from
    # the zero baseline is masked by the input, so its quality is high by construction).
    methods = set(table["method"])
    at_x = "gradient_binarized" if "gradient_binarized" in methods else "gradient"
    text = _boundary_quality(table, at_x, "boundary_gradient")
    if text:
        out.append(text)
    return out


def _boundary_quality(table: Any, at_x: str, at_b: str) -> str:
    """Does the boundary map's rank correlation with the image exceed the map at x's, per model?"""
    rows = table[table["model"] != POOLED]
    x = rows[rows["method"] == at_x].set_index("model")
    b = rows[rows["method"] == at_b].set_index("model")
    key = "rank_correlation"
    if key + "_median" not in table:
        return ""
    common = [
        m
        for m in x.index
        if m in b.index and np.isfinite(x.loc[m, key + "_median"]) and np.isfinite(b.loc[m, key + "_median"])
    ]
    if not common:
        return ""
    higher = [m for m in common if b.loc[m, key + "_median"] > x.loc[m, key + "_median"]]
    clear = [m for m in higher if b.loc[m, key + "_low"] > x.loc[m, key + "_high"]]
    diffs = np.array([b.loc[m, key + "_median"] - x.loc[m, key + "_median"] for m in common])
    if len(higher) == len(common):
        verdict = f"exceeds the {at_x} map's at x in every model"
    elif higher:
        verdict = f"exceeds the {at_x} map's at x in only some models"
    else:
        verdict = f"does NOT exceed the {at_x} map's at x in any model"
    return (
        f"The {at_b} map's median rank correlation with the image {verdict}: higher in "
        f"{len(higher)} of {len(common)} models ({len(clear)} with disjoint intervals), differences "
        f"{_g3s(diffs.min())} to {_g3s(diffs.max())}."
    )


def _arm_sentences(comparisons: list[Any], name: str, pct: str) -> list[str]:
    out = []
    for c in comparisons:
        head = f"{c.model} ({c.robustifier}, ε={c.parameter:g})"
        lo, hi = c.rho_range
        if not c.inside:
            out.append(
                f"{head}: its median ρ = {_g3(c.rho)} lies outside the sweep's ρ range [{_g3(lo)}, {_g3(hi)}], so "
                f"its median {name} ({_g3(c.value)}) has no gradient-penalty model at matched robustness."
            )
            continue
        verdict = {
            "higher": "more than the gradient penalty at the same ρ",
            "lower": "less than the gradient penalty at the same ρ",
            "not distinguishable": "not distinguishable from the gradient penalty at the same ρ",
        }[c.verdict]
        out.append(
            f"{head}: median {name} = {_g3(c.value)} at median ρ = {_g3(c.rho)}; the gradient-penalty line gives "
            f"{_g3(c.reference)} there, a difference of {_g3s(c.difference)} [{_g3s(c.low)}, {_g3s(c.high)}] "
            f"({pct} bootstrap interval): {verdict}."
        )
    for method in dict.fromkeys(c.robustifier for c in comparisons):
        inside = [c for c in comparisons if c.robustifier == method and c.inside]
        if not inside:
            continue
        counts = {v: sum(c.verdict == v for c in inside) for v in ("higher", "lower", "not distinguishable")}
        out.append(
            f"{method} against the gradient penalty at matched ρ ({name}): higher in {counts['higher']}, lower in "
            f"{counts['lower']} and not distinguishable in {counts['not distinguishable']} of the {len(inside)} "
            f"arm(s) inside the sweep's ρ range."
        )
    return out

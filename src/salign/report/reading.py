"""A short written reading of a run, generated from the T1 numbers (no hand-written claims)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from salign._norms import dual_exponent
from salign.report.columns import norm_label
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

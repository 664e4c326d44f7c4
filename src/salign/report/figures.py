"""Figures P1–P8 of the study (docs: /shared/paper.md §10), drawn with matplotlib's Agg backend.

Every function takes a loaded :class:`~salign.report.rundata.RunData` (and, where it annotates
statistics, the T1 table from :func:`~salign.report.tables.summary_table`) and returns a
``matplotlib.figure.Figure``, or ``None`` when the run lacks what the figure needs (for example
the λ-sweep figures for a single pretrained model). :func:`save_figures` writes them all as PNG
files, atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from salign._io import atomic_path
from salign._norms import norm_label
from salign.report import columns as C
from salign.report._deps import require_pandas, require_pyplot
from salign.report.rundata import ModelResult, RunData
from salign.report.stats import spearman, spread

DPI = 110
#: The figures drawn once per norm in a study with several norms (the others show L2, or the
#: first evaluated norm).
NORM_FIGURES = ("p2_alpha_vs_rho", "p3_medians_vs_lambda", "p5_linearization")
_IDENTITY_STYLE: dict[str, Any] = {"color": "0.35", "ls": "--", "lw": 1.0, "zorder": 1}


#: Colours of the models without λ (listed models) beside a λ sweep: distinct from viridis.
LISTED_COLORS = ("tab:red", "tab:orange", "tab:brown", "tab:pink", "tab:gray", "tab:purple", "tab:cyan")


def model_colors(models: list[ModelResult]) -> dict[str, Any]:
    """One colour per model: viridis from low to high λ for the sweep; the models without λ (a
    zoo's listed models) get :data:`LISTED_COLORS`, so they never read as points of the sweep.
    A study of one model keeps viridis' dark blue."""
    plt = require_pyplot()
    cmap = plt.get_cmap("viridis")
    sweep = [m for m in models if not math.isnan(m.lam)] or list(models[:1] if len(models) == 1 else [])
    colors = {m.tag: cmap(0.1 + 0.8 * (i / max(len(sweep) - 1, 1))) for i, m in enumerate(sweep)}
    others = [m for m in models if m.tag not in colors]
    colors.update({m.tag: LISTED_COLORS[i % len(LISTED_COLORS)] for i, m in enumerate(others)})
    return colors


def _norm_title(run: RunData) -> str:
    """`` — L∞`` etc. for a figure of a norm p ≠ 2 (nothing for the paper's L2)."""
    return "" if run.norm == 2 else f" — {norm_label(run.norm)}"


def _dual_tex(run: RunData) -> str:
    """The subscript of the gradient's dual norm in TeX labels ("" for L2, "_1" for L∞)."""
    if run.norm == 2:
        return ""
    return "_1" if math.isinf(run.norm) else r"_\infty"


def _finite(*arrays: Any) -> tuple[np.ndarray, ...]:
    arrs = [np.asarray(a, dtype=np.float64) for a in arrays]
    keep = np.ones(arrs[0].shape, bool)
    for a in arrs:
        keep &= np.isfinite(a)
    return tuple(a[keep] for a in arrs)


def _sweep_models(run: RunData) -> list[ModelResult]:
    return [m for m in run.models if not math.isnan(m.lam)]


def _symlog_lambda(ax: Any, lams: list[float]) -> None:
    positive = [lam for lam in lams if lam > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=min(positive))
    ax.set_xticks(lams)
    ax.set_xticklabels([f"{lam:g}" for lam in lams])
    ax.minorticks_off()
    ax.set_xlabel("penalty weight λ")


def _set_loglog_if_positive(ax: Any, *arrays: np.ndarray) -> bool:
    values = np.concatenate([a.ravel() for a in arrays]) if arrays else np.array([])
    if values.size and np.all(values > 0):
        from matplotlib.ticker import LogFormatterSciNotation, NullFormatter

        ax.set_xscale("log")
        ax.set_yscale("log")
        spans_decade = values.max() / values.min() > 10
        for axis in (ax.xaxis, ax.yaxis):
            if spans_decade:
                axis.set_minor_formatter(NullFormatter())
            else:
                axis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
        return True
    return False


def _identity(ax: Any, lo: float, hi: float, label: str | None = "identity") -> None:
    ax.plot([lo, hi], [lo, hi], label=label, **_IDENTITY_STYLE)


def _range(*arrays: np.ndarray, positive: bool) -> tuple[float, float]:
    values = np.concatenate([a.ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if positive:
        values = values[values > 0]
    if values.size == 0:
        return (0.0, 1.0)
    return float(values.min()), float(values.max())


# ---------------------------------------------------------------------------------------------
# P1 saliency gallery


def saliency_to_image(saliency: np.ndarray, *, percentile: float = 99.5) -> tuple[np.ndarray, dict[str, Any]]:
    """Map a (C, H, W) saliency map to an image with zero at mid-grey (paper §9.6).

    Each channel is scaled symmetrically, s/(2·m) + 1/2 clipped to [0, 1], so −m is black, 0 is
    mid-grey and +m is white. The paper's m is max |s|; here m is the ``percentile`` of |s|
    per channel (100 gives the paper's max), because on large images a handful of extreme pixels
    would otherwise grey out the whole map. Returns the image and ``imshow`` keyword arguments.
    """
    s = np.asarray(saliency, dtype=np.float64)
    flat = np.abs(s).reshape(s.shape[0], -1)
    peak = np.percentile(flat, percentile, axis=1)
    peak = np.where(peak > 0, peak, flat.max(axis=1))
    peak = np.where(peak > 0, peak, 1.0)
    img = np.clip(s / (2 * peak[:, None, None]) + 0.5, 0.0, 1.0)
    if s.shape[0] == 1:
        return img[0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    return img.transpose(1, 2, 0), {}


def input_to_image(x: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """A (C, H, W) input in [0, 1] as an image for ``imshow`` (grey for one channel) and its keyword arguments."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] == 1:
        return x[0], {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}
    return np.clip(x.transpose(1, 2, 0), 0, 1), {}


def figure_gallery(run: RunData, summary: Any = None, *, max_images: int = 6) -> Any:
    """P1: rows of fixed images; columns: the image, then ∇Ψ^{F(x)} for models of increasing λ.

    Column headers give the model and its median ρ; every cell gives that image's α and ρ under
    that model. Saliency maps use a symmetric per-image scale with zero at mid-grey.
    """
    models = [m for m in run.models if m.gallery is not None]
    if not models:
        return None
    plt = require_pyplot()
    ref = models[0].gallery
    assert ref is not None
    ids = np.asarray(ref["sample_id"])[:max_images]
    images = np.asarray(ref["image"])[:max_images]
    rows, cols = len(ids), 1 + len(models)
    fig, axes = plt.subplots(rows, cols, figsize=(1.75 * cols, 1.85 * rows + 0.7), squeeze=False)
    for r, sid in enumerate(ids):
        img, kw = input_to_image(images[r])
        ax = axes[r, 0]
        ax.imshow(img, interpolation="nearest", **kw)
        first = models[0].frame
        hit = first[first[C.SAMPLE_ID] == sid]
        if len(hit) and C.LABEL in hit and int(hit[C.LABEL].iloc[0]) >= 0:
            ax.set_xlabel(f"#{int(sid)}  label {int(hit[C.LABEL].iloc[0])}", fontsize=7)
        elif len(hit) and C.PRED in hit:
            ax.set_xlabel(f"#{int(sid)}  unlabelled, pred {int(hit[C.PRED].iloc[0])}", fontsize=7)
        else:
            ax.set_xlabel(f"#{int(sid)}", fontsize=7)
    axes[0, 0].set_title("input", fontsize=9)
    for c, m in enumerate(models, start=1):
        gal = m.gallery
        assert gal is not None
        by_id = {int(s): i for i, s in enumerate(np.asarray(gal["sample_id"]))}
        med = spread(m.frame[C.RHO]).median if C.RHO in m.frame else float("nan")
        axes[0, c].set_title(f"{m.label}\nmedian ρ={med:.2f}", fontsize=9)
        lookup = m.frame.set_index(C.SAMPLE_ID) if C.SAMPLE_ID in m.frame else None
        for r, sid in enumerate(ids):
            ax = axes[r, c]
            if int(sid) not in by_id:
                ax.set_visible(False)
                continue
            sal, kw = saliency_to_image(np.asarray(gal["saliency"])[by_id[int(sid)]])
            ax.imshow(sal, interpolation="nearest", **kw)
            if lookup is not None and int(sid) in lookup.index:
                rec = lookup.loc[int(sid)]
                ax.set_xlabel(f"α={float(rec[C.ALPHA]):.2f}  ρ={float(rec[C.RHO]):.2f}", fontsize=7)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    sep = "\n" if cols <= 3 else ": "
    fig.suptitle(
        r"P1 Saliency maps $\nabla_x\Psi^{F(x)}(x)$"
        + sep
        + "zero = mid-grey, white = raises the predicted logit",
        fontsize=10 if cols > 2 else 8,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.97 if cols > 3 else 0.95))
    return fig


# ---------------------------------------------------------------------------------------------
# P2 α vs ρ


def _corr_text(summary: Any, model: str, prefix: str) -> str:
    if summary is None:
        return ""
    row = summary[summary["model"] == model]
    key = f"spearman_{prefix}"
    if not len(row) or key not in row:
        return ""
    r = row.iloc[0]
    if not np.isfinite(r[key]):
        return ""
    return f"Spearman {r[key]:.2f} [{r[key + '_low']:.2f}, {r[key + '_high']:.2f}]"


def figure_alpha_vs_rho(run: RunData, summary: Any = None) -> Any:
    """P2: α vs ρ and α_bin vs ρ, one point per image coloured by model, identity line, medians."""
    plt = require_pyplot()
    colors = model_colors(run.models)
    q = _dual_tex(run)
    panels = [
        (
            C.ALPHA,
            r"alignment $\alpha = |\langle x, \nabla\Psi^{i^*}\rangle| \,/\, \|\nabla\Psi^{i^*}\|" + q + "$",
            "alpha_rho",
        )
    ]
    if all(C.ALPHA_BIN in m.frame for m in run.models):
        panels.append((C.ALPHA_BIN, r"binarized alignment $\alpha_{bin}$ (rival $j^*$)", "alpha_bin_rho"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.0 * len(panels), 5.2), squeeze=False)
    for ax, (col, ylabel, prefix) in zip(axes[0], panels, strict=True):
        xs_all, ys_all = [], []
        for m in run.models:
            rho, a = _finite(m.frame[C.RHO], m.frame[col])
            xs_all.append(rho)
            ys_all.append(a)
            n_pts = len(rho)
            ax.scatter(
                rho, a, s=7 if n_pts > 300 else 12, alpha=0.35, color=colors[m.tag], lw=0, rasterized=True
            )
        for m in run.models:
            rho, a = _finite(m.frame[C.RHO], m.frame[col])
            if len(rho):
                label = m.label
                text = _corr_text(summary, m.tag, prefix)
                if text:
                    label += f"  ({text})"
                ax.scatter(
                    [np.median(rho)],
                    [np.median(a)],
                    s=110,
                    marker="D",
                    color=colors[m.tag],
                    edgecolor="black",
                    lw=1.2,
                    zorder=5,
                    label=label,
                )
        x_all = np.concatenate(xs_all) if xs_all else np.array([])
        y_all = np.concatenate(ys_all) if ys_all else np.array([])
        log = _set_loglog_if_positive(ax, x_all, y_all)
        lo, hi = _range(x_all, y_all, positive=log)
        _identity(
            ax, lo, hi, label="α = ρ (exact for linear models, T1" + ("" if run.norm == 2 else "_p") + ")"
        )
        ax.set_xlabel(f"robustness ρ = {norm_label(run.norm)} distance to the nearest adversarial example")
        ax.set_ylabel(ylabel)
        pooled = _corr_text(summary, "pooled", prefix) if len(run.models) > 1 else ""
        title = "α vs ρ" if col == C.ALPHA else "α_bin vs ρ"
        ax.set_title(f"{title}" + (f" — pooled {pooled}" if pooled else ""), fontsize=10)
        ax.legend(fontsize=7, loc="upper left", framealpha=0.85)
        ax.grid(alpha=0.25, which="both")
    fig.suptitle(
        "P2 Alignment vs robustness (one point per image; diamonds = per-model medians)" + _norm_title(run),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


# ---------------------------------------------------------------------------------------------
# P3 medians vs λ, and median α vs median ρ


def figure_medians(run: RunData, summary: Any = None) -> Any:
    """P3: median α and median ρ vs λ (interquartile bars), and median α vs median ρ per model."""
    models = _sweep_models(run)
    if len(models) < 2:
        return None
    plt = require_pyplot()
    colors = model_colors(run.models)
    lams = [m.lam for m in models]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    series = [(C.ALPHA, "median α", "tab:orange", "o"), (C.RHO, "median ρ", "tab:blue", "s")]
    if all(C.ALPHA_BIN in m.frame for m in models):
        series.insert(1, (C.ALPHA_BIN, "median α_bin", "tab:red", "^"))
    for col, label, color, marker in series:
        stats = [spread(m.frame[col]) for m in models]
        med = np.array([s.median for s in stats])
        err = np.array([[s.median - s.q25 for s in stats], [s.q75 - s.median for s in stats]])
        ax1.errorbar(lams, med, yerr=err, label=label, color=color, marker=marker, capsize=4, lw=1.5)
    _symlog_lambda(ax1, lams)
    ax1.set_ylabel(f"{norm_label(run.norm)} distance (input units)")
    ax1.set_title("medians with interquartile bars vs λ", fontsize=10)
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.25)
    xs, ys = [], []
    for m in models:
        sr, sa = spread(m.frame[C.RHO]), spread(m.frame[C.ALPHA])
        xs.append(sr.median)
        ys.append(sa.median)
        ax2.errorbar(
            [sr.median],
            [sa.median],
            xerr=[[sr.median - sr.q25], [sr.q75 - sr.median]],
            yerr=[[sa.median - sa.q25], [sa.q75 - sa.median]],
            marker="D",
            ms=8,
            color=colors[m.tag],
            mec="black",
            capsize=3,
            label=m.label,
        )
    lo, hi = _range(
        np.array(
            [spread(m.frame[C.RHO]).q25 for m in models] + [spread(m.frame[C.ALPHA]).q25 for m in models]
        ),
        np.array(
            [spread(m.frame[C.RHO]).q75 for m in models] + [spread(m.frame[C.ALPHA]).q75 for m in models]
        ),
        positive=False,
    )
    _identity(ax2, lo, hi, label="α = ρ")
    ax2.plot(xs, ys, color="0.6", lw=0.8, zorder=0)
    ax2.set_xlabel("median ρ")
    ax2.set_ylabel("median α")
    ax2.set_title("median α vs median ρ, one point per model", fontsize=10)
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.25)
    fig.suptitle("P3 Robustness and alignment across the λ sweep" + _norm_title(run), fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


# ---------------------------------------------------------------------------------------------
# P4 accuracy vs λ


def figure_accuracy(run: RunData, summary: Any = None) -> Any:
    """P4: clean accuracy vs λ, with median ρ on a second axis (the robustness–accuracy trade-off)."""
    models = _sweep_models(run)
    if len(models) < 2:
        return None
    plt = require_pyplot()
    lams = [m.lam for m in models]
    acc = [m.meta.get("accuracy", float("nan")) for m in models]
    acc_eval = [
        float(m.frame[C.CORRECT].astype(float).mean()) if C.CORRECT in m.frame else np.nan for m in models
    ]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    n_acc = models[0].meta.get("accuracy_n")
    ax.plot(lams, 100 * np.array(acc), "o-", color="tab:green", label=f"test accuracy (n={n_acc})")
    ax.plot(
        lams,
        100 * np.array(acc_eval),
        "o:",
        color="tab:olive",
        label=f"on the evaluated subset (n={len(models[0].frame)})",
    )
    ax.set_ylabel("clean accuracy (%)", color="tab:green")
    _symlog_lambda(ax, lams)
    ax2 = ax.twinx()
    ax2.plot(lams, [spread(m.frame[C.RHO]).median for m in models], "s--", color="tab:blue", label="median ρ")
    ax2.set_ylabel("median ρ", color="tab:blue")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower left")
    ax.grid(alpha=0.25)
    ax.set_title("P4 Accuracy and robustness vs λ", fontsize=11)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# P5 linearisation check and the T4 band


def figure_linearization(run: RunData, summary: Any = None) -> Any:
    """P5: (a) ρ̃ vs ρ; (b) α_bin vs ρ̃ with ±|β|/‖g‖ bars; (c) |α_bin − ρ̃| vs |β|/‖g‖ (T4 cone)."""
    if not all(C.RHO_LIN in m.frame and C.BIAS_RATIO in m.frame for m in run.models):
        return None
    plt = require_pyplot()
    colors = model_colors(run.models)
    fig, axes = plt.subplots(1, 3, figsize=(16.5, 5.0))
    ax_a, ax_b, ax_c = axes
    all_a, all_b, all_gap, all_bound = [], [], [], []
    holds_total, n_total = 0, 0
    for m in run.models:
        f = m.frame
        rho, rho_lin = _finite(f[C.RHO], f[C.RHO_LIN])
        sp = spearman(rho, rho_lin)
        ax_a.scatter(
            rho,
            rho_lin,
            s=7,
            alpha=0.35,
            lw=0,
            color=colors[m.tag],
            label=f"{m.label} (Spearman {sp:.2f})",
            rasterized=True,
        )
        all_a.append(np.concatenate([rho, rho_lin]))
        a_bin, r_lin, ratio = _finite(f[C.ALPHA_BIN], f[C.RHO_LIN], f[C.BIAS_RATIO])
        ax_b.errorbar(
            r_lin, a_bin, yerr=ratio, fmt="none", ecolor=colors[m.tag], alpha=0.12, lw=0.6, rasterized=True
        )
        ax_b.scatter(r_lin, a_bin, s=7, alpha=0.5, lw=0, color=colors[m.tag], label=m.label, rasterized=True)
        all_b.append(np.concatenate([a_bin, r_lin]))
        gap = np.abs(a_bin - r_lin)
        ax_c.scatter(ratio, gap, s=7, alpha=0.4, lw=0, color=colors[m.tag], label=m.label, rasterized=True)
        all_gap.append(gap)
        all_bound.append(ratio)
        if C.T4_HOLDS in f:
            holds_total += int(f[C.T4_HOLDS].sum())
            n_total += len(f)
    for ax, vals in ((ax_a, all_a), (ax_b, all_b)):
        v = np.concatenate(vals)
        log = _set_loglog_if_positive(ax, v)
        lo, hi = _range(v, positive=log)
        _identity(ax, lo, hi)
        ax.grid(alpha=0.25, which="both")
    ax_a.set_xlabel("ρ (attacks)")
    ax_a.set_ylabel("linearized robustness ρ̃ (first-order boundary distance)")
    ax_a.set_title("(a) ρ̃ vs ρ: how linear is the model on the ball of radius ρ?", fontsize=10)
    ax_a.legend(fontsize=7, loc="upper left")
    ax_b.set_xlabel("linearized robustness ρ̃")
    ax_b.set_ylabel(r"$\alpha_{bin}$ (bars: $\pm|\beta_{j^*}|/\|g\|$, the T4 band)")
    ax_b.set_title(
        r"(b) $\alpha_{bin}$ vs $\tilde\rho$ within the band $|\alpha_{bin} - \tilde\rho| \leq |\beta_{j^*}|/\|g\|$",
        fontsize=10,
    )
    ax_b.legend(fontsize=7, loc="upper left")
    bound = np.concatenate(all_bound)
    gap = np.concatenate(all_gap)
    hi = float(np.nanmax(np.concatenate([bound, gap]))) if bound.size else 1.0
    hi = hi * 1.05 if hi > 0 else 1.0
    ax_c.fill_between([0, hi], [0, 0], [0, hi], color="tab:green", alpha=0.12, label="allowed by T4")
    ax_c.plot([0, hi], [0, hi], color="tab:green", lw=1.2)
    ax_c.set_xlim(0, hi)
    ax_c.set_ylim(0, hi)
    ax_c.set_xlabel(r"$|\beta_{j^*}|\,/\,\|g\|" + _dual_tex(run) + "$ (effective-bias slack)")
    ax_c.set_ylabel(r"$|\alpha_{bin} - \tilde\rho|$")
    title = "(c) T4 bound"
    if n_total:
        title += f": holds on {holds_total}/{n_total} samples"
    ax_c.set_title(title, fontsize=10)
    ax_c.legend(fontsize=7, loc="upper left")
    ax_c.grid(alpha=0.25)
    fig.suptitle(
        "P5 Where the relation weakens: non-linearity (ρ̃ vs ρ) and effective bias (α_bin vs ρ̃)"
        + _norm_title(run),
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


# ---------------------------------------------------------------------------------------------
# P6 β and homogeneous-fraction histograms


def _step_hist(ax: Any, values: np.ndarray, bins: np.ndarray, color: Any, label: str) -> None:
    weights = np.full(values.shape, 1.0 / max(values.size, 1))
    ax.hist(
        np.clip(values, bins[0], bins[-1]),
        bins=bins,
        weights=weights,
        histtype="step",
        lw=1.6,
        color=color,
        label=label,
    )


def figure_bias_histograms(run: RunData, summary: Any = None) -> Any:
    """P6: histograms per model of β_{j*}, of |β_{j*}|/‖g‖ relative to ρ̃, and of ⟨x,g⟩/(Ψ^{i*}−Ψ^{j*})."""
    if not all(C.BETA in m.frame and C.HOMOGENEOUS in m.frame for m in run.models):
        return None
    plt = require_pyplot()
    colors = model_colors(run.models)
    fig, axes = plt.subplots(1, 3, figsize=(16.5, 4.6))
    betas = [_finite(m.frame[C.BETA])[0] for m in run.models]
    allb = np.concatenate(betas)
    lim = float(np.percentile(np.abs(allb), 99)) if allb.size else 1.0
    lim = lim if lim > 0 else 1.0
    bins = np.linspace(-lim, lim, 50)
    for m, b in zip(run.models, betas, strict=True):
        _step_hist(
            axes[0], b, bins, colors[m.tag], f"{m.label} (median {np.median(b):.2f})" if b.size else m.label
        )
    axes[0].axvline(0, color="0.4", lw=0.8)
    axes[0].set_xlabel(
        r"effective bias $\beta_{j^*} = \beta^{i^*} - \beta^{j^*}$ (logit units; clipped at the 99th pct)"
    )
    axes[0].set_title(
        r"$\beta_{j^*}$: the part of the margin not explained by $\langle x, g\rangle$", fontsize=10
    )
    rels = []
    for m in run.models:
        if C.BIAS_RATIO in m.frame:
            ratio, rho_lin = _finite(m.frame[C.BIAS_RATIO], m.frame[C.RHO_LIN])
            with np.errstate(divide="ignore", invalid="ignore"):
                rels.append(ratio / rho_lin)
    rel_all = np.concatenate(rels) if rels else np.array([1.0])
    rel_all = rel_all[np.isfinite(rel_all) & (rel_all > 0)]
    log_rel = rel_all.size > 0
    if log_rel:
        r_lo, r_hi = np.percentile(rel_all, [1, 99])
        r_hi = max(float(r_hi), float(r_lo) * 10)
        rel_bins = np.geomspace(float(r_lo), r_hi, 50)
    else:
        rel_bins = np.linspace(0, 1, 50)
    for m in run.models:
        if C.BIAS_RATIO not in m.frame:
            continue
        ratio, rho_lin = _finite(m.frame[C.BIAS_RATIO], m.frame[C.RHO_LIN])
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = ratio / rho_lin
        rel = rel[np.isfinite(rel) & (rel > 0)]
        _step_hist(
            axes[1],
            rel,
            rel_bins,
            colors[m.tag],
            f"{m.label} (median {np.median(rel):.2f})" if rel.size else m.label,
        )
    if log_rel:
        axes[1].set_xscale("log")
        axes[1].axvline(1, color="0.4", lw=0.8, ls="--")
    axes[1].set_xlabel(r"$(|\beta_{j^*}|/\|g\|)\,/\,\tilde\rho$ (log; 1st–99th pct; >1: bias dominates)")
    axes[1].set_title(r"T4 slack relative to $\tilde\rho$ (0 = bias-free behaviour)", fontsize=10)
    hom_all = np.concatenate([_finite(m.frame[C.HOMOGENEOUS])[0] for m in run.models])
    h_lo, h_hi = np.percentile(hom_all, [5, 95]) if hom_all.size else (0.0, 2.0)
    h_lo, h_hi = min(float(h_lo), 0.0), max(float(h_hi), 2.0)
    hom_bins = np.linspace(h_lo, h_hi, 60)
    for m in run.models:
        h = _finite(m.frame[C.HOMOGENEOUS])[0]
        _step_hist(
            axes[2],
            h,
            hom_bins,
            colors[m.tag],
            f"{m.label} (median {np.median(h):.2f})" if h.size else m.label,
        )
    axes[2].axvline(1, color="0.4", lw=0.8, ls="--")
    axes[2].set_xlabel(
        r"homogeneous fraction $\langle x, g\rangle \,/\, (\Psi^{i^*} - \Psi^{j^*})$ (clipped to the 5th–95th pct)"
    )
    axes[2].set_title(r"1 = margin fully explained by $\langle x, g\rangle$ (bias-free)", fontsize=10)
    for ax in axes:
        ax.set_ylabel("fraction of samples")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.25)
    fig.suptitle("P6 Effective bias and homogeneous decomposition (T3)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


# ---------------------------------------------------------------------------------------------
# P7 rival agreement


def figure_rivals(run: RunData, summary: Any = None) -> Any:
    """P7: how often the nearest-boundary rival j*, the runner-up and the attack's class agree,
    and which attack found each sample's minimum."""
    needed = (C.RIVAL_NEAREST, C.RIVAL_RUNNER_UP, C.ADV_CLASS)
    if not all(all(c in m.frame for c in needed) for m in run.models):
        return None
    plt = require_pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.0))
    pairs = [
        ("j* = runner-up", C.RIVAL_NEAREST, C.RIVAL_RUNNER_UP),
        ("j* = attack class", C.RIVAL_NEAREST, C.ADV_CLASS),
        ("runner-up = attack class", C.RIVAL_RUNNER_UP, C.ADV_CLASS),
    ]
    x = np.arange(len(run.models))
    width = 0.8 / len(pairs)
    for k, (label, a, b) in enumerate(pairs):
        rates = []
        for m in run.models:
            f = m.frame
            if C.RHO_SUCCESS in f and C.ADV_CLASS in (a, b):
                f = f[f[C.RHO_SUCCESS].astype(bool)]
            rates.append(100 * float((f[a] == f[b]).mean()) if len(f) else np.nan)
        bars = ax1.bar(x + (k - 1) * width, rates, width, label=label)
        ax1.bar_label(bars, fmt="%.0f", fontsize=7)
    ax1.set_xticks(x)
    ax1.set_xticklabels([m.label for m in run.models])
    ax1.set_ylim(0, 110)
    ax1.set_ylabel("agreement (%)")
    ax1.set_title("rival class agreement", fontsize=10)
    ax1.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=3, frameon=False)
    attacks = C.attack_names(run.models[0].frame.columns)
    if C.BEST_ATTACK in run.models[0].frame and attacks:
        bottom = np.zeros(len(run.models))
        for attack in attacks:
            frac = np.array([100 * float((m.frame[C.BEST_ATTACK] == attack).mean()) for m in run.models])
            ax2.bar(x, frac, 0.6, bottom=bottom, label=attack)
            bottom += frac
        ax2.set_xticks(x)
        ax2.set_xticklabels([m.label for m in run.models])
        ax2.set_ylabel("samples where the attack found the minimum (%)")
        ax2.set_ylim(0, 105)
        ax2.legend(
            fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.09), ncol=len(attacks), frameon=False
        )
        ax2.set_title("which attack defined ρ", fontsize=10)
    else:
        ax2.set_visible(False)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.25, axis="y")
    fig.suptitle("P7 Class-pair sensitivity: j*, runner-up, and the class the attacks reached", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


# ---------------------------------------------------------------------------------------------
# P8 linear sanity experiment


def figure_linear_sanity(run: RunData, summary: Any = None) -> Any:
    """P8: the theory's exact cases: α_bin = ρ for a bias-free linear model (T2b), |α_bin − ρ| ≤
    |b|/‖z‖ with bias (T1'), α_bin = ρ̃ for a bias-free ReLU net (T4 with β = 0)."""
    s = run.sanity
    if s is None or not len(s):
        return None
    plt = require_pyplot()
    variants = list(dict.fromkeys(s["variant"]))
    fig, axes = plt.subplots(1, len(variants), figsize=(5.4 * len(variants), 4.8), squeeze=False)
    for ax, variant in zip(axes[0], variants, strict=True):
        f = s[s["variant"] == variant]
        x = f["reference"].to_numpy(dtype=np.float64)
        y = f["alignment_binarized"].to_numpy(dtype=np.float64)
        slack = f["slack"].to_numpy(dtype=np.float64) if "slack" in f else np.zeros_like(x)
        ax.scatter(x, y, s=8, alpha=0.5, lw=0, color="tab:purple")
        if np.any(slack > 0):
            ax.errorbar(x, y, yerr=slack, fmt="none", ecolor="tab:purple", alpha=0.12, lw=0.6)
        lo, hi = _range(x, y, positive=False)
        _identity(ax, lo, hi)
        err = np.abs(y - x)
        ok = err <= slack + 1e-5 + 1e-4 * np.maximum(np.abs(x), np.abs(y))
        ref_name = str(f["reference_name"].iloc[0]) if "reference_name" in f else "reference"
        ax.set_xlabel(ref_name)
        ax.set_ylabel("α_bin")
        bound_note = "bound" if np.any(slack > 0) else "identity"
        ax.set_title(
            f"{variant}\nmax |α_bin − {ref_name}| = {err.max():.2e}; {bound_note} holds {int(ok.sum())}/{len(ok)}",
            fontsize=9,
        )
        ax.grid(alpha=0.25)
    fig.suptitle("P8 Linear sanity checks (exact cases of the theory)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return fig


#: File stem -> figure function, in report order.
FIGURES: dict[str, Callable[..., Any]] = {
    "p1_saliency_gallery": figure_gallery,
    "p2_alpha_vs_rho": figure_alpha_vs_rho,
    "p3_medians_vs_lambda": figure_medians,
    "p4_accuracy_vs_lambda": figure_accuracy,
    "p5_linearization": figure_linearization,
    "p6_bias_histograms": figure_bias_histograms,
    "p7_rival_agreement": figure_rivals,
    "p8_linear_sanity": figure_linear_sanity,
}


# ---------------------------------------------------------------------------------------------
# P9, P10: attribution methods and robustifiers (salign.report.attributions; drawn from an
# AttributionSummary instead of T1)

#: Colours of the robustifiers in P10 (the sweep's gradient penalty, the adversarial trainers).
ROBUSTIFIER_COLORS = {"gradient penalty": "tab:blue", "pgd_l2": "tab:red", "ddn": "tab:green"}
_MORE_COLORS = ("tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def _ci_err(rows: Any, prefix: str) -> np.ndarray:
    """Asymmetric error bars (2, k) from ``<prefix>_median``, ``_low``, ``_high`` (0 where NaN)."""
    med = rows[prefix + "_median"].to_numpy(dtype=float)
    err = np.stack(
        [
            med - rows[prefix + "_low"].to_numpy(dtype=float),
            rows[prefix + "_high"].to_numpy(dtype=float) - med,
        ]
    )
    return np.where(np.isfinite(err), np.maximum(err, 0.0), 0.0)


def figure_quality_vs_lambda(run: RunData, summary: Any = None) -> Any:
    """P9: median saliency quality (rank correlation with the image, stroke lift) of every
    attribution method against λ, with the bootstrap intervals of the medians as error bars.

    ``summary``: an :class:`~salign.report.attributions.AttributionSummary`; None when the run
    has no attribution columns or fewer than two sweep models."""
    table = getattr(summary, "attributions", None)
    if table is None or not len(table):
        return None
    sweep = table[table["arm"] == "sweep"]
    panels = [
        (q, label)
        for q, label in (
            ("rank_correlation", "median rank correlation of |map| with the image"),
            ("stroke_lift", "median stroke lift (1 = chance)"),
        )
        if q + "_median" in sweep
    ]
    if len(set(sweep["model"])) < 2 or not panels:
        return None
    plt = require_pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 4.6), squeeze=False)
    lams = sorted(set(sweep["lambda"]))
    cmap = plt.get_cmap("tab10")
    for ax, (q, label) in zip(axes[0], panels, strict=True):
        methods = list(dict.fromkeys(sweep["method"]))
        bases = list(dict.fromkeys(m.removeprefix("boundary_") for m in methods))
        for method in methods:
            rows = sweep[sweep["method"] == method].sort_values("lambda")
            if not np.isfinite(rows[q + "_median"].to_numpy(dtype=float)).any():
                continue
            # a boundary map: the colour of its map at x, dashed
            boundary = method.startswith("boundary_")
            i = bases.index(method.removeprefix("boundary_"))
            ax.errorbar(
                rows["lambda"],
                rows[q + "_median"],
                yerr=_ci_err(rows, q),
                marker="s" if boundary else "o",
                ls="--" if boundary else "-",
                color=cmap(i % 10),
                capsize=3,
                lw=1.4,
                ms=5,
                label=method,
            )
        _symlog_lambda(ax, lams)
        ax.set_ylabel(label)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=7)
    titles = {
        "rank_correlation": "rank correlation (threshold-free; 1 = |map| ranks like the image)",
        "stroke_lift": "stroke lift: share of |map| on the strokes ÷ their area",
    }
    return _finish_panels(
        fig,
        [titles[q] for q, _ in panels],
        f"P9 Saliency quality vs λ per attribution method (bars: {_level(summary)}% bootstrap CI of the median)",
    )


def _level(summary: Any) -> int:
    return round(100 * getattr(summary, "level", 0.95))


def _finish_panels(fig: Any, titles: list[str], suptitle: str) -> Any:
    """Panel titles, the figure's title and a tight layout below it."""
    for ax, title in zip(fig.axes, titles, strict=False):
        ax.set_title(title, fontsize=10)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return fig


def _robustifier_lines(arms: Any) -> list[tuple[str, Any]]:
    """(robustifier, rows in order) per line of P10: the sweep in λ order, each adversarial method
    in ε order starting at the λ = 0 model when there is one."""
    sweep = arms[arms["arm"] == "sweep"].sort_values("lambda")
    lines = [("gradient penalty", sweep)] if len(sweep) else []
    origin = sweep[sweep["lambda"] == 0]
    adversarial = arms[arms["arm"] == "adversarial"]
    for method in dict.fromkeys(adversarial["robustifier"]):
        rows = adversarial[adversarial["robustifier"] == method].sort_values("parameter")
        lines.append((str(method), require_pandas().concat([origin.iloc[:1], rows], ignore_index=True)))
    return lines


def figure_matched_robustness(run: RunData, summary: Any = None) -> Any:
    """P10: median α against median ρ, one point per model and one line per robustifier (the
    gradient-penalty sweep in λ order, each adversarial-training method in ε order from the
    undefended λ = 0 model), listed models as labelled markers; error bars: the bootstrap
    intervals of both medians. A second panel shows the gradient map's median rank correlation
    with the image instead of α, when evaluated."""
    arms = getattr(summary, "arms", None)
    if arms is None or len(arms) < 2 or "rho_median" not in arms or "alpha_median" not in arms:
        return None
    plt = require_pyplot()
    panels = [("alpha", "median α (gradient)")]
    if "quality_median" in arms and np.isfinite(arms["quality_median"].to_numpy(dtype=float)).any():
        panels.append(("quality", "median rank correlation of |∇Ψ| with the image"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.4 * len(panels), 5.0), squeeze=False)
    extra = iter(_MORE_COLORS * 4)
    colors = dict(ROBUSTIFIER_COLORS)
    for ax, (q, label) in zip(axes[0], panels, strict=True):
        for name, rows in _robustifier_lines(arms):
            color = colors.setdefault(name, next(extra))
            ax.errorbar(
                rows["rho_median"],
                rows[q + "_median"],
                xerr=_ci_err(rows, "rho"),
                yerr=_ci_err(rows, q),
                marker="o",
                color=color,
                capsize=3,
                lw=1.5,
                ms=6,
                label=name,
            )
            for _, r in rows.iterrows():
                if name != "gradient penalty" and r["arm"] == "sweep":
                    continue  # the common origin, labelled by the sweep's line
                text = f"λ={r['lambda']:g}" if r["arm"] == "sweep" else f"ε={r['parameter']:g}"
                ax.annotate(
                    text,
                    (r["rho_median"], r[q + "_median"]),
                    textcoords="offset points",
                    xytext=(5, -11),
                    fontsize=7,
                    color=color,
                )
        others = arms[~arms["arm"].isin(["sweep", "adversarial"])]
        for i, (_, r) in enumerate(others.iterrows()):
            one = others.iloc[i : i + 1]
            ax.errorbar(
                one["rho_median"],
                one[q + "_median"],
                xerr=_ci_err(one, "rho"),
                yerr=_ci_err(one, q),
                marker="D",
                ms=7,
                ls="none",
                color=LISTED_COLORS[(i + 3) % len(LISTED_COLORS)],
                mec="black",
                capsize=3,
                label=f"{r['model']} ({r['arm']})",
            )
            ax.annotate(
                str(r["model"]),
                (r["rho_median"], r[q + "_median"]),
                textcoords="offset points",
                xytext=(6, 4),
                fontsize=8,
            )
        ax.set_xlabel(f"median ρ ({norm_label(run.norm)} distance to the nearest adversarial example)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.25)
        ax.legend(fontsize=8)
    return _finish_panels(
        fig,
        ["alignment at matched robustness", "saliency quality at matched robustness"],
        f"P10 Robustifiers compared at matched robustness (bars: {_level(summary)}% bootstrap CIs of the medians)",
    )


#: File stem -> figure function of the "Attributions and robustifiers" section (drawn from an
#: AttributionSummary by ``save_figures(..., figures=ATTRIBUTION_FIGURES)``).
ATTRIBUTION_FIGURES: dict[str, Callable[..., Any]] = {
    "p9_quality_vs_lambda": figure_quality_vs_lambda,
    "p10_matched_robustness": figure_matched_robustness,
}


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = DPI) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    plt = require_pyplot()
    target = Path(path)
    try:
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return target


def save_figures(
    run: RunData,
    summary: Any,
    out_dir: str | os.PathLike[str],
    *,
    names: tuple[str, ...] | None = None,
    suffix: str = "",
    figures: dict[str, Callable[..., Any]] | None = None,
) -> dict[str, Path]:
    """Draw every figure the run supports (or only ``names``) into ``out_dir/<name><suffix>.png``
    (``suffix``: the norm's, for a run of :meth:`RunData.for_norm`); returns name + suffix -> path.
    ``figures``: the figures to draw (default :data:`FIGURES`, P1–P8 from T1;
    :data:`ATTRIBUTION_FIGURES` with an AttributionSummary as ``summary``)."""
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for name, draw in (FIGURES if figures is None else figures).items():
        if names is not None and name not in names:
            continue
        fig = draw(run, summary)
        if fig is None:
            continue
        written[name + suffix] = save_figure(fig, out / f"{name}{suffix}.png")
    return written


__all__ = [
    "ATTRIBUTION_FIGURES",
    "FIGURES",
    "NORM_FIGURES",
    "model_colors",
    "saliency_to_image",
    "save_figure",
    "save_figures",
]

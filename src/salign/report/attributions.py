"""Attribution methods and robustifiers in the report: ``attributions.csv``, ``arms.csv`` and the
comparison of robustifiers at matched robustness.

Reads the columns of :mod:`salign.report.columns` ("Attributions beyond the input gradient"):
per attribution method m, ``attr_<m>_{alignment, alignment_binarized, stroke_mass, stroke_lift,
rank_correlation}`` (docs/theory.md, "Saliency quality"), and the boundary columns
(:data:`~salign.report.columns.BOUNDARY_COLUMNS`). Every model is one *arm* of the study, made
robust by a *robustifier*: the gradient penalty at λ (``"arm": {"kind": "sweep"}``), adversarial
training at ε (``{"kind": "adversarial", "method": "pgd_l2" | "ddn", "epsilon": ε}``), or nothing
the study knows of (``listed``/``given`` models).

- :func:`attribution_table`: one row per (model, method) (+ a ``boundary`` row set), medians with
  seeded bootstrap intervals (:func:`~salign.report.stats.bootstrap_median`) and Spearman(α_m, ρ)
  per model and pooled over the models.
- :func:`arm_table`: one row per model: its robustifier and parameter, median ρ, median α (the
  paper's gradient α) and the gradient map's median quality, with intervals.
- :func:`matched_comparisons`: for each adversarial-training arm, its median α minus the
  gradient-penalty line's α at the arm's median ρ (linear interpolation in ρ between neighbouring
  sweep models), with a bootstrap interval of the difference.

Nothing here applies to a run without these columns and without adversarial arms
(:func:`attribution_summary` returns None and the report is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from salign.report import columns as C
from salign.report._deps import require_pandas
from salign.report.rundata import ModelResult, RunData
from salign.report.stats import (
    N_BOOTSTRAP,
    bootstrap_correlation,
    bootstrap_medians,
    percentile_interval,
)
from salign.report.tables import POOLED

#: Long table of the attribution methods, written by :func:`salign.report.render` into the run dir.
ATTRIBUTIONS_FILE = "attributions.csv"
#: One row per model: robustifier, parameter, median ρ, α and quality (the numbers of figure P10).
ARMS_FILE = "arms.csv"
#: The ``method`` of the rows of :func:`attribution_table` that hold the boundary columns.
BOUNDARY_METHOD = "boundary"
#: Arm kinds of ``eval/<tag>.json``'s ``"arm"``.
SWEEP, ADVERSARIAL, LISTED, GIVEN = "sweep", "adversarial", "listed", "given"
#: The robustifier label of the λ sweep.
GRADIENT_PENALTY = "gradient penalty"
#: Boundary columns summarised by median and interval (``boundary_failed`` becomes a rate, the
#: completeness gap its maximum |gap|).
BOUNDARY_MEDIANS = (
    C.BOUNDARY_COLUMNS["direction_cosine"],
    C.BOUNDARY_COLUMNS["boundary_alignment"],
    C.BOUNDARY_COLUMNS["alignment_at_boundary"],
    C.BOUNDARY_COLUMNS["integrated_gradients_alignment"],
)
BOUNDARY_FAILED = C.BOUNDARY_COLUMNS["failed"]
COMPLETENESS_GAP = C.BOUNDARY_COLUMNS["completeness_gap"]
#: The gradient map's quality column used for the arms' quality (P10's second panel).
GRADIENT_QUALITY = C.attribution_column("gradient", "rank_correlation")
#: (arm-table prefix, column) whose medians :func:`arm_table` reports.
ARM_MEDIANS = (("rho", C.RHO), ("alpha", C.ALPHA), ("quality", GRADIENT_QUALITY))


# ---------------------------------------------------------------------------------------------
# Arms


def arm_of(model: ModelResult) -> dict[str, Any]:
    """The model's ``"arm"`` record; an old run without one: ``sweep`` for a finite λ, else ``listed``."""
    arm = model.meta.get("arm")
    if isinstance(arm, dict) and arm.get("kind"):
        return arm
    return {
        "kind": LISTED if math.isnan(model.lam) else SWEEP,
        "lambda": None if math.isnan(model.lam) else model.lam,
    }


def arm_kind(model: ModelResult) -> str:
    """``sweep``, ``adversarial``, ``listed`` or ``given``."""
    return str(arm_of(model)["kind"])


def robustifier(model: ModelResult) -> str:
    """How the model was made robust: ``gradient penalty`` (the sweep), the adversarial-training
    method (``pgd_l2``, ``ddn``), or the arm kind for models the study did not train."""
    arm = arm_of(model)
    if arm["kind"] == SWEEP:
        return GRADIENT_PENALTY
    if arm["kind"] == ADVERSARIAL:
        return str(arm.get("method") or ADVERSARIAL)
    return str(arm["kind"])


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def arm_parameter(model: ModelResult) -> float:
    """λ for the sweep, ε for adversarial training, NaN for the others."""
    arm = arm_of(model)
    if arm["kind"] == SWEEP:
        return model.lam
    if arm["kind"] == ADVERSARIAL:
        return _float(arm.get("epsilon"))
    return float("nan")


def arm_label(model: ModelResult) -> str:
    """``λ=10``, ``pgd-1 (pgd_l2, ε=1)`` or the tag."""
    if arm_kind(model) == ADVERSARIAL:
        eps = arm_parameter(model)
        return f"{model.tag} ({robustifier(model)}, ε={eps:g})" if np.isfinite(eps) else model.tag
    return model.label


def adversarial_models(run: RunData) -> list[ModelResult]:
    """The adversarial-training arms, in run order."""
    return [m for m in run.models if arm_kind(m) == ADVERSARIAL]


def methods_of(run: RunData) -> list[str]:
    """The attribution methods any model has columns for (first-seen order)."""
    found: list[str] = []
    for m in run.models:
        found += [name for name in C.attribution_methods(m.frame.columns) if name not in found]
    return found


def has_boundary(run: RunData) -> bool:
    """Does any model have a boundary column?"""
    cols = set(C.BOUNDARY_COLUMNS.values())
    return any(cols & set(m.frame.columns) for m in run.models)


def has_attributions(run: RunData) -> bool:
    """Does any model have an attribution or a boundary column?"""
    return bool(methods_of(run)) or has_boundary(run)


# ---------------------------------------------------------------------------------------------
# Medians with intervals


@dataclass(frozen=True)
class _Boot:
    """Median settings shared by every table of one report (T1's ``n_bootstrap``, seed, level)."""

    n_bootstrap: int
    seed: int
    level: float

    def replicates(self, values: Any) -> np.ndarray:
        return bootstrap_medians(values, n_bootstrap=self.n_bootstrap, seed=self.seed)

    def put(self, row: dict[str, Any], prefix: str, values: Any) -> None:
        """``<prefix>_median``, ``_low``, ``_high`` of ``values`` into ``row``."""
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        row[f"{prefix}_median"] = float(np.median(v)) if v.size else float("nan")
        row[f"{prefix}_low"], row[f"{prefix}_high"] = percentile_interval(self.replicates(v), self.level)


def _column(frame: Any, col: str) -> np.ndarray:
    return frame[col].to_numpy(dtype=np.float64)


def _identity_columns(model: ModelResult) -> dict[str, Any]:
    arm = arm_of(model)
    return {
        "model": model.tag,
        "lambda": model.lam,
        "arm": arm["kind"],
        "robustifier": robustifier(model),
        "parameter": arm_parameter(model),
    }


def _method_row(frames: list[Any], method: str, boot: _Boot) -> dict[str, Any]:
    """Medians of one method's quantities over ``frames`` stacked, and Spearman(α_m, ρ)."""
    pd = require_pandas()
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    row: dict[str, Any] = {"method": method}
    present = [q for q in C.ATTR_QUANTITIES if C.attribution_column(method, q) in frame]
    first = _column(frame, C.attribution_column(method, present[0]))
    row["n"] = int(np.isfinite(first).sum())
    for q in present:
        boot.put(row, q, _column(frame, C.attribution_column(method, q)))
    alpha_col = C.attribution_column(method, "alignment")
    if alpha_col in frame and C.RHO in frame:
        corr = bootstrap_correlation(
            frame[alpha_col],
            frame[C.RHO],
            method="spearman",
            n_bootstrap=boot.n_bootstrap,
            seed=boot.seed,
            level=boot.level,
        )
        row["spearman_alignment_rho"] = corr.value
        row["spearman_alignment_rho_low"] = corr.low
        row["spearman_alignment_rho_high"] = corr.high
        row["spearman_alignment_rho_n"] = corr.n
    return row


def _boundary_row(frames: list[Any], boot: _Boot) -> dict[str, Any]:
    pd = require_pandas()
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    row: dict[str, Any] = {"method": BOUNDARY_METHOD, "n": len(frame)}
    if BOUNDARY_FAILED in frame:
        row["boundary_failed_rate"] = float(frame[BOUNDARY_FAILED].astype(float).mean())
    for col in BOUNDARY_MEDIANS:
        if col in frame:
            boot.put(row, col, _column(frame, col))
    if COMPLETENESS_GAP in frame:
        gap = np.abs(_column(frame, COMPLETENESS_GAP))
        gap = gap[np.isfinite(gap)]
        row[f"{COMPLETENESS_GAP}_max_abs"] = float(gap.max()) if gap.size else float("nan")
    return row


def attribution_table(
    run: RunData, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> Any:
    """``attributions.csv``: one row per (model, method), then the ``pooled`` rows per method.

    Columns: ``model``, ``lambda``, ``arm`` (kind), ``robustifier``, ``parameter`` (λ or ε),
    ``method``, ``n`` (finite values of the method's first column); per quantity q of
    :data:`~salign.report.columns.ATTR_QUANTITIES` present, ``<q>_median``, ``<q>_low``,
    ``<q>_high`` (seeded bootstrap percentile interval of the median); ``spearman_alignment_rho``
    (+ ``_low``, ``_high``, ``_n``) = Spearman(α_m, ρ) across the images (pooled: across all
    (image, model) pairs). With boundary columns, the rows of method ``boundary`` hold
    ``boundary_failed_rate``, the medians of :data:`BOUNDARY_MEDIANS` and
    ``boundary_ig_completeness_gap_max_abs``. Every model is resampled with the same seed.
    """
    pd = require_pandas()
    boot = _Boot(n_bootstrap, seed, level)
    rows: list[dict[str, Any]] = []
    methods = methods_of(run)
    boundary = has_boundary(run)
    for m in run.models:
        own = C.attribution_methods(m.frame.columns)
        for method in [name for name in methods if name in own]:
            rows.append({**_identity_columns(m), **_method_row([m.frame], method, boot)})
        if boundary and set(C.BOUNDARY_COLUMNS.values()) & set(m.frame.columns):
            rows.append({**_identity_columns(m), **_boundary_row([m.frame], boot)})
    if len(run.models) > 1:
        pooled = {
            "model": POOLED,
            "lambda": float("nan"),
            "arm": "",
            "robustifier": "",
            "parameter": float("nan"),
        }
        for method in methods:
            frames = [m.frame for m in run.models if method in C.attribution_methods(m.frame.columns)]
            rows.append({**pooled, **_method_row(frames, method, boot)})
        if boundary:
            frames = [m.frame for m in run.models if set(C.BOUNDARY_COLUMNS.values()) & set(m.frame.columns)]
            rows.append({**pooled, **_boundary_row(frames, boot)})
    return pd.DataFrame(rows)


def arm_table(run: RunData, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> Any:
    """``arms.csv``: one row per model (run order): ``model``, ``lambda``, ``arm``,
    ``robustifier``, ``parameter``, ``epsilon``, ``steps``, ``n``, and ``rho_*``, ``alpha_*``,
    ``quality_*`` (``_median``, ``_low``, ``_high``): median ρ, median α (the gradient's,
    column ``alignment``) and the gradient map's median rank correlation with the image
    (:data:`GRADIENT_QUALITY`, when evaluated), each with its bootstrap interval."""
    pd = require_pandas()
    boot = _Boot(n_bootstrap, seed, level)
    rows = []
    for m in run.models:
        arm = arm_of(m)
        row = {
            **_identity_columns(m),
            "epsilon": _float(arm.get("epsilon")),
            "steps": _float(arm.get("steps")),
            "n": len(m.frame),
        }
        for prefix, col in ARM_MEDIANS:
            if col in m.frame:
                boot.put(row, prefix, _column(m.frame, col))
        rows.append(row)
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Matched robustness


def interpolate_line(rho: Any, line_rho: Any, line_value: Any) -> np.ndarray:
    """The piecewise-linear line through the points (``line_rho``, ``line_value``), taken in
    order of ρ, at ``rho``; NaN outside [min, max] of ``line_rho`` (finite points only).

    ``line_rho``, ``line_value``: (k,) for one line, or (k, B) for one line per column (the
    bootstrap replicates); ``rho``: a scalar or (B,). Returns shape (B,) (B = 1 for one line).
    """
    xs = np.asarray(line_rho, dtype=np.float64)
    ys = np.asarray(line_value, dtype=np.float64)
    if xs.ndim == 1:
        xs, ys = xs[:, None], ys[:, None]
    at = np.broadcast_to(np.asarray(rho, dtype=np.float64).reshape(-1), (xs.shape[1],))
    out = np.full(xs.shape[1], np.nan)
    for b in range(xs.shape[1]):
        keep = np.isfinite(xs[:, b]) & np.isfinite(ys[:, b])
        x, y = xs[keep, b], ys[keep, b]
        if x.size < 2 or not np.isfinite(at[b]) or not x.min() <= at[b] <= x.max():
            continue
        order = np.argsort(x, kind="stable")
        out[b] = np.interp(at[b], x[order], y[order])
    return out


@dataclass(frozen=True)
class MatchedComparison:
    """An adversarial-training arm against the gradient-penalty line at the arm's median ρ.

    Attributes:
        model: the arm's tag; ``robustifier`` its method, ``parameter`` its ε.
        quantity: ``"alpha"`` (median α) or ``"quality"`` (median rank correlation of the
            gradient map with the image).
        rho: the arm's median ρ; ``rho_range``: (min, max) of the sweep models' median ρ.
        value: the arm's median of ``quantity``.
        reference: the gradient-penalty line at ``rho`` (NaN outside ``rho_range``).
        difference: value − reference, with the ``level`` bootstrap interval ``low``, ``high``.
    """

    model: str
    robustifier: str
    parameter: float
    quantity: str
    rho: float
    rho_range: tuple[float, float]
    value: float
    reference: float
    difference: float
    low: float
    high: float
    level: float

    @property
    def inside(self) -> bool:
        """Does the arm's median ρ lie within the sweep's range of median ρ?"""
        return bool(np.isfinite(self.reference))

    @property
    def verdict(self) -> str:
        """``higher`` / ``lower`` (the interval of the difference excludes 0), ``not
        distinguishable``, or ``outside`` (no sweep model on both sides of the arm's ρ)."""
        if not self.inside:
            return "outside"
        if self.low > 0:
            return "higher"
        if self.high < 0:
            return "lower"
        return "not distinguishable"


def matched_comparisons(
    run: RunData,
    *,
    quantity: str = "alpha",
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> list[MatchedComparison]:
    """Each adversarial-training arm's median ``quantity`` (``alpha``: column ``alignment``;
    ``quality``: :data:`GRADIENT_QUALITY`) minus the gradient-penalty line's at the arm's median ρ.

    The line joins the sweep models' (median ρ, median quantity) points sorted by median ρ and is
    linear in ρ between neighbours. The interval of the difference is the percentile interval of
    the same difference on every bootstrap replicate (each model's samples resampled, every model
    with the same seed; replicates whose ρ falls outside that replicate's line are dropped).
    Empty without two sweep models or an adversarial arm, or without the columns.
    """
    column = dict(ARM_MEDIANS)[quantity]
    sweep = [m for m in run.models if arm_kind(m) == SWEEP]
    arms = adversarial_models(run)
    needed = (C.RHO, column)
    if len(sweep) < 2 or not arms or not all(c in m.frame for m in sweep + arms for c in needed):
        return []
    boot = _Boot(n_bootstrap, seed, level)

    def medians(m: ModelResult, col: str) -> tuple[float, np.ndarray]:
        v = _column(m.frame, col)
        v = v[np.isfinite(v)]
        return (float(np.median(v)) if v.size else float("nan")), boot.replicates(v)

    line = [(medians(m, C.RHO), medians(m, column)) for m in sweep]
    line_rho = np.array([r[0] for r, _ in line])
    line_val = np.array([v[0] for _, v in line])
    line_rho_b = np.stack([r[1] for r, _ in line])  # (k, B)
    line_val_b = np.stack([v[1] for _, v in line])
    finite = line_rho[np.isfinite(line_rho)]
    rho_range = (float(finite.min()), float(finite.max())) if finite.size else (math.nan, math.nan)
    out = []
    for m in arms:
        (rho, rho_b), (value, value_b) = medians(m, C.RHO), medians(m, column)
        reference = float(interpolate_line(rho, line_rho, line_val)[0])
        low, high = float("nan"), float("nan")
        if np.isfinite(reference):
            low, high = percentile_interval(value_b - interpolate_line(rho_b, line_rho_b, line_val_b), level)
        out.append(
            MatchedComparison(
                m.tag,
                robustifier(m),
                arm_parameter(m),
                quantity,
                rho,
                rho_range,
                value,
                reference,
                value - reference,
                low,
                high,
                level,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Everything the report shows


@dataclass(frozen=True)
class AttributionSummary:
    """The tables and comparisons of the "Attributions and robustifiers" section.

    ``attributions`` is None for a run without attribution columns (a study of adversarial arms
    only); ``comparisons`` compare α, ``quality_comparisons`` the gradient map's rank correlation.
    """

    attributions: Any  # pandas.DataFrame or None
    arms: Any  # pandas.DataFrame
    comparisons: list[MatchedComparison]
    quality_comparisons: list[MatchedComparison]
    level: float = 0.95


def attribution_summary(
    run: RunData, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95
) -> AttributionSummary | None:
    """The section's tables, or None when the run has neither attribution columns nor an
    adversarial-training arm (its report is then exactly as before)."""
    if not has_attributions(run) and not adversarial_models(run):
        return None
    kw: dict[str, Any] = {"n_bootstrap": n_bootstrap, "seed": seed, "level": level}
    return AttributionSummary(
        attribution_table(run, **kw) if has_attributions(run) else None,
        arm_table(run, **kw),
        matched_comparisons(run, quantity="alpha", **kw),
        matched_comparisons(run, quantity="quality", **kw),
        level,
    )


__all__ = [
    "ARMS_FILE",
    "ATTRIBUTIONS_FILE",
    "BOUNDARY_METHOD",
    "GRADIENT_PENALTY",
    "AttributionSummary",
    "MatchedComparison",
    "adversarial_models",
    "arm_kind",
    "arm_label",
    "arm_of",
    "arm_parameter",
    "arm_table",
    "attribution_summary",
    "attribution_table",
    "has_attributions",
    "interpolate_line",
    "matched_comparisons",
    "methods_of",
    "robustifier",
]

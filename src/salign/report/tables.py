"""Table T1 (``summary.csv``): one row per model plus a pooled row.

Columns: λ, accuracies, sample counts, median/mean ρ per attack and over the ensemble, attack
success rates and how often each attack was the best, medians and quartiles of α, α_bin,
α/‖x‖, ρ̃, |β_{j*}|/‖g‖ and the homogeneous fraction, Pearson and Spearman correlations of
(α, ρ), (α_bin, ρ) and (ρ̃, ρ) with seeded bootstrap 95% intervals, and the T4 bound count.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from salign.report import columns as C
from salign.report._deps import require_pandas
from salign.report.rundata import RunData
from salign.report.stats import N_BOOTSTRAP, bootstrap_correlation, spread

POOLED = "pooled"

#: (summary prefix, column) pairs whose median and quartiles go into T1.
SPREAD_COLUMNS = (
    ("rho", C.RHO),
    ("alpha", C.ALPHA),
    ("alpha_bin", C.ALPHA_BIN),
    ("alpha_norm", C.ALPHA_NORM),
    ("rho_lin", C.RHO_LIN),
    ("bias_ratio", C.BIAS_RATIO),
    ("homogeneous", C.HOMOGENEOUS),
    ("grad_norm", C.GRAD_NORM),
)

#: (summary prefix, x column, y column) correlations reported in T1.
CORRELATIONS = (
    ("alpha_rho", C.ALPHA, C.RHO),
    ("alpha_bin_rho", C.ALPHA_BIN, C.RHO),
    ("rho_lin_rho", C.RHO_LIN, C.RHO),
    ("alpha_bin_rho_lin", C.ALPHA_BIN, C.RHO_LIN),
)


def summary_row(
    frame: Any,
    *,
    model: str,
    lam: float,
    meta: dict[str, Any] | None = None,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """The T1 row of one per-sample table (a model's, or all models pooled)."""
    meta = meta or {}
    row: dict[str, Any] = {"model": model, "lambda": lam, "n": len(frame)}
    row["accuracy"] = meta.get("accuracy", float("nan"))
    row["accuracy_n"] = meta.get("accuracy_n", float("nan"))
    if "top5" in meta:
        row["top5"] = meta["top5"]
    labelled = frame[frame[C.LABEL] >= 0] if C.LABEL in frame else frame
    row["accuracy_eval"] = (
        float(labelled[C.CORRECT].astype(float).mean())
        if C.CORRECT in frame and len(labelled)
        else float("nan")
    )
    if C.RHO_SUCCESS in frame:
        row["rho_success_rate"] = float(frame[C.RHO_SUCCESS].astype(float).mean())
    for prefix, col in SPREAD_COLUMNS:
        if col not in frame:
            continue
        s = spread(frame[col])
        row[f"{prefix}_median"] = s.median
        row[f"{prefix}_q25"] = s.q25
        row[f"{prefix}_q75"] = s.q75
        row[f"{prefix}_mean"] = s.mean
    for attack in C.attack_names(frame.columns):
        dist = frame[C.ATTACK_PREFIX + attack].to_numpy(dtype=np.float64)
        s = spread(dist)
        row[f"rho_{attack}_median"] = s.median
        row[f"rho_{attack}_mean"] = s.mean
        succ_col = C.SUCCESS_PREFIX + attack
        succ = frame[succ_col].astype(float) if succ_col in frame else np.isfinite(dist).astype(float)
        row[f"success_{attack}_rate"] = float(np.mean(succ))
        if C.BEST_ATTACK in frame:
            row[f"best_{attack}_fraction"] = float((frame[C.BEST_ATTACK] == attack).mean())
    for prefix, xcol, ycol in CORRELATIONS:
        if xcol not in frame or ycol not in frame:
            continue
        for method in ("pearson", "spearman"):
            corr = bootstrap_correlation(
                frame[xcol], frame[ycol], method=method, n_bootstrap=n_bootstrap, seed=seed, level=level
            )
            row[f"{method}_{prefix}"] = corr.value
            row[f"{method}_{prefix}_low"] = corr.low
            row[f"{method}_{prefix}_high"] = corr.high
        row[f"corr_{prefix}_n"] = corr.n
    if C.T4_HOLDS in frame:
        row["t4_holds"] = int(frame[C.T4_HOLDS].sum())
        row["t4_n"] = len(frame)
    if C.RIVAL_NEAREST in frame and C.RIVAL_RUNNER_UP in frame:
        row["agree_nearest_runner_up"] = float((frame[C.RIVAL_NEAREST] == frame[C.RIVAL_RUNNER_UP]).mean())
        if C.ADV_CLASS in frame:
            found = frame[C.RHO_SUCCESS].astype(bool) if C.RHO_SUCCESS in frame else np.ones(len(frame), bool)
            sub = frame[found]
            row["agree_nearest_attack"] = float((sub[C.RIVAL_NEAREST] == sub[C.ADV_CLASS]).mean())
            row["agree_runner_up_attack"] = float((sub[C.RIVAL_RUNNER_UP] == sub[C.ADV_CLASS]).mean())
    return row


def summary_table(run: RunData, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> Any:
    """Table T1 for a loaded run: one row per model in λ order, then a ``pooled`` row."""
    pd = require_pandas()
    rows = [
        summary_row(
            m.frame, model=m.tag, lam=m.lam, meta=m.meta, n_bootstrap=n_bootstrap, seed=seed, level=level
        )
        for m in run.models
    ]
    if len(run.models) > 1:
        pooled = run.pooled()
        accs = [m.meta.get("accuracy", float("nan")) for m in run.models]
        meta = {"accuracy": float(np.nanmean(accs)) if not all(map(math.isnan, accs)) else float("nan")}
        rows.append(
            summary_row(
                pooled,
                model=POOLED,
                lam=float("nan"),
                meta=meta,
                n_bootstrap=n_bootstrap,
                seed=seed,
                level=level,
            )
        )
    return pd.DataFrame(rows)

"""Names of the per-sample columns of ``eval/<model>.csv`` and the quantities derived from them.

The table holds the columns of :meth:`salign.Analysis.to_frame` (α, α_bin, ρ̃, β, ...) plus the
pipeline's own: ``sample_id`` (index into the dataset split), ``model`` (the model's tag),
``lambda``, and the attack columns ``rho`` (L2 distance to the nearest adversarial example found
by the ensemble, +inf if none), ``rho_success``, ``adv_class``, ``best_attack`` and, per attack
``<a>``, ``rho_<a>`` and ``success_<a>``.

Other norms (``evaluation.norms``): the L2 columns keep these names; the columns of a norm
p ≠ 2 carry its suffix (:func:`norm_suffix`: ``_linf``, ``_l1``), e.g. ``alignment_binarized_linf``,
``rho_linf``, ``rho_fmn_linf``, ``t4_holds_linf`` — except the columns that do not depend on the
norm (:data:`SHARED_COLUMNS`: ``pred``, ``label``, ...), stored once. :func:`norm_view` gives a
norm's columns under the L2 names, so every table, figure and statistic is written once and
applied per norm.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

SAMPLE_ID = "sample_id"
MODEL = "model"
LAMBDA = "lambda"
LABEL = "label"
PRED = "pred"
CORRECT = "correct"
ALPHA = "alignment"
ALPHA_BIN = "alignment_binarized"
ALPHA_NORM = "alignment_normalized"
RHO_LIN = "linearized_robustness"
BETA = "effective_bias"
GRAD_NORM = "grad_norm"
BIN_GRAD_NORM = "binarized_grad_norm"
HOMOGENEOUS = "homogeneous_fraction"
#: Ψ^{i*} − Ψ^{j} for the binarized rival j (``logit_margin`` is against the runner-up).
MARGIN = "margin"
LOGIT_MARGIN = "logit_margin"
#: |β_j| / ‖g‖ as computed by salign.analyze.
BIAS_DISTANCE = "bias_distance"
RIVAL_NEAREST = "rival_nearest"
RIVAL_RUNNER_UP = "rival_runner_up"
RHO = "rho"
RHO_SUCCESS = "rho_success"
ADV_CLASS = "adv_class"
BEST_ATTACK = "best_attack"
#: Derived by :func:`add_derived`: |β_{j*}| / ‖g‖, the T4 slack.
BIAS_RATIO = "bias_over_grad"
#: Derived: does |α_bin − ρ̃| ≤ |β_{j*}|/‖g‖ hold for this sample (T4)?
T4_HOLDS = "t4_holds"

ATTACK_PREFIX = "rho_"
SUCCESS_PREFIX = "success_"

#: Columns that do not depend on the norm (stored once, without a suffix, in every table).
SHARED_COLUMNS = (SAMPLE_ID, MODEL, LAMBDA, LABEL, PRED, CORRECT, LOGIT_MARGIN, RIVAL_RUNNER_UP,
                  "effective_bias_logit")  # fmt: skip
#: The suffix of each norm's columns (L2: none, the paper's names).
NORM_SUFFIXES: dict[float, str] = {2.0: "", math.inf: "_linf", 1.0: "_l1"}


def norm_suffix(p: float) -> str:
    """``""`` for L2, ``"_linf"`` for L∞, ``"_l1"`` for L1 (the suffix of that norm's columns)."""
    return NORM_SUFFIXES[float(p)]


def norm_column(name: str, p: float) -> str:
    """The column ``name`` of the norm ``p`` (``name`` itself for L2 and for the shared columns)."""
    return name if name in SHARED_COLUMNS else name + norm_suffix(p)


def norms_in(columns: Any) -> list[float]:
    """The norms a table holds (those with an ``alignment`` or ``rho`` column), L2 first."""
    cols = set(columns)
    return [p for p in NORM_SUFFIXES if {ALPHA + norm_suffix(p), RHO + norm_suffix(p)} & cols]


def _other_suffix(col: str) -> bool:
    return any(sfx and col.endswith(sfx) for sfx in NORM_SUFFIXES.values())


def norm_view(frame: Any, p: float) -> Any:
    """The columns of the norm ``p`` under the L2 names (a new frame): the shared columns, then
    ``<name><suffix>`` renamed to ``<name>``; other norms' columns and the derived ones are left
    out, then :func:`add_derived` recomputes T4 for this norm. ``p = 2`` keeps the unsuffixed
    columns."""
    sfx = norm_suffix(p)
    derived = {BIAS_RATIO, T4_HOLDS}
    if not sfx:
        keep = [c for c in frame.columns if not _other_suffix(c) and c not in derived]
        return add_derived(frame[keep])
    shared = [c for c in frame.columns if c in SHARED_COLUMNS]
    own = {c: c[: -len(sfx)] for c in frame.columns if c.endswith(sfx) and c[: -len(sfx)] not in derived}
    view = frame[shared + list(own)].rename(columns=own)
    return add_derived(view)


def attack_names(columns: Any) -> list[str]:
    """Attack names present in a table, from its ``rho_<attack>`` columns (in column order;
    other norms' ``rho_<attack>_linf`` columns are not counted: see :func:`norm_view`)."""
    names = []
    for col in columns:
        if (
            col.startswith(ATTACK_PREFIX)
            and col not in (RHO_SUCCESS,)
            and col != RHO
            and not _other_suffix(col)
        ):
            names.append(col[len(ATTACK_PREFIX) :])
    return names


def binarized_gradient_norm(frame: Any) -> np.ndarray:
    """‖g‖ = ‖∇(Ψ^{i*} − Ψ^{j*})‖ per sample.

    Read from the table when it has the column; otherwise recovered from ρ̃ = |Ψ^{i*} − Ψ^{j*}|/‖g‖
    and the logit margin against j* (exact algebra, same numbers the core computed).
    """
    if BIN_GRAD_NORM in frame:
        return frame[BIN_GRAD_NORM].to_numpy(dtype=np.float64)
    margin = np.abs(frame[MARGIN].to_numpy(dtype=np.float64))
    rho_lin = frame[RHO_LIN].to_numpy(dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return margin / rho_lin


def add_derived(frame: Any) -> Any:
    """Return a copy of ``frame`` with :data:`BIAS_RATIO` and :data:`T4_HOLDS` added."""
    from salign.report.stats import bound_holds

    out = frame.copy()
    if BIAS_RATIO not in out and BIAS_DISTANCE in out:
        out[BIAS_RATIO] = out[BIAS_DISTANCE].to_numpy(dtype=np.float64)
    if BIAS_RATIO not in out and BETA in out and (BIN_GRAD_NORM in out or MARGIN in out):
        with np.errstate(divide="ignore", invalid="ignore"):
            out[BIAS_RATIO] = np.abs(out[BETA].to_numpy(dtype=np.float64)) / binarized_gradient_norm(out)
    if BIAS_RATIO in out and ALPHA_BIN in out and RHO_LIN in out:
        out[T4_HOLDS] = bound_holds(out[ALPHA_BIN], out[RHO_LIN], out[BIAS_RATIO])
    return out


# ---------------------------------------------------------------------------------------------
# Attributions beyond the input gradient (``evaluation.attributions``, ``evaluation.boundary``)

#: ``attr_<method>_<quantity>``: a per-sample column of the attribution ``<method>`` (an entry's
#: label of ``evaluation.attributions``, e.g. ``integrated_gradients``; ``boundary_gradient`` and
#: ``boundary_integrated_gradients`` with ``evaluation.boundary``).
ATTR_PREFIX = "attr_"
#: α (logit map) and α_bin (binarized map) of a method, as :func:`salign.attributions.attribution_alignment`.
ATTR_ALIGNMENT_QUANTITIES = ("alignment", "alignment_binarized")
#: The saliency-quality measures of :class:`salign.attributions.SaliencyQuality` (on the logit map).
QUALITY_QUANTITIES = ("stroke_mass", "stroke_lift", "rank_correlation")
ATTR_QUANTITIES = ATTR_ALIGNMENT_QUANTITIES + QUALITY_QUANTITIES
#: Boundary attributions (:class:`salign.attributions.BoundaryAttribution` field → column), from
#: the boundary points of the L2 attack that gives ρ (no extra attack).
BOUNDARY_COLUMNS = {
    "failed": "boundary_failed",
    "direction_cosine": "boundary_cosine",
    "boundary_alignment": "boundary_alignment",
    "alignment_at_boundary": "alignment_at_boundary",
    "integrated_gradients_alignment": "boundary_ig_alignment",
    "completeness_gap": "boundary_ig_completeness_gap",
}


def attribution_column(method: str, quantity: str) -> str:
    """The column of ``quantity`` (one of :data:`ATTR_QUANTITIES`) for the attribution ``method``."""
    return f"{ATTR_PREFIX}{method}_{quantity}"


def attribution_methods(columns: Any) -> list[str]:
    """The attribution methods a table holds columns for (in column order)."""
    found: list[str] = []
    for col in columns:
        if not col.startswith(ATTR_PREFIX) or _other_suffix(col):
            continue
        for quantity in sorted(ATTR_QUANTITIES, key=len, reverse=True):  # alignment_binarized first
            if col.endswith("_" + quantity):
                method = col[len(ATTR_PREFIX) : -len(quantity) - 1]
                if method and method not in found:
                    found.append(method)
                break
    return found

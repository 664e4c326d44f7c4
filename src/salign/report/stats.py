"""Statistics of the study: correlations with seeded bootstrap confidence intervals, medians, IQRs.

Everything here is numpy only (no pandas, no scipy), deterministic for a given ``seed``, and
ignores pairs where either value is NaN or infinite (an attack that found no adversarial example
gives ρ = +inf; such samples are counted and reported, never silently mixed in).

The bootstrap resamples *pairs* (x_i, y_i) with replacement and recomputes the statistic on every
resample; Spearman's ρ is recomputed from average ranks of each resample (duplicated draws are
ties), so the interval is the percentile interval of the exact statistic, not of a shortcut.
Medians get the same kind of interval (:func:`bootstrap_median`: the percentile interval of the
medians of resampled values).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from salign.errors import InputError

FloatArray = NDArray[np.float64]

#: Default number of bootstrap resamples.
N_BOOTSTRAP = 2000
#: Resamples processed at once (bounds memory at about chunk × n floats).
_CHUNK = 200


@dataclass(frozen=True)
class Correlation:
    """A correlation coefficient with its bootstrap percentile confidence interval.

    Attributes:
        method: ``"pearson"`` or ``"spearman"``.
        value: the coefficient on the full sample (NaN when fewer than 3 finite pairs or a
            constant variable).
        low, high: bounds of the ``level`` percentile interval (NaN when ``value`` is NaN).
        n: number of finite pairs used.
        level: the confidence level, e.g. 0.95.
    """

    method: str
    value: float
    low: float
    high: float
    n: int
    level: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of 0."""
        return bool(np.isfinite(self.low) and np.isfinite(self.high) and (self.low > 0 or self.high < 0))

    def __str__(self) -> str:
        if not np.isfinite(self.value):
            return f"{self.method} n/a (n={self.n})"
        return f"{self.value:.2f} [{self.low:.2f}, {self.high:.2f}]"


def finite_pairs(x: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """The pairs where both ``x`` and ``y`` are finite, as float64 arrays."""
    xa = np.asarray(x, dtype=np.float64).ravel()
    ya = np.asarray(y, dtype=np.float64).ravel()
    if xa.shape != ya.shape:
        raise InputError(f"x and y must have the same length, got {xa.size} and {ya.size}")
    keep = np.isfinite(xa) & np.isfinite(ya)
    return xa[keep], ya[keep]


def average_ranks(values: ArrayLike) -> FloatArray:
    """Ranks 1..n of ``values`` (1-D), ties receiving the average of their ranks."""
    v = np.asarray(values, dtype=np.float64).ravel()
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    upper = np.cumsum(counts)  # rank of the last member of each tie group
    avg = upper - (counts - 1) / 2.0
    return avg[inverse]


def _pearson_rows(a: FloatArray, b: FloatArray) -> FloatArray:
    """Pearson's r of each row of ``a`` with the same row of ``b`` (NaN for constant rows)."""
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    num = (a * b).sum(axis=-1)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = num / den
    return np.where(den > 0, np.clip(r, -1.0, 1.0), np.nan)


def pearson(x: ArrayLike, y: ArrayLike) -> float:
    """Pearson's product-moment correlation of the finite pairs (NaN if < 3 pairs)."""
    xa, ya = finite_pairs(x, y)
    if xa.size < 3:
        return float("nan")
    return float(_pearson_rows(xa[None], ya[None])[0])


def spearman(x: ArrayLike, y: ArrayLike) -> float:
    """Spearman's rank correlation (Pearson's r of average ranks) of the finite pairs."""
    xa, ya = finite_pairs(x, y)
    if xa.size < 3:
        return float("nan")
    return float(_pearson_rows(average_ranks(xa)[None], average_ranks(ya)[None])[0])


def _resample_ranks(group_of: NDArray[np.int64], n_groups: int, draws: NDArray[np.int64]) -> FloatArray:
    """Average ranks of every bootstrap row, computed from tie groups of the original values.

    ``group_of[i]`` is the rank order (dense, 0-based) of sample i's value; a row's average rank
    for a drawn value v is (#draws with value < v) + (#draws equal to v + 1) / 2.
    """
    n_rows = draws.shape[0]
    groups = group_of[draws]  # (rows, n)
    flat = (groups + (np.arange(n_rows)[:, None] * n_groups)).ravel()
    counts = np.bincount(flat, minlength=n_rows * n_groups).reshape(n_rows, n_groups)
    upto = np.cumsum(counts, axis=1)
    avg = upto - counts + (counts + 1) / 2.0
    return np.take_along_axis(avg, groups, axis=1)


def bootstrap_correlation(
    x: ArrayLike,
    y: ArrayLike,
    *,
    method: str = "spearman",
    n_bootstrap: int = N_BOOTSTRAP,
    level: float = 0.95,
    seed: int = 0,
) -> Correlation:
    """Correlation of ``x`` and ``y`` with a seeded bootstrap percentile confidence interval.

    Args:
        x: paired samples (1-D, the length of ``y``); non-finite pairs are dropped.
        y: the samples paired with ``x``.
        method: ``"pearson"`` (linear) or ``"spearman"`` (rank; recomputed with average ranks
            on every resample).
        n_bootstrap: number of resamples of the pairs, drawn with replacement.
        level: confidence level of the percentile interval (0 < level < 1).
        seed: seed of the resampling generator; the same inputs and seed give the same interval.
    """
    if method not in ("pearson", "spearman"):
        raise InputError(f"method must be 'pearson' or 'spearman', got {method!r}")
    _check_bootstrap_args(n_bootstrap, level)
    xa, ya = finite_pairs(x, y)
    n = xa.size
    value = pearson(xa, ya) if method == "pearson" else spearman(xa, ya)
    if n < 3 or not np.isfinite(value):
        return Correlation(method, float("nan"), float("nan"), float("nan"), n, level)
    rng = np.random.default_rng(seed)
    if method == "spearman":
        _, gx = np.unique(xa, return_inverse=True)
        _, gy = np.unique(ya, return_inverse=True)
        nx, ny = int(gx.max()) + 1, int(gy.max()) + 1
    stats: list[FloatArray] = []
    for start in range(0, n_bootstrap, _CHUNK):
        rows = min(_CHUNK, n_bootstrap - start)
        draws = rng.integers(0, n, size=(rows, n))
        if method == "pearson":
            stats.append(_pearson_rows(xa[draws], ya[draws]))
        else:
            stats.append(_pearson_rows(_resample_ranks(gx, nx, draws), _resample_ranks(gy, ny, draws)))
    low, high = percentile_interval(np.concatenate(stats), level)
    return Correlation(method, value, low, high, n, level)


@dataclass(frozen=True)
class MedianCI:
    """A sample median with its bootstrap percentile confidence interval (→ :func:`bootstrap_median`).

    Attributes:
        value: the median of the finite values (NaN when there are none).
        low, high: bounds of the ``level`` percentile interval of the bootstrap medians.
        n: number of finite values used.
        level: the confidence level, e.g. 0.95.
    """

    value: float
    low: float
    high: float
    n: int
    level: float

    def __str__(self) -> str:
        if not np.isfinite(self.value):
            return f"n/a (n={self.n})"
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}]"


def _check_bootstrap_args(n_bootstrap: int, level: float) -> None:
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    if n_bootstrap < 1:
        raise InputError(f"n_bootstrap must be >= 1, got {n_bootstrap}")


def bootstrap_medians(values: ArrayLike, *, n_bootstrap: int = N_BOOTSTRAP, seed: int = 0) -> FloatArray:
    """The medians of ``n_bootstrap`` resamples (with replacement) of the finite entries of
    ``values``: shape (n_bootstrap,), all NaN when there are none.

    Vectorised over the resamples (``_CHUNK`` at a time) without sorting any of them: a
    resample's median is read off the cumulative counts of its draws over the sorted values (the
    order statistics ⌊(n−1)/2⌋ and ⌊n/2⌋), which equals ``np.median`` of the resample. The same
    values and seed give the same medians, and two samples of the same size resampled with the
    same seed draw the same indices (paired, e.g. ρ and α of one model's images).
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return np.full(n_bootstrap, np.nan)
    order = np.argsort(v, kind="stable")
    ordered = v[order]
    position = np.empty(n, dtype=np.int64)
    position[order] = np.arange(n)  # sample i is the position[i]-th smallest
    lower, upper = (n - 1) // 2, n // 2
    rng = np.random.default_rng(seed)
    out = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, _CHUNK):
        rows = min(_CHUNK, n_bootstrap - start)
        drawn = position[rng.integers(0, n, size=(rows, n))] + (np.arange(rows)[:, None] * n)
        upto = np.bincount(drawn.ravel(), minlength=rows * n).reshape(rows, n).cumsum(axis=1)
        out[start : start + rows] = (
            ordered[(upto > lower).argmax(axis=1)] + ordered[(upto > upper).argmax(axis=1)]
        ) / 2
    return out


def percentile_interval(replicates: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of the finite bootstrap ``replicates`` (NaNs if none)."""
    boot = np.asarray(replicates, dtype=np.float64).ravel()
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(boot, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_median(
    values: ArrayLike, *, n_bootstrap: int = N_BOOTSTRAP, level: float = 0.95, seed: int = 0
) -> MedianCI:
    """Median of the finite entries of ``values`` with a seeded bootstrap percentile interval.

    NaN and ±inf entries are left out (as in :func:`spread`: a failed attack's ρ = +inf is counted
    by the success rate, not here). The interval is the percentile interval of the medians of
    ``n_bootstrap`` resamples of the finite values (:func:`bootstrap_medians`); it narrows like
    1/√n for a continuous distribution.
    """
    _check_bootstrap_args(n_bootstrap, level)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return MedianCI(float("nan"), float("nan"), float("nan"), 0, level)
    low, high = percentile_interval(bootstrap_medians(v, n_bootstrap=n_bootstrap, seed=seed), level)
    return MedianCI(float(np.median(v)), low, high, int(v.size), level)


@dataclass(frozen=True)
class Spread:
    """Median and interquartile range of the finite values of a sample."""

    median: float
    q25: float
    q75: float
    mean: float
    n: int

    @property
    def iqr(self) -> float:
        """Interquartile range q75 − q25."""
        return self.q75 - self.q25


def spread(values: ArrayLike) -> Spread:
    """Median, quartiles and mean of the finite entries of ``values`` (NaNs if there are none)."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        nan = float("nan")
        return Spread(nan, nan, nan, nan, 0)
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    return Spread(float(med), float(q25), float(q75), float(v.mean()), int(v.size))


def bound_holds(
    alignment_binarized: ArrayLike,
    linearized_robustness: ArrayLike,
    bias_over_grad: ArrayLike,
    *,
    rtol: float = 1e-4,
    atol: float = 1e-5,
) -> NDArray[np.bool_]:
    """Per sample: does T4, |α_bin − ρ̃| ≤ |β_{j*}|/‖g‖, hold up to round-off?

    The tolerance is ``atol + rtol · max(α_bin, ρ̃, |β|/‖g‖)``: both sides are computed from
    float32 gradients, so an exact identity only holds to a few ulps of the largest term.
    Samples with a non-finite term count as violations.
    """
    a = np.asarray(alignment_binarized, dtype=np.float64)
    r = np.asarray(linearized_robustness, dtype=np.float64)
    b = np.abs(np.asarray(bias_over_grad, dtype=np.float64))
    scale = np.maximum(np.maximum(np.abs(a), np.abs(r)), b)
    with np.errstate(invalid="ignore"):
        ok = np.abs(a - r) <= b + atol + rtol * scale
    return ok & np.isfinite(a) & np.isfinite(r) & np.isfinite(b)

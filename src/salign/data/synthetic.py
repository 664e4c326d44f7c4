"""Synthetic data with known structure, for tests and exact oracles.

:func:`synthetic_gaussians` draws classes that are linearly separable *by construction*: class
means μ_k are orthogonal offsets from 0.5 with pairwise L2 distance ``separation``; each
sample is μ_k plus Gaussian noise whose norm is capped at r = 0.45·separation, then clipped to
[0, 1]. Clipping is a projection onto a convex set containing every μ_k, so it does not
increase the distance to the own mean, and ‖x−μ_j‖ ≥ separation − r > r ≥ ‖x−μ_k‖: the
nearest-mean rule, a linear classifier (w_k = μ_k, b_k = −‖μ_k‖²/2), is 100% correct with
margin ≥ 0.1·separation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from salign.errors import ConfigError

NOISE_CAP = 0.45  # noise norm cap, as a fraction of the separation
NOISE_SCALE = 0.3  # noise std * sqrt(D), as a fraction of the separation


def gaussian_class_means(
    num_classes: int, shape: Sequence[int], seed: int = 0, separation: float = 1.0
) -> torch.Tensor:
    """The class means (num_classes, *shape) of :func:`synthetic_gaussians` (float64)."""
    dim = math.prod(shape)
    if num_classes < 2 or num_classes > dim:
        raise ConfigError(f"num_classes must be in 2..{dim} (the input dimension), got {num_classes}")
    if not separation > 0:
        raise ConfigError(f"separation must be > 0, got {separation}")
    gen = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(dim, num_classes, generator=gen, dtype=torch.float64))
    means = 0.5 + (separation / math.sqrt(2.0)) * q.T  # pairwise distance = separation
    if means.min() < 0 or means.max() > 1:
        raise ConfigError(
            f"separation {separation} is too large for shape {tuple(shape)}: class means leave [0, 1]; "
            "use a smaller separation or a larger shape"
        )
    return means.reshape(num_classes, *shape)


def synthetic_gaussians(
    n: int,
    num_classes: int = 2,
    shape: Sequence[int] = (1, 8, 8),
    seed: int = 0,
    separation: float = 1.0,
    *,
    sample_seed: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Linearly separable Gaussian classes in [0, 1] (see the module docstring for the guarantee).

    Args:
        n: number of samples (labels cycle 0, 1, ..., num_classes-1, then are shuffled).
        num_classes: number of classes K (2 ≤ K ≤ prod(shape)).
        shape: per-sample shape, e.g. (1, 8, 8) or (16,).
        seed: seed of the class means (train and test sets must share it).
        separation: L2 distance between any two class means; the margin of the nearest-mean
            classifier is at least 0.1·separation. Must keep means in [0, 1].
        sample_seed: seed of the samples (default ``seed``); use different ones for splits.
        dtype: floating dtype of ``x``.

    Returns:
        ``x`` (n, *shape) in [0, 1] and ``y`` (n,) int64.
    """
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive int, got {n!r}")
    shape = tuple(int(s) for s in shape)
    means = gaussian_class_means(num_classes, shape, seed, separation).reshape(num_classes, -1)
    dim = means.shape[1]
    gen = torch.Generator().manual_seed(int(seed if sample_seed is None else sample_seed) + 1_000_003)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=gen)]
    noise = torch.randn(n, dim, generator=gen, dtype=torch.float64) * (
        NOISE_SCALE * separation / math.sqrt(dim)
    )
    norms = noise.norm(dim=1, keepdim=True)
    cap = NOISE_CAP * separation
    noise = noise * torch.clamp(cap / norms.clamp_min(1e-300), max=1.0)
    x = (means[y] + noise).clamp_(0.0, 1.0)
    return x.reshape(n, *shape).to(dtype), y.to(torch.int64)

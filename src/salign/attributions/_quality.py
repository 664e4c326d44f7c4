"""How much a saliency map "looks like the digit": the share of its mass on the strokes, and
its rank correlation with the image (claim C4; docs/theory.md, "Saliency quality")."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from salign._validation import check_inputs, warn_count
from salign.errors import InputError, InputTypeError
from salign.quantities._common import div_or_nan


@dataclass(frozen=True)
class SaliencyQuality:
    """Per-sample saliency-quality measures (→ :func:`saliency_quality`); every field is (N,).

    With a = |saliency| summed over channels and S = {pixels whose channel-mean intensity
    exceeds ``threshold``} (the digit's strokes):

    Attributes:
        stroke_mass: Σ_{p∈S} a_p / Σ_p a_p ∈ [0, 1], the relevance mass accuracy of Arras,
            Osman & Samek (2022) with the strokes as the ground-truth mask: 1 when all of the
            map's mass is on the strokes.
        stroke_area: |S| / d, the stroke_mass of a uniform map (its chance level).
        stroke_lift: stroke_mass / stroke_area: 1 for a map that ignores the digit, 1 /
            stroke_area when all mass is on the strokes.
        rank_correlation: Spearman's ρ between a and the image intensity over the pixels (ties
            get average ranks), threshold-free: 1 for a = the image; NaN for a constant map.
        threshold: the stroke threshold (a float, not a column).
    """

    stroke_mass: Tensor
    stroke_area: Tensor
    stroke_lift: Tensor
    rank_correlation: Tensor
    threshold: float = 0.5

    @classmethod
    def columns(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "threshold"]

    def __len__(self) -> int:
        return int(self.stroke_mass.shape[0])

    def to_dict(self) -> dict[str, list[Any]]:
        """Columns as plain Python lists (NaN stays NaN)."""
        return {name: getattr(self, name).detach().cpu().tolist() for name in self.columns()}


def average_ranks(v: Tensor) -> Tensor:
    """Ranks 0 … d − 1 of each row of ``v`` (N, d), ties sharing their average rank."""
    n, d = v.shape
    sorted_v, order = v.sort(dim=1)
    starts = torch.ones_like(sorted_v, dtype=torch.bool)
    starts[:, 1:] = sorted_v[:, 1:] != sorted_v[:, :-1]
    group = starts.long().cumsum(1) - 1  # tie group of each sorted position, per row
    position = torch.arange(d, device=v.device, dtype=v.dtype).expand(n, d)
    sums = torch.zeros_like(position).scatter_add_(1, group, position)
    counts = torch.zeros_like(position).scatter_add_(1, group, torch.ones_like(position))
    mean_rank = sums.gather(1, group) / counts.gather(1, group)
    return torch.empty_like(mean_rank).scatter_(1, order, mean_rank)


def rank_correlation(a: Tensor, b: Tensor) -> tuple[Tensor, int]:
    """Spearman's ρ between the rows of ``a`` and ``b`` (N, d); NaN where a row is constant,
    and how many."""
    ra, rb = average_ranks(a), average_ranks(b)
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    rho, n_const = div_or_nan((ra * rb).sum(1), ra.norm(dim=1) * rb.norm(dim=1))
    return rho.clamp(-1, 1), n_const  # round-off may step past ±1


def saliency_quality(saliency: Tensor, x: Tensor, *, threshold: float = 0.5) -> SaliencyQuality:
    """Does the saliency map look like the digit? Two per-sample measures (claim C4).

    ``stroke_mass`` (and its chance-normalised ``stroke_lift``) is the share of |saliency| on
    the strokes, pixels brighter than ``threshold`` (Arras et al. 2022's relevance mass
    accuracy with the strokes as the mask; magnitudes, because the sign of a binarized map says
    which class a pixel favours, not whether it matters); ``rank_correlation`` is Spearman's ρ
    between |saliency| and the image, with no threshold. Why these two: docs/theory.md,
    "Saliency quality". Pure and batched; no model is run.

    Args:
        saliency: attribution maps of x's shape (any method; NaN rows, e.g. failed boundary
            samples, give NaN).
        x: the images (N, C, H, W) or (N, D) in [0, 1]; channels are averaged into one
            intensity per pixel, and the maps' magnitudes summed over channels.
        threshold: stroke threshold on the intensity, in (0, 1) (0.5: MNIST's strokes are near
            1 and its background 0).

    Returns:
        :class:`SaliencyQuality` of (N,) tensors on x's device.
    """
    check_inputs(x)
    if not isinstance(saliency, Tensor):
        raise InputTypeError(f"saliency must be a tensor of x's shape, got {type(saliency).__name__}")
    if saliency.shape != x.shape:
        raise InputError(f"saliency must have x's shape {tuple(x.shape)}, got {tuple(saliency.shape)}")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 < threshold < 1:
        raise InputError(f"threshold must be a number in (0, 1), got {threshold!r}")
    xd = x.detach()
    a = saliency.detach().to(device=xd.device, dtype=xd.dtype).abs()
    if xd.ndim == 4:  # per pixel: channel-mean intensity, channel-summed magnitude
        xd, a = xd.mean(1), a.sum(1)
    image, mass = xd.flatten(1), a.flatten(1)
    strokes = image > threshold
    area = strokes.to(image.dtype).mean(1)
    share, n_zero = div_or_nan((mass * strokes).sum(1), mass.sum(1))
    lift, n_blank = div_or_nan(share, area)
    rho, n_const = rank_correlation(mass, image)
    rho = torch.where(mass.isnan().any(1), torch.nan, rho)  # a NaN map (a failed sample) stays NaN
    n = x.shape[0]
    warn_count(n_zero, n, "the saliency map is zero, so its stroke_mass is NaN")
    warn_count(n_blank, n, f"no pixel is brighter than the threshold {threshold}, so stroke_lift is NaN")
    warn_count(n_const - n_zero, n, "the saliency map or the image is constant, so rank_correlation is NaN")
    return SaliencyQuality(share, area, lift, rho, float(threshold))

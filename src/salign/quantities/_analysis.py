"""``analyze``: every per-sample quantity of the paper from one forward pass per chunk."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._norms import parse_norm
from salign._validation import check_labels, eval_mode, warn_count
from salign.errors import InputError, MissingDependencyError
from salign.quantities._common import (
    Strategy,
    check_candidates,
    check_model_and_inputs,
    check_origin,
    div_or_nan,
    dot,
    dual_norm,
    logit_gap,
    norm,
    projection,
)
from salign.quantities._graph import Graph, resolve_strategy
from salign.quantities._rivals import binarized_pair


@dataclass(frozen=True)
class Analysis:
    """Per-sample quantities of :func:`analyze`; every field is an (N,) tensor.

    i = pred (the predicted class i*), j = ``rival`` (the nearest rival j* with
    ``rival="nearest"``, the runner-up with ``"runner_up"``), s = ∇Ψ^i, g = ∇(Ψ^i − Ψ^j).

    Attributes:
        pred: i* = argmax Ψ(x).
        label: the given label, −1 when no labels were passed.
        correct: pred == label (False when no labels).
        logit_margin: Ψ^i − max_{k≠i} Ψ^k (distance in logit space to the runner-up, ≥ 0).
        rival_nearest: j* (D2) over the searched classes; −1 when not searched
            (``rival="runner_up"``) or when every binarized gradient is zero.
        rival_runner_up: the class of the second-highest logit.
        rival: the class j used by every binarized column below.
        alignment: α = |⟨x − o, s⟩| / ‖s‖ of the predicted-logit saliency map (D3).
        alignment_binarized: α_bin = |⟨x − o, g⟩| / ‖g‖ (D3, binarized).
        alignment_normalized: α / ‖x − o‖ = |cos∠(x − o, s)| (D4).
        linearized_robustness: ρ̃ = (Ψ^i − Ψ^j)/‖g‖ (D6; the min over rivals for "nearest").
        effective_bias: β_j = (Ψ^i − Ψ^j) − ⟨g, x⟩ (D7, binarized pair).
        effective_bias_logit: β^i = Ψ^i − ⟨s, x⟩ (D7, predicted logit).
        bias_distance: |β_j| / ‖g‖, the T4 bound on |α_bin − ρ̃| (when origin = 0).
        grad_norm: ‖s‖ = ‖∇Ψ^i‖.
        binarized_grad_norm: ‖g‖.
        margin: Ψ^i − Ψ^j.
        inner_product: ⟨x, g⟩, the homogeneous part of the margin.
        homogeneous_fraction: ⟨x, g⟩ / (Ψ^i − Ψ^j) (1 for bias-free nets, T3).
        norm: the Lp norm of the distance-like columns (a float, not a column): with p ≠ 2 every
            ‖s‖, ‖g‖ above is the dual norm ‖·‖_q, ‖x − o‖ is ‖x − o‖_p, and j* the nearest rival
            in Lp (docs/theory.md, "Other norms").
    """

    pred: Tensor
    label: Tensor
    correct: Tensor
    logit_margin: Tensor
    rival_nearest: Tensor
    rival_runner_up: Tensor
    rival: Tensor
    alignment: Tensor
    alignment_binarized: Tensor
    alignment_normalized: Tensor
    linearized_robustness: Tensor
    effective_bias: Tensor
    effective_bias_logit: Tensor
    bias_distance: Tensor
    grad_norm: Tensor
    binarized_grad_norm: Tensor
    margin: Tensor
    inner_product: Tensor
    homogeneous_fraction: Tensor
    norm: float = 2.0

    @classmethod
    def columns(cls) -> list[str]:
        """Column (per-sample field) names in table order."""
        return [f.name for f in fields(cls) if f.name != "norm"]

    def __len__(self) -> int:
        return int(self.pred.shape[0])

    def to_dict(self) -> dict[str, list[Any]]:
        """Columns as plain Python lists (ints, bools, floats; NaN stays NaN)."""
        return {name: getattr(self, name).detach().cpu().tolist() for name in self.columns()}

    def to_numpy(self) -> dict[str, Any]:
        """Columns as numpy arrays."""
        return {name: getattr(self, name).detach().cpu().numpy() for name in self.columns()}

    def to_frame(self) -> Any:
        """A pandas DataFrame with one row per sample (needs pandas: the ``report`` extra)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise MissingDependencyError(
                "Analysis.to_frame needs pandas: pip install 'saliency-alignment[report]' (or use .to_dict())"
            ) from exc
        return pd.DataFrame(self.to_numpy())


def _analyze_chunk(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None,
    *,
    rival: str,
    candidates: int | None,
    origin: Tensor | None,
    strategy: str,
    norm_p: float = 2.0,
) -> tuple[dict[str, Tensor], list[int]]:
    """The columns of one chunk (one forward pass), and its counts of zero s, zero g, x = o."""
    graph = Graph(model, x, strategy=strategy, create_graph=False)
    logits = graph.logits.detach()
    n, k = logits.shape
    if labels is not None:
        labels = check_labels(labels, n, k, name="labels").to(x.device)
    pred = logits.argmax(1)
    onehot_i = F.one_hot(pred, k).to(logits.dtype).unsqueeze(0)
    # ∇Ψ^i rides along as an extra cotangent row of the rival's pass
    pair = binarized_pair(graph, pred, rival, candidates, extra_rows=onehot_i, norm=norm_p)
    del graph
    assert pair.extra is not None
    s, g, margin = pair.extra[0], pair.gradient, pair.margin
    xd = x.detach()
    centred = xd if origin is None else xd - origin
    alpha, nz_s = projection(centred, s, norm_p)
    alpha_bin, nz_g = projection(centred, g, norm_p)
    alpha_norm, nz_x = div_or_nan(alpha, norm(centred, norm_p))
    g_norm, inner = dual_norm(g, norm_p), dot(xd, g)
    beta = margin - inner
    cols = {
        "pred": pred,
        "label": labels if labels is not None else torch.full_like(pred, -1),
        "correct": pred == labels if labels is not None else torch.zeros_like(pred, dtype=torch.bool),
        "logit_margin": logit_gap(logits, pred, pair.runner_up),
        "rival_nearest": pair.nearest,
        "rival_runner_up": pair.runner_up,
        "rival": pair.rival,
        "alignment": alpha,
        "alignment_binarized": alpha_bin,
        "alignment_normalized": alpha_norm,
        "linearized_robustness": div_or_nan(margin, g_norm)[0],
        "effective_bias": beta,
        "effective_bias_logit": logits.gather(1, pred[:, None])[:, 0] - dot(xd, s),
        "bias_distance": div_or_nan(beta.abs(), g_norm)[0],
        "grad_norm": dual_norm(s, norm_p),
        "binarized_grad_norm": g_norm,
        "margin": margin,
        "inner_product": inner,
        "homogeneous_fraction": div_or_nan(inner, margin)[0],
    }
    return cols, [nz_s, nz_g, nz_x]


def analyze(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    rival: Literal["nearest", "runner_up"] = "nearest",
    candidates: int | None = None,
    origin: Tensor | None = None,
    batch_size: int | None = None,
    strategy: Strategy | None = None,
    check_range: bool = True,
    quiet: bool | None = True,
    norm: float | str = 2,
) -> Analysis:
    """Every per-sample quantity of the paper in one pass per chunk (→ :class:`Analysis`).

    Per chunk: ONE forward pass, then input-gradient backwards only: with ``rival="nearest"``
    (default; the paper's j*, which makes the linear theory exact) one for ∇Ψ^{i*} and K − 1 for
    the binarized gradients (``candidates`` of them if given); with ``rival="runner_up"`` two in
    all (∇Ψ^{i*} and ∇(Ψ^{i*} − Ψ^{j2})), which is the fast choice for large K. The binarized
    columns (alignment_binarized, linearized_robustness, effective_bias, ...) use that rival.

    Args:
        model: classifier returning logits; evaluated in eval mode, mode restored afterwards.
        x: inputs (N, C, H, W) or (N, D) in [0, 1].
        labels: true classes (N,) for the ``label``/``correct`` columns; None = unknown.
        rival: "nearest" or "runner_up" (see above).
        candidates: with "nearest", the number of rival classes searched, the highest-logit
            ones (None = all K − 1).
        origin: reference point for the alignment columns (see :func:`alignment`).
        batch_size: samples per chunk (None = all at once); bounds memory.
        strategy: gradient strategy; see :data:`STRATEGIES`.
        check_range: reject inputs outside [0, 1].
        quiet: hide the progress bar (None = follow ``SALIGN_QUIET``).
        norm: 2 (default, the paper's), ``"inf"`` or 1: the columns become α_p, ρ̃_p and
            |β|/‖g‖_q with the nearest rival in Lp (T4_p: |α_bin − ρ̃| ≤ bias_distance holds in
            every norm; docs/theory.md).

    Returns:
        :class:`Analysis` of (N,) tensors on x's device.
    """
    from salign._progress import progress

    p = parse_norm(norm)
    check_model_and_inputs(model, x, check_range)
    if rival not in ("nearest", "runner_up"):
        raise InputError(f"analyze: rival must be 'nearest' or 'runner_up', got {rival!r}")
    cand = check_candidates(candidates)
    if batch_size is not None and (
        isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1
    ):
        raise InputError(f"batch_size must be a positive int or None, got {batch_size!r}")
    org = check_origin(origin, x)
    n = x.shape[0]
    step = n if batch_size is None else batch_size
    strat = resolve_strategy(strategy)
    if labels is not None:
        check_labels(labels, n)  # type and shape here; the class range against K per chunk
    chunks: list[dict[str, Tensor]] = []
    counts = [0, 0, 0]
    per_sample_origin = org is not None and org.ndim == x.ndim and org.shape[0] == n and n > 1
    with eval_mode(model):
        starts = range(0, n, step)
        for start in progress(starts, desc="analyze", total=len(starts), quiet=quiet):
            stop = start + step
            cols, nz = _analyze_chunk(
                model,
                x[start:stop],
                None if labels is None else labels[start:stop],
                rival=rival,
                candidates=cand,
                origin=org[start:stop] if per_sample_origin and org is not None else org,
                strategy=strat,
                norm_p=p,
            )
            chunks.append(cols)
            counts = [a + b for a, b in zip(counts, nz, strict=True)]
    merged = {name: torch.cat([c[name] for c in chunks]) for name in Analysis.columns()}
    warn_count(counts[0], n, "the saliency map ∇Ψ^i is zero, so alignment is NaN")
    warn_count(counts[1], n, "the binarized gradient is zero, so alignment_binarized and ρ̃ are NaN")
    warn_count(counts[2], n, "x equals the origin, so alignment_normalized is NaN")
    return Analysis(**merged, norm=p)

"""The scalar an attribution explains, f(x), and the classes it is built from.

Modes (``mode=``), with i the target class and j the rival:

* ``"logit"``:       f = Ψ^i (Etmann et al. 2019, D1);
* ``"binarized"``:   f = Ψ^i − Ψ^j, j chosen by ``rival=`` through
  :func:`salign.quantities._rivals.binarized_pair` (D2; the one place that picks the rival);
* ``"log_softmax"``: f = log softmax(Ψ)^i = Ψ^i − log Σ_k exp Ψ^k;
* ``"margin"``:      f = Ψ^i − max_{k≠i} Ψ^k (its zero set is the whole decision boundary of i).

The last two are invariant to a shift Ψ^k → Ψ^k + c(x) common to all logits, which changes the
logit's gradient but not the classifier (Srinivas & Fleuret, ICLR 2021); the binarized logit
is shift-invariant too. At x each f has ∇f = J^T c for a cotangent c of the logits (e_i,
e_i − e_j, e_i − softmax(Ψ), e_i − e_{runner-up}), so every gradient here is one backward.

:class:`TargetScore` wraps a classifier as a one-output model returning f for per-sample
classes passed as an extra forward argument, which captum expands along with the inputs (IG's
path points, SmoothGrad's noisy copies): any captum method then attributes f.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._validation import check_logits, run_model
from salign.errors import InputError
from salign.quantities._common import resolve_target
from salign.quantities._graph import Graph, resolve_strategy
from salign.quantities._rivals import binarized_pair, runner_up

AttributionMode = Literal["logit", "binarized", "log_softmax", "margin"]
MODES: tuple[str, ...] = ("logit", "binarized", "log_softmax", "margin")


def check_attribution_mode(mode: object) -> str:
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    return str(mode)


def score(logits: Tensor, classes: Tensor, mode: str) -> Tensor:
    """f per sample as an (N, 1) column, from the logits (N, K) and ``classes`` (N, 2) = (i, j)."""
    i = classes[:, :1]
    own = logits.gather(1, i)
    if mode == "logit":
        return own
    if mode == "binarized":
        return own - logits.gather(1, classes[:, 1:2])
    if mode == "log_softmax":
        return torch.log_softmax(logits, 1).gather(1, i)
    return own - logits.scatter(1, i, -math.inf).amax(1, keepdim=True)  # margin


def cotangent(logits: Tensor, classes: Tensor, mode: str) -> Tensor:
    """c with ∇f(x) = J_Ψ(x)^T c, (N, K): the logit combination whose input gradient is ∇f."""
    k = logits.shape[1]
    c = F.one_hot(classes[:, 0], k).to(logits.dtype)
    if mode == "log_softmax":
        return c - torch.softmax(logits, 1)
    if mode in ("binarized", "margin"):
        return c - F.one_hot(classes[:, 1], k).to(logits.dtype)
    return c


class TargetScore(nn.Module):
    """``model`` as a one-output model: forward(x, classes) = f(x), shape (N, 1).

    ``classes`` (N, 2) holds (i, j) per sample; captum expands it with the inputs when it is
    passed as ``additional_forward_args``, so the attribution's target is simply 0.
    """

    def __init__(self, model: nn.Module, mode: str) -> None:
        super().__init__()
        self.model = model
        self.mode = mode

    def forward(self, x: Tensor, classes: Tensor) -> Tensor:
        return score(self.model(x), classes, self.mode)


@dataclass(frozen=True)
class Scored:
    """f at one batch of points: the classes it uses, its value and its input gradient."""

    classes: Tensor  # (N, 2): i and j (j = the runner-up for margin, = i where f has no rival)
    value: Tensor  # f, (N,)
    gradient: Tensor  # ∇f, shape of the points


def score_at(
    model: nn.Module,
    z: Tensor,
    target: Tensor | None,
    mode: str,
    rival: object,
    candidates: int | None,
    norm: float,
) -> Scored:
    """One forward and one backward at ``z`` (K − 1 backwards for ``rival="nearest"``): the
    classes, f(z) and ∇f(z). Runs on checked arguments, inside the caller's eval mode."""
    graph = Graph(model, z, strategy=resolve_strategy(None), create_graph=False)
    logits = graph.detached_logits()
    i = resolve_target(target, logits)
    if mode == "binarized":
        pair = binarized_pair(graph, i, rival, candidates, norm=norm)
        return Scored(torch.stack([i, pair.rival], 1), pair.margin, pair.gradient)
    j = runner_up(logits, i) if mode == "margin" else i
    classes = torch.stack([i, j], 1)
    grad = graph.vjp(cotangent(logits, classes, mode).unsqueeze(0), last=True)[0]
    return Scored(classes, score(logits, classes, mode)[:, 0], grad)


def value_at(model: nn.Module, z: Tensor, classes: Tensor, mode: str) -> Tensor:
    """f(z) per sample for fixed classes, one forward without a graph."""
    with torch.no_grad():
        logits = check_logits(run_model(model, z), z.shape[0])
        return score(logits, classes, mode)[:, 0]


def predicted(model: nn.Module, z: Tensor) -> Tensor:
    """argmax Ψ(z), one forward without a graph."""
    with torch.no_grad():
        return check_logits(run_model(model, z), z.shape[0]).argmax(1)

"""How far the penalised step under autocast is from fp32: the check behind ``precision: bf16``.

The input-gradient penalty (Etmann et al. 2019, eq. (5)) is a double backward: its parameter
gradient differentiates the backward pass itself, so low-precision rounding enters twice.
:func:`autocast_agreement` computes the penalty, the cross-entropy and their parameter
gradients once in fp32 and once under :func:`salign.training.step.autocast` (same weights, same
batch, same Dropout masks) and returns their relative errors and cosines; the CE columns show
the error the same precision brings to a plain step, for scale. Measured values and the choice
of default: docs/benchmarks/imagenet.md (``benchmarks/bench_imagenet.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign.training.penalty import penalty_terms
from salign.training.step import autocast


def _flat_grad(model: nn.Module, value: Tensor) -> Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(value, params, allow_unused=True, retain_graph=True)
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).flatten().float()
            for p, g in zip(params, grads, strict=True)
        ]
    )


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def autocast_agreement(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    precision: str = "bf16",
    train_mode: bool = True,
    seed: int = 0,
) -> dict[str, float]:
    """Penalty (double backprop, p = 2, per example) and CE under ``precision`` autocast vs fp32.

    Runs on ``x``'s device with ``model`` in training (BatchNorm batch statistics, as in the
    trainer) or eval mode; the mode is left as set. Returns floats: ``penalty_fp32`` (batch mean),
    ``penalty_rel`` (relative error of the batch mean), ``penalty_rel_max_example``,
    ``grad_penalty_rel`` / ``grad_penalty_cos`` (∇θ of the mean penalty, all parameters
    concatenated), and ``ce_rel``, ``grad_ce_rel``, ``grad_ce_cos`` for the cross-entropy.
    """
    model.train(train_mode)
    runs: dict[str, dict[str, Tensor]] = {}
    for prec in ("fp32", precision):
        torch.manual_seed(seed)  # the same Dropout masks in both runs
        with autocast(x.device, prec):
            terms = penalty_terms(model, x, y)
        pen, ce = terms.penalty.float().mean(), terms.cross_entropy.float().mean()
        runs[prec] = {
            "pen": pen.detach(),
            "ce": ce.detach(),
            "pen_i": terms.penalty.detach().float(),
            "gpen": _flat_grad(model, pen),
            "gce": _flat_grad(model, ce),
        }
    f, b = runs["fp32"], runs[precision]
    return {
        "penalty_fp32": float(f["pen"]),
        "penalty_rel": _rel(b["pen"], f["pen"]),
        "penalty_rel_max_example": float(((b["pen_i"] - f["pen_i"]).abs() / f["pen_i"].abs()).max()),
        "grad_penalty_rel": _rel(b["gpen"], f["gpen"]),
        "grad_penalty_cos": float(F.cosine_similarity(b["gpen"], f["gpen"], dim=0)),
        "ce_rel": _rel(b["ce"], f["ce"]),
        "grad_ce_rel": _rel(b["gce"], f["gce"]),
        "grad_ce_cos": float(F.cosine_similarity(b["gce"], f["gce"], dim=0)),
    }

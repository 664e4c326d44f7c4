"""The linear sanity experiment (figure P8): the exact cases of the theory on the study's own inputs.

1. A bias-free linear (softmax-regression) model: the exact robustness without box constraints
   is ρ = min_{j≠i*} ⟨z_{i*} − z_j, x⟩ / ‖z_{i*} − z_j‖ (T2a), computed here in closed form from
   the weights, and α_bin must equal it (T2b).
2. The same with biases: |α_bin − ρ| ≤ |b_{i*} − b_{j*}| / ‖z_{i*} − z_{j*}‖ (T1').
3. A bias-free ReLU network: α_bin = ρ̃ exactly (T4 with β = 0).

The linear models are fitted by ridge regression to one-hot labels on the evaluation inputs (a
closed form: no training loop), so their predictions mean something; the ReLU net keeps its
seeded initialisation (the identity holds for any weights).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from salign.report import columns as C

#: Inputs with more features than this skip the sanity experiment (the ridge solve is d×d).
MAX_FEATURES = 4096


def _exact_linear_rho(weight: Tensor, bias: Tensor | None, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Closed-form (ρ, j*, |b_i − b_j*|/‖z_i − z_j*‖) of a linear classifier Ψ = Wx + b."""
    flat = x.flatten(1).double()
    w = weight.double()
    logits = flat @ w.T + (bias.double() if bias is not None else 0.0)
    pred = logits.argmax(1)
    diff = w[pred][:, None, :] - w[None, :, :]  # (N, K, D): z_i − z_j
    norms = diff.norm(dim=2)
    margin = logits.gather(1, pred[:, None]) - logits
    dist = margin / norms
    dist[torch.arange(len(pred)), pred] = float("inf")
    rho, j_star = dist.min(1)
    if bias is None:
        slack = torch.zeros_like(rho)
    else:
        b = bias.double()
        slack = (b[pred] - b[j_star]).abs() / norms[torch.arange(len(pred)), j_star]
    return rho, j_star, slack


def _ridge(
    x: Tensor, y: Tensor, num_classes: int, *, bias: bool, ridge: float = 1e-2
) -> tuple[Tensor, Tensor | None]:
    flat = x.flatten(1).double()
    if bias:
        flat = torch.cat([flat, torch.ones(len(flat), 1, dtype=flat.dtype)], 1)
    target = torch.nn.functional.one_hot(y, num_classes).double()
    gram = flat.T @ flat + ridge * len(flat) * torch.eye(flat.shape[1], dtype=flat.dtype)
    sol = torch.linalg.solve(gram, flat.T @ target).T  # (K, D[+1])
    if bias:
        return sol[:, :-1].float(), sol[:, -1].float()
    return sol.float(), None


def linear_sanity(x: Tensor, y: Tensor, *, num_classes: int, seed: int = 0) -> Any | None:
    """Run the three checks on CPU; returns a DataFrame (``variant``, ``reference_name``,
    ``reference``, ``alignment_binarized``, ``slack``) or ``None`` when the inputs are too large
    or carry no usable labels."""
    import pandas as pd

    import salign

    x = x.detach().cpu().float()
    y = y.detach().cpu().long()
    keep = y >= 0
    if x[0].numel() > MAX_FEATURES or int(keep.sum()) < 2 * num_classes:
        return None
    x, y = x[keep], y[keep]
    shape = tuple(x.shape[1:])
    frames = []
    for with_bias in (False, True):
        weight, bias = _ridge(x, y, num_classes, bias=with_bias)
        model = salign.models.build(
            "linear", input_shape=list(shape), num_classes=num_classes, bias=with_bias
        )
        with torch.no_grad():
            model.fc.weight.copy_(weight)
            if bias is not None:
                model.fc.bias.copy_(bias)
        a = salign.analyze(model, x, rival="nearest")
        rho, _, slack = _exact_linear_rho(weight, bias, x)
        frames.append(
            pd.DataFrame(
                {
                    "variant": "linear, with bias (T1')" if with_bias else "linear, no bias (T2b)",
                    "reference_name": "exact ρ (closed form)",
                    "reference": rho.numpy(),
                    C.ALPHA_BIN: a.alignment_binarized.double().numpy(),
                    "slack": slack.numpy(),
                }
            )
        )
    torch.manual_seed(seed)
    net = salign.models.build(
        "relu_mlp", input_shape=list(shape), hidden=[128, 128], num_classes=num_classes, bias=False
    )
    a = salign.analyze(net, x, rival="nearest")
    frames.append(
        pd.DataFrame(
            {
                "variant": "bias-free ReLU net (T4, β = 0)",
                "reference_name": "ρ̃",
                "reference": a.linearized_robustness.double().numpy(),
                C.ALPHA_BIN: a.alignment_binarized.double().numpy(),
                "slack": 0.0,
            }
        )
    )
    return pd.concat(frames, ignore_index=True)

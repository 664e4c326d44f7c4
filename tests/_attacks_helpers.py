"""Fixtures for the attack tests: bias-free linear models with a closed-form ρ, and liars."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def linear_problem(
    n: int = 6, d: int = 36, k: int = 5, dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[nn.Module, Tensor, Tensor]:
    """A bias-free multiclass linear model, inputs well inside the box, and the exact ρ.

    ρ_i = min_{j≠c} (z_c − z_j) / ‖w_c − w_j‖ with c the predicted class; the weights are scaled
    so that every ρ is far below the distance to the box (x ∈ [0.4, 0.6]).
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g, dtype=dtype)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k, bias=False)).to(dtype)
    model[1].weight.data.copy_(w)
    x = (0.4 + 0.2 * torch.rand(n, 1, 6, d // 6, generator=g, dtype=dtype)).contiguous()
    rho = exact_linear_rho(w, x)
    return model, x, rho


def near_tie_linear_problem(
    n: int = 6,
    d: int = 36,
    k: int = 5,
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    spread: float = 0.04,
) -> tuple[nn.Module, Tensor, Tensor]:
    """Like :func:`linear_problem`, with inputs close to a point where all logits tie, so that ρ_p
    is small in every norm and each Lp minimiser (for L1: one coordinate moved by ρ₁) stays in
    the box. Returns the model, x and the weights (for :func:`exact_linear_rho`)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(k, d, generator=g, dtype=dtype)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, k, bias=False)).to(dtype)
    model[1].weight.data.copy_(w)
    diffs = w[:1] - w[1:]  # (k − 1, d): the tie point x0 has ⟨w_0 − w_j, x0⟩ = 0
    centre = torch.full((d,), 0.5, dtype=dtype)
    x0 = centre - torch.linalg.pinv(diffs) @ (diffs @ centre)
    x = x0 + spread * (torch.rand(n, d, generator=g, dtype=dtype) - 0.5)
    assert float(x.min()) > 0.1 and float(x.max()) < 0.9, "choose another seed: the tie point leaves the box"
    return model, x.view(n, 1, 6, d // 6).contiguous(), w


def exact_linear_rho(w: Tensor, x: Tensor, p: float = 2.0) -> Tensor:
    """ρ_p of a bias-free linear model w (k, d) at x: min_{j≠c} (z_c − z_j) / ‖w_c − w_j‖_q, the Lp
    distance to the nearest hyperplane (q the dual exponent); exact where the minimiser stays in
    the box."""
    q = {1.0: float("inf"), 2.0: 2.0, float("inf"): 1.0}[float(p)]
    z = x.flatten(1) @ w.T
    c = z.argmax(1)
    gap = z.gather(1, c[:, None]) - z
    norms = (w[c][:, None, :] - w[None]).norm(p=q, dim=2)
    ratio = gap / norms
    ratio[torch.arange(len(x)), c] = float("inf")
    return ratio.min(1).values


class GradModeLiar(nn.Module):
    """Looks trivially attackable while autograd is on (as during an attack's iterations) but
    always predicts class 0 under ``torch.no_grad`` (as in a verifying forward)."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d, 2)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        if torch.is_grad_enabled():
            return self.fc(x)
        return torch.stack([torch.full((len(x),), 2.0, dtype=x.dtype), torch.zeros(len(x), dtype=x.dtype)], 1)


class OutsideBoxOnly(nn.Module):
    """Class 1 only for inputs outside [0, 1] (a naive unclamped check would be fooled)."""

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)
        outside = (x - 1).relu().sum(1) + (-x).relu().sum(1)
        ramp = (x - 0.5).sum(1)  # a gradient pointing out of the box
        return torch.stack([torch.ones_like(ramp), 1e3 * outside + 1e-3 * ramp], 1)


class Noisy(nn.Module):
    """A non-deterministic model: random logits on every call."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.randn(len(x), 3, dtype=x.dtype) + 0 * x.flatten(1).sum(1, keepdim=True)


class WrongShape(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)[:, :1]

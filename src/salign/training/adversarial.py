"""Adversarial examples for adversarial-training baselines: PGD-L2 (Madry) and DDN (Rony).

Both are the inner maximisation of a training step, so they are small, batched and cheap:
gradients are taken w.r.t. the inputs only (never accumulating parameter gradients) and the
model's mode is left to the caller (the trainer runs them in eval mode by default).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._validation import check_inputs, check_labels, check_model, check_model_on
from salign.errors import InputError, ModelOutputError


def _unit(v: Tensor) -> Tensor:
    norms = v.flatten(1).norm(dim=1).clamp_min(1e-12)
    return v / norms.view(-1, *([1] * (v.ndim - 1)))


def _project_l2(delta: Tensor, eps: Tensor | float) -> Tensor:
    norms = delta.flatten(1).norm(dim=1)
    eps_t = torch.as_tensor(eps, dtype=delta.dtype, device=delta.device).expand_as(norms)
    factor = torch.where(norms > eps_t, eps_t / norms.clamp_min(1e-12), torch.ones_like(norms))
    return delta * factor.view(-1, *([1] * (delta.ndim - 1)))


#: Options that must be finite numbers >= 0 (``steps``: an integer >= 0).
_NON_NEGATIVE = ("epsilon", "max_norm", "step_size", "gamma", "init_norm")


def _validated(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Check the arguments of an example generator, and turn torch's errors from inside the
    model (or NaN results) into errors that name the argument at fault."""

    @functools.wraps(fn)
    def wrapper(model: nn.Module, x: Tensor, y: Tensor, **options: Any) -> Tensor:
        check_model(model)
        check_inputs(x)
        check_model(model, x)
        y = check_labels(y, x.shape[0], name="y").to(x.device)
        for name in _NON_NEGATIVE:
            value = options.get(name)
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise InputError(f"{name} must be a finite number >= 0, got {value!r}")
        steps = options.get("steps")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 0):
            raise InputError(f"steps must be an integer >= 0, got {steps!r}")
        try:
            out = fn(model, x, y, **options)
        except (RuntimeError, IndexError, TypeError, ValueError, AttributeError):
            check_model_on(model, x, y, labels_name="y")
            raise
        if not bool(torch.isfinite(out).all()):
            check_model_on(model, x, y, labels_name="y")
            raise ModelOutputError(f"{fn.__name__}: the model's output became NaN or Inf during the attack")
        return out

    return wrapper


@_validated
def pgd_l2_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    epsilon: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""L2 projected gradient ascent on the cross-entropy (Madry et al., ICLR 2018).

    ``δ_{t+1} = Π_{‖δ‖₂≤ε, x+δ∈[0,1]}(δ_t + α ∇_δ CE / ‖∇_δ CE‖₂)``, started from a uniform
    point of the ε-ball when ``random_start``.

    Args:
        model: classifier returning logits.
        x: clean inputs in [0, 1].
        y: labels (N,).
        epsilon: L2 radius ε of the threat model.
        steps: ascent steps.
        step_size: α (default ``2.5·ε/steps``, Madry et al.).
        random_start: start from a random point of the ball.
        generator: RNG for the random start (default: the global torch RNG).

    Returns:
        Detached adversarial inputs ``x + δ`` in [0, 1].
    """
    alpha = step_size if step_size is not None else 2.5 * epsilon / max(steps, 1)
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start and epsilon > 0:
        direction = _unit(torch.randn(x.shape, generator=generator, device="cpu", dtype=x.dtype).to(x.device))
        d = x[0].numel()
        radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype).to(x.device) ** (1.0 / d)
        delta = direction * (epsilon * radius).view(-1, *([1] * (x.ndim - 1)))
        delta = (x + delta).clamp(0, 1) - x
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = delta.detach() + alpha * _unit(grad)
        delta = _project_l2(delta, epsilon)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()


@_validated
def ddn_examples(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    max_norm: float,
    steps: int = 100,
    gamma: float = 0.05,
    init_norm: float = 1.0,
) -> Tensor:
    r"""Decoupled Direction and Norm adversarial examples for training (Rony et al., CVPR 2019).

    Each step moves δ along the normalised CE gradient (step size cosine-annealed from 1 to
    0.01), then rescales δ to the norm ``ε_k`` which shrinks by ``(1−γ)`` while ``x+δ`` is
    adversarial and grows by ``(1+γ)`` otherwise. As in the paper's adversarial training, the
    returned perturbation is the smallest adversarial one found, clipped to ``‖δ‖₂ ≤ max_norm``
    (the last iterate, clipped, where no adversarial was found).

    Args:
        model: classifier returning logits.
        x: clean inputs in [0, 1].
        y: labels (N,).
        max_norm: ε, the largest L2 norm of a training perturbation.
        steps: DDN iterations.
        gamma: norm update factor γ.
        init_norm: initial ε_0.

    Returns:
        Detached adversarial inputs in [0, 1].
    """
    import math

    x = x.detach()
    n = x.shape[0]
    view = (-1, *([1] * (x.ndim - 1)))
    delta = torch.zeros_like(x, requires_grad=True)
    norm = torch.full((n,), float(init_norm), dtype=x.dtype, device=x.device)
    best_norm = torch.full((n,), float("inf"), dtype=x.dtype, device=x.device)
    best_delta = torch.zeros_like(x)
    for k in range(steps):
        alpha = 0.01 + (1.0 - 0.01) * (1 + math.cos(math.pi * k / max(steps, 1))) / 2
        logits = model(x + delta)
        is_adv = logits.argmax(1) != y
        cur_norm = delta.detach().flatten(1).norm(dim=1)
        better = is_adv & (cur_norm < best_norm)
        best_norm = torch.where(better, cur_norm, best_norm)
        best_delta = torch.where(better.view(view), delta.detach(), best_delta)
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        norm = torch.where(is_adv, norm * (1 - gamma), norm * (1 + gamma))
        step = delta.detach() + alpha * _unit(grad)
        step = _unit(step) * norm.view(view)
        delta = ((x + step).clamp(0, 1) - x).requires_grad_(True)
    found = torch.isfinite(best_norm)
    final = torch.where(found.view(view), best_delta, delta.detach())
    return (x + _project_l2(final, max_norm)).clamp(0, 1).detach()

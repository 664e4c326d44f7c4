"""How one training step is computed: the objective of one rank's share of a global batch.

:func:`step_objective` returns a differentiable objective scaled so that DDP's average over
ranks (and the sum over gradient-accumulation micro-batches) equals the global-batch objective
``mean_B CE + λ·mean_{penalised} penalty`` (Etmann et al. 2019, eq. (5)), or the adversarial
training loss; :func:`autocast` is the optional bf16 mixed-precision context it runs under.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from salign._validation import eval_mode
from salign.training.adversarial import ddn_examples, pgd_l2_examples
from salign.training.config import TrainConfig
from salign.training.penalty import penalty_terms


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[object]:
    """``bf16``: ``torch.autocast`` in bfloat16 on ``device`` (CUDA or CPU); ``fp32``: nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def _batchnorm_running(model: nn.Module) -> Iterator[None]:
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    flags = [m.training for m in bns]
    for m in bns:
        m.eval()
    try:
        yield
    finally:
        for m, f in zip(bns, flags, strict=True):
            m.training = f


@dataclass
class StepStats:
    """Detached local sums of one step (summed over ranks at the end of the epoch)."""

    ce_sum: float
    penalty_sum: float
    penalty_count: int
    grad_norm_sum: float
    grad_norm_count: int
    correct: int
    count: int

    def __add__(self, other: StepStats) -> StepStats:
        """Field-wise sum (micro-batches of one step)."""
        return StepStats(*(getattr(self, f) + getattr(other, f) for f in self.__dataclass_fields__))


def step_objective(
    model: nn.Module,
    inner: nn.Module,
    x: Tensor,
    y: Tensor,
    config: TrainConfig,
    *,
    global_batch: int,
    global_penalised: int,
    world_size: int,
    penalised: Tensor | None = None,
) -> tuple[Tensor, StepStats]:
    """This rank's share of the step objective (differentiable) and its statistics.

    The objective is scaled so that DDP's average over ranks equals
    ``mean_B CE + λ·mean_{penalised} penalty`` on the global batch.
    ``model`` may be the DDP wrapper (its forward runs once); ``inner`` is the bare module used
    for any further forward of the step. ``penalised`` (bool, (n,)) marks the examples that
    get the penalty (default: all); ``global_penalised`` is their number over all ranks.
    """
    reg, adv = config.regularizer, config.adversarial
    scale_ce = world_size / global_batch
    n = x.shape[0]

    if adv.method != "none":
        ctx = eval_mode(inner) if adv.attack_mode == "eval" else contextlib.nullcontext()
        with ctx:
            if adv.method == "pgd_l2":
                x_adv = pgd_l2_examples(
                    inner, x, y, epsilon=adv.epsilon, steps=adv.steps, step_size=adv.step_size,
                    random_start=adv.random_start,
                )  # fmt: skip
            else:
                x_adv = ddn_examples(inner, x, y, max_norm=adv.epsilon, steps=adv.steps, gamma=adv.gamma)
        for p in inner.parameters():  # the attack never leaves parameter gradients behind
            p.grad = None
        if adv.clean_weight > 0:
            logits = model(torch.cat([x_adv, x]))
            ce_all = F.cross_entropy(logits, torch.cat([y, y]), reduction="none")
            ce = (1 - adv.clean_weight) * ce_all[:n] + adv.clean_weight * ce_all[n:]
            correct = int((logits[n:].detach().argmax(1) == y).sum())
        else:
            logits = model(x_adv)
            ce = F.cross_entropy(logits, y, reduction="none")
            correct = int((logits.detach().argmax(1) == y).sum())
        obj = ce.sum() * scale_ce
        return obj, StepStats(float(ce.detach().sum()), 0.0, 0, 0.0, 0, correct, n)

    if reg.lambda_ == 0:
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        correct = int((logits.detach().argmax(1) == y).sum())
        return ce.sum() * scale_ce, StepStats(float(ce.detach().sum()), 0.0, 0, 0.0, 0, correct, n)

    mask = penalised if penalised is not None else torch.ones(n, dtype=torch.bool, device=x.device)
    k = int(mask.sum())
    opts = {
        "p": reg.p, "method": reg.method, "target": reg.target, "scaling": reg.scaling, "h": reg.h,
        "batch_size": global_batch,
    }  # fmt: skip
    if k == 0:  # no penalised example on this rank in this step
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        correct = int((logits.detach().argmax(1) == y).sum())
        return ce.sum() * scale_ce, StepStats(float(ce.detach().sum()), 0.0, 0, 0.0, 0, correct, n)
    x_pen, y_pen = (x, y) if k == n else (x[mask], y[mask])
    if reg.batchnorm == "running":
        logits = model(x)
        ce = F.cross_entropy(logits, y, reduction="none")
        correct = int((logits.detach().argmax(1) == y).sum())
        with _batchnorm_running(inner):
            terms = penalty_terms(inner, x_pen, y_pen, **opts)  # type: ignore[arg-type]
        ce_sum = ce.sum()
    else:
        terms = penalty_terms(model, x_pen, y_pen, step_model=inner, **opts)  # type: ignore[arg-type]
        ce_sum = terms.cross_entropy.sum()
        correct = int(terms.correct.sum())
        if k < n:  # the others need no input gradient: a plain forward (of the bare module)
            rest_logits = inner(x[~mask])
            rest_ce = F.cross_entropy(rest_logits, y[~mask], reduction="none")
            ce_sum = ce_sum + rest_ce.sum()
            correct += int((rest_logits.detach().argmax(1) == y[~mask]).sum())
    pen_sum = terms.penalty.sum()
    obj = ce_sum * scale_ce + reg.lambda_ * pen_sum * (world_size / global_penalised)
    stats = StepStats(
        float(ce_sum.detach()),
        float(pen_sum.detach()),
        k,
        float(terms.grad_norm.sum()),
        k,
        correct,
        n,
    )
    return obj, stats

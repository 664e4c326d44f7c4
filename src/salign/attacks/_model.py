"""The model side of every attack: call counting, frozen parameters, validation of the
arguments, the clean forward, chunking, and the input gradients of a few logits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from salign._validation import (
    check_differentiable,
    check_inputs,
    check_labels,
    check_logits,
    check_model,
    run_model,
)
from salign.errors import InputError, ModelOutputError


class CountingModel(nn.Module):
    """Wrap a model to count per-sample forward and backward passes.

    A forward of a batch of ``n`` inputs adds ``n`` to :attr:`forwards`; every backward pass that
    reaches the output of such a forward adds ``n`` to :attr:`backwards` (a tensor hook on the
    logits). The output shape is checked on every call.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        # plain attributes of a plain object: nn.Module.__setattr__ costs microseconds per call
        self.counts = SimpleNamespace(forwards=0, backwards=0)

    @property
    def forwards(self) -> int:
        return int(self.counts.forwards)

    @property
    def backwards(self) -> int:
        return int(self.counts.backwards)

    def forward(self, x: Tensor) -> Tensor:
        out = run_model(self.model, x)
        n = x.shape[0]
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != n or out.shape[1] < 2:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ModelOutputError(
                f"model output must be a tensor of logits of shape ({n}, K>=2), got {shape}"
            )
        check_differentiable(out, x)
        self.counts.forwards += n
        if out.requires_grad:
            out.register_hook(self._backward_hook(n))
        return out

    def _backward_hook(self, n: int) -> Callable[[Tensor], None]:
        counts = self.counts

        def hook(grad: Tensor) -> None:
            counts.backwards += n

        return hook


@contextlib.contextmanager
def frozen_parameters(model: nn.Module) -> Iterator[None]:
    """Turn off ``requires_grad`` on every parameter (attacks need input gradients only, and
    this skips the weight-gradient work); restore each flag afterwards, also on errors."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def prepare(
    model: object, x: object, labels: object, *, levels: object = None, start: object = None
) -> tuple[nn.Module, Tensor, Tensor | None, Tensor | None]:
    """Validate model, inputs ([0, 1], finite), labels (None allowed), ``levels`` and an optional
    warm start of the shape of ``x``; return them (inputs and start clamped to [0, 1])."""
    if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
        raise InputError(f"levels must be an integer >= 2 (e.g. 256) or None, got {levels!r}")
    model = check_model(model)
    x = check_inputs(x)
    model = check_model(model, x)
    if labels is not None:
        labels = check_labels(labels, x.shape[0]).to(x.device)
    if start is not None:
        start = check_inputs(start, name="start")
        if start.shape != x.shape:
            raise InputError(f"start must have the shape of x {tuple(x.shape)}, got {tuple(start.shape)}")
        start = start.to(device=x.device, dtype=x.dtype).clamp(0, 1)
    return model, x.clamp(0, 1), labels, start  # type: ignore[return-value]


@dataclass(frozen=True)
class Chunk:
    """A validated chunk of inputs with the classes to move away from and the clean prediction;
    samples already misclassified (``~attacked``) sit at distance 0."""

    x: Tensor
    labels: Tensor
    clean_class: Tensor
    num_classes: int = 0

    @property
    def attacked(self) -> Tensor:
        return self.clean_class == self.labels


def clean_forward(model: CountingModel, x: Tensor, labels: Tensor | None) -> Chunk:
    """Forward the clean batch (logits must be finite) and fix the labels (default: the
    predicted class)."""
    with torch.no_grad():
        logits = check_logits(model(x), x.shape[0])
    pred = logits.argmax(1)
    if labels is None:
        labels = pred
    else:
        check_labels(labels, x.shape[0], logits.shape[1])
    return Chunk(x, labels, pred, logits.shape[1])


def chunks(n: int, batch_size: int | None) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` samples (one slice for None)."""
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise InputError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    size = n if batch_size is None else batch_size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def label_and_rivals(logits: Tensor, labels: Tensor, rivals: int) -> Tensor:
    """(n, 1 + r) class indices: the label first, then the ``r = min(rivals, K − 1)`` highest
    other logits (the rival classes)."""
    r = min(rivals, logits.shape[1] - 1)
    others = logits.scatter(1, labels[:, None], float("-inf")).topk(r, dim=1).indices
    return torch.cat([labels[:, None], others], 1)


def margin_gradients(leaf: Tensor, logits: Tensor, classes: Tensor) -> tuple[Tensor, Tensor]:
    """The logit differences ``f_j = Ψ_{c_j} − Ψ_{c_0}`` (n, k − 1) for the columns j = 1 … k − 1
    of ``classes`` (n, k) (the label first, then the rivals) and their input gradients ``w_j``
    (n, k − 1, ...): DeepFool's and FAB's linearisations.

    For the attacks' inner loops: it differentiates through the graph ``leaf → logits`` of a
    forward the attack already made and counted, one backward per rival (differentiating each
    difference directly takes k − 1 backward passes where the gradients of the k logits would
    take k), and skips input validation (the public, validated version is
    :func:`salign.quantities.class_gradients`).
    """
    with torch.no_grad():
        picked = logits.gather(1, classes)
        differences = picked[:, 1:] - picked[:, :1]
        minus_label = torch.zeros_like(logits).scatter_(1, classes[:, :1], -1.0)
        ones = torch.ones_like(picked[:, :1])
    grads = []
    for j in range(differences.shape[1]):
        # the backward starts at the logits with ∂f_j/∂Ψ = e_{c_j} − e_{c_0}: no graph nodes for
        # the gather and the difference
        seed = minus_label.scatter_add(1, classes[:, j + 1 : j + 2], ones)
        last = j + 1 == differences.shape[1]
        (g,) = torch.autograd.grad(logits, leaf, grad_outputs=seed, retain_graph=not last)
        grads.append(g)
    return differences, torch.stack(grads, 1)

"""Small models and misbehaving wrappers shared by the hardening tests (bad inputs, properties, CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

import salign

#: Input shape (C, H, W) and number of classes of the tiny test models.
SHAPE = (1, 4, 4)
K = 3


def tiny_mlp(*, seed: int = 0, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A registered ReLU MLP on (1, 4, 4) inputs with 3 classes, in eval mode."""
    torch.manual_seed(seed)
    return (
        salign.models.build("relu_mlp", input_shape=list(SHAPE), hidden=[8], num_classes=K).to(dtype).eval()
    )


def batch(n: int = 5, *, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """``n`` inputs in [0, 1] of shape (n, 1, 4, 4) and labels in [0, 3)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *SHAPE, generator=gen, dtype=dtype)
    y = torch.arange(n) % K
    return x, y


class Wrapped(nn.Module):
    """Base class: wraps a model and changes what its forward returns."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> object:  # pragma: no cover - overridden
        return self.inner(x)


class Probabilities(Wrapped):
    """Returns softmax probabilities instead of logits."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).softmax(1)


class ThreeDimensional(Wrapped):
    """Returns (N, K, 1) instead of (N, K)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x)[:, :, None]


class TupleOutput(Wrapped):
    """Returns a tuple (logits,) like some detection/HF models."""

    def forward(self, x: Tensor) -> tuple[Tensor]:
        return (self.inner(x),)


class NaNOutput(Wrapped):
    """Returns NaN logits."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x) * float("nan")


class InfOutput(Wrapped):
    """Returns +inf in one logit of the first sample."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.inner(x).clone()
        out[0, 0] = float("inf")
        return out


class Detached(Wrapped):
    """Non-differentiable: the logits are cut from the graph (as after .detach() or argmax)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(x).detach()


class ConstantInInput(Wrapped):
    """Differentiable but with zero input gradients everywhere (saturated / masked gradients)."""

    def forward(self, x: Tensor) -> Tensor:
        return self.inner(torch.full_like(x, 0.5) + 0 * x)


def checkpoint_for_other_architecture(path: Path) -> Path:
    """A safetensors file whose metadata says ``linear`` but whose weights are an MLP's."""
    mlp = tiny_mlp()
    state = {k: v.contiguous() for k, v in mlp.state_dict().items()}
    spec = {"name": "linear", "kwargs": {"input_shape": list(SHAPE), "num_classes": K}}
    save_file(state, str(path), metadata={"salign_model": json.dumps(spec)})
    return path


class _Payload:
    """Unpickling this object calls ``open(marker, "w")``: a visible side effect on disk."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def malicious_pickle(path: Path, marker: Path) -> Path:
    """A torch pickle checkpoint that would create ``marker`` if it were ever unpickled."""
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    return path

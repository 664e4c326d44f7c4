"""A piecewise-linear network as a list of affine maps, read off an ``nn.Sequential``, and the
interval bounds of its neurons over a box."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from salign.errors import InputError
from salign.models.normalize import Normalize

#: Layers that are the identity in eval mode.
_IDENTITY = (nn.Identity, nn.Dropout)

#: Layers that are affine maps in eval mode, read by probing them (:func:`_probed_affine`).
_PROBED = (nn.Conv1d, nn.Conv2d, nn.AvgPool1d, nn.AvgPool2d, nn.BatchNorm1d, nn.BatchNorm2d)

#: Largest dense matrix (entries) a probed layer may become: a conv of a 28×28 input with 32
#: channels is 784 × 25088, already far beyond what the MIP solvers prove.
_MAX_PROBED_ENTRIES = 50_000_000


def _probed_affine(
    layer: nn.Module, shape: tuple[int, ...], name: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The affine map ``layer(h) = W h + b`` of a layer of :data:`_PROBED` on flattened inputs of
    per-sample shape ``shape``, in float64, read from its outputs on 0 and on the unit vectors:
    (W, b, output shape)."""
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and layer.running_mean is None:
        raise InputError(
            f"exact_robustness: {type(layer).__name__} at {name!r} has no running statistics "
            "(track_running_stats=False): it normalises by each batch's, not an affine map"
        )
    d = int(np.prod(shape))
    probe = copy.deepcopy(layer).to(device="cpu", dtype=torch.float64).eval()
    with torch.no_grad():
        try:
            zero = probe(torch.zeros((1, *shape), dtype=torch.float64))
        except (RuntimeError, ValueError) as err:
            raise InputError(
                f"exact_robustness: {type(layer).__name__} at {name!r} cannot take a tensor of "
                f"per-sample shape {shape}: {err}"
            ) from err
        out_shape = tuple(zero.shape[1:])
        if d * int(np.prod(out_shape)) > _MAX_PROBED_ENTRIES:
            raise InputError(
                f"exact_robustness: {type(layer).__name__} at {name!r} maps {d} to "
                f"{int(np.prod(out_shape))} values: too large a network for the exact solver"
            )
        b = zero.flatten()
        w = (probe(torch.eye(d, dtype=torch.float64).view(d, *shape)).flatten(1) - b).T
    return w.numpy(), b.numpy(), out_shape


@dataclass(frozen=True)
class AffineNet:
    """``Ψ(x) = A_L σ(A_{L-1} σ(… σ(A_0 x + b_0) …) + b_{L-1}) + b_L`` with σ the ReLU; ``x``
    flattened. ``weights[k]`` is (out_k, in_k) in float64."""

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]

    @property
    def in_dim(self) -> int:
        return int(self.weights[0].shape[1])

    @property
    def num_classes(self) -> int:
        return int(self.weights[-1].shape[0])

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Logits of a batch ``x`` (N, d) in float64."""
        h = x
        for k, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            h = h @ w.T + b
            if k < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The layers of a (possibly nested) ``nn.Sequential`` in call order, with their names; a
    module with an ``as_sequential()`` method (salign's ``linear`` and ``relu_mlp`` models) is read
    through the ``nn.Sequential`` it returns."""
    as_sequential = getattr(module, "as_sequential", None)
    if not isinstance(module, nn.Sequential) and callable(as_sequential):
        seq = as_sequential()
        if not isinstance(seq, nn.Sequential):
            raise InputError(
                f"exact_robustness: {type(module).__name__}.as_sequential() at {prefix or 'model'!r} "
                f"must return an nn.Sequential, got {type(seq).__name__}"
            )
        return _leaves(seq, prefix)
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise InputError(
                f"exact_robustness: {type(module).__name__} at {prefix or 'model'!r} overrides "
                "nn.Sequential.forward; only plain (nested) nn.Sequential models are supported"
            )
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or "model", module)]


def extract(model: nn.Module, sample_shape: tuple[int, ...]) -> AffineNet:
    """Read ``model`` (nested ``nn.Sequential`` of Flatten, Linear, ReLU, Normalize, Identity,
    Dropout, and the layers of :data:`_PROBED`: convolutions, average pooling, batch norm in eval
    mode) as affine maps with ReLUs between them, for one input of shape ``sample_shape``.

    Consecutive affine layers are composed into one map; a convolution becomes its dense matrix
    (fine for the small inputs the MIP can prove). Anything else is an :class:`InputError`
    naming the layer.
    """
    shape = tuple(sample_shape)
    d = int(np.prod(shape))
    weights: list[np.ndarray] = []
    biases: list[np.ndarray] = []
    a = np.eye(d)  # the pending affine map from the flat input to the current (flat) tensor
    c = np.zeros(d)
    pending_is_identity = True
    for name, layer in _leaves(model, ""):
        if isinstance(layer, _IDENTITY):
            continue
        if isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise InputError(
                    f"exact_robustness: nn.Flatten at {name!r} must flatten every sample dimension "
                    f"(start_dim=1, end_dim=-1), got start_dim={layer.start_dim}, end_dim={layer.end_dim}"
                )
            shape = (int(np.prod(shape)),)
        elif isinstance(layer, Normalize):
            mean = layer.mean.detach().double().cpu()
            std = layer.std.detach().double().cpu()
            if len(shape) != 3 or mean.numel() not in (1, shape[0]):
                raise InputError(
                    f"exact_robustness: Normalize at {name!r} with {mean.numel()} channels gets a "
                    f"tensor of per-sample shape {shape}; it must be (C, H, W) with matching C"
                )
            scale = (torch.ones(shape, dtype=torch.float64) / std.view(-1, 1, 1)).flatten().numpy()
            shift = -mean.view(-1, 1, 1) / std.view(-1, 1, 1) * torch.ones(shape, dtype=torch.float64)
            a, c = scale[:, None] * a, scale * c + shift.flatten().numpy()
            pending_is_identity = False
        elif isinstance(layer, nn.Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise InputError(
                    f"exact_robustness: nn.Linear at {name!r} expects {layer.in_features} features but "
                    f"gets a tensor of per-sample shape {shape} (add nn.Flatten() before it)"
                )
            w = layer.weight.detach().double().cpu().numpy()
            b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.detach().double().cpu().numpy()
            a, c = w @ a, w @ c + b
            shape = (layer.out_features,)
            pending_is_identity = False
        elif isinstance(layer, _PROBED):
            w, b, shape = _probed_affine(layer, shape, name)
            a, c = w @ a, w @ c + b
            pending_is_identity = False
        elif isinstance(layer, nn.ReLU):
            if pending_is_identity and weights:
                continue  # ReLU after ReLU
            weights.append(a)
            biases.append(c)
            d_cur = a.shape[0]
            a, c = np.eye(d_cur), np.zeros(d_cur)
            pending_is_identity = True
        else:
            raise InputError(
                f"exact_robustness: unsupported layer {type(layer).__name__} at {name!r}; the exact "
                "solver handles nested nn.Sequential of nn.Flatten, nn.Linear, nn.ReLU, salign's "
                "Normalize, nn.Conv1d/2d, nn.AvgPool1d/2d, nn.BatchNorm1d/2d (eval), nn.Identity and "
                "nn.Dropout (a custom module whose forward chains such layers can say so with an "
                "as_sequential() method returning that nn.Sequential)"
            )
    if len(shape) != 1:
        raise InputError(f"exact_robustness: the model's output has per-sample shape {shape}, expected (K,)")
    weights.append(a)
    biases.append(c)
    return AffineNet(tuple(weights), tuple(biases))


def interval_bounds(
    net: AffineNet,
    lo: np.ndarray,
    hi: np.ndarray,
    x: np.ndarray | None = None,
    radius: float = math.inf,
    p: float = math.inf,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Interval-arithmetic bounds ``(l, u)`` of every hidden layer's pre-activations for inputs in
    the box ``[lo, hi]``, and last the bounds of the hidden output fed to the last affine map
    (post-ReLU).

    With ``x`` and a finite ``radius``, the first layer's bounds are also intersected with the
    Lp ball ‖x' − x‖_p ≤ radius: ``|⟨w, x' − x⟩| ≤ radius·‖w‖_q`` (Hölder), much tighter than
    the box for L2 and L1, where the box is the L∞ ball of the same radius.
    """
    out = []
    h_lo, h_hi = lo, hi
    for k, (w, b) in enumerate(zip(net.weights[:-1], net.biases[:-1], strict=True)):
        wp, wn = np.maximum(w, 0.0), np.minimum(w, 0.0)
        l = wp @ h_lo + wn @ h_hi + b
        u = wp @ h_hi + wn @ h_lo + b
        if k == 0 and x is not None and math.isfinite(radius):
            q = 1.0 if math.isinf(p) else (math.inf if p == 1 else p / (p - 1))
            centre = w @ x + b
            spread = radius * np.linalg.norm(w, ord=q, axis=1)
            l, u = np.maximum(l, centre - spread), np.minimum(u, centre + spread)
        out.append((l, u))
        h_lo, h_hi = np.maximum(l, 0.0), np.maximum(u, 0.0)
    out.append((h_lo, h_hi))
    return out

"""Argument checks and the model-mode context shared by every public function.

One place for "is this a valid batch of images", so every entry point rejects bad input with
the same clear message that names the argument.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from salign.errors import ConfigError, InputError, InputTypeError, ModelOutputError

#: Slack allowed outside [0, 1] for round-off from upstream preprocessing.
RANGE_TOLERANCE = 1e-5


def check_inputs(x: object, *, name: str = "x", check_range: bool = True) -> Tensor:
    """Validate a batch of inputs: a floating tensor of shape (N, C, H, W) or (N, D).

    Checks, in order: type, dtype (float16/bfloat16/float32/float64), rank, non-empty batch,
    a likely channels-last layout, finiteness, and (unless ``check_range=False``) the [0, 1]
    range. Returns ``x`` unchanged.
    """
    if not isinstance(x, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputTypeError(
            f"{name} must be a floating tensor with values in [0, 1], got dtype {x.dtype}; "
            f"convert uint8 images with {name}.float() / 255"
        )
    if x.ndim not in (2, 4):
        raise InputError(
            f"{name} must have shape (N, C, H, W) or (N, D), got shape {tuple(x.shape)}"
            + (" (add a batch dimension with x.unsqueeze(0))" if x.ndim == 3 else "")
        )
    if x.shape[0] == 0:
        raise InputError(f"{name} is an empty batch (shape {tuple(x.shape)})")
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3) and x.shape[1] > 4:
        raise InputError(
            f"{name} looks channels-last (shape {tuple(x.shape)}); salign expects NCHW: "
            f"use {name}.permute(0, 3, 1, 2)"
        )
    # One fused min/max pass covers finiteness and range: torch.aminmax propagates NaN and ±inf,
    # so finite extremes prove the whole batch finite (one device sync for both numbers).
    lo, hi = (float(v) for v in torch.stack(torch.aminmax(x.detach())).tolist())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise InputError(f"{name} contains NaN or Inf values (in {bad} of {x.shape[0]} samples)")
    if check_range and (lo < -RANGE_TOLERANCE or hi > 1 + RANGE_TOLERANCE):
        raise InputError(
            f"{name} must be in [0, 1] (normalisation belongs inside the model), got values "
            f"in [{lo:.4g}, {hi:.4g}]; pass check_range=False to skip this check"
        )
    return x


def check_labels(labels: object, n: int, num_classes: int | None = None, *, name: str = "labels") -> Tensor:
    """Validate class indices: an integer tensor of shape (n,) with values in [0, num_classes)."""
    if not isinstance(labels, Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of class indices, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise InputTypeError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},) to match the batch, got {tuple(labels.shape)}")
    if num_classes is not None and labels.numel() > 0:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise InputError(
                f"{name} must be in [0, {num_classes}) for a model with {num_classes} classes, "
                f"got values in [{lo}, {hi}]"
            )
    return labels.long()


def check_model(model: object, x: Tensor | None = None, *, name: str = "model") -> nn.Module:
    """Validate that ``model`` is an ``nn.Module`` whose parameters sit on ``x``'s device."""
    if not isinstance(model, nn.Module):
        if callable(model):
            raise InputTypeError(
                f"{name} must be a torch.nn.Module, got a {type(model).__name__}; wrap functions in an nn.Module"
            )
        raise InputTypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    if x is not None:
        param = next(iter(model.parameters()), None)
        if param is not None and param.device != x.device:
            raise InputError(
                f"{name} is on {param.device} but the inputs are on {x.device}; move one of them "
                f"(e.g. x.to({str(param.device)!r}))"
            )
    return model


def run_model(model: nn.Module, x: Tensor, *, name: str = "model", input_name: str = "x") -> object:
    """``model(x)``, with torch's errors on inputs the model cannot take made clear.

    A ``RuntimeError`` raised inside the forward pass (a shape or dtype that does not fit the
    first layer, e.g. ``mat1 and mat2 shapes cannot be multiplied``) becomes an
    :class:`InputError` naming the input's shape and dtype, or an :class:`InputTypeError` that
    names both dtypes when the input's dtype differs from the parameters' and torch's message is
    about a dtype; the original stays chained. Out-of-memory errors pass through unchanged.
    """
    try:
        return model(x)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as exc:
        param = next((p for p in model.parameters() if p.is_floating_point()), None)
        if param is not None and param.dtype != x.dtype and "dtype" in str(exc).lower():
            raise InputTypeError(
                f"{input_name} has dtype {x.dtype} but the {name}'s parameters are {param.dtype}; "
                f"convert one of them (e.g. {input_name}.to({param.dtype}) or {name}.to({x.dtype}))"
            ) from exc
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"{name} failed on {input_name} of shape {tuple(x.shape)} and dtype {x.dtype} "
            f"({first}); check that {input_name} has the shape, dtype and device the model expects"
        ) from exc


def check_differentiable(out: Tensor, x: Tensor, *, name: str = "model output") -> Tensor:
    """Raise :class:`ModelOutputError` if ``out`` does not depend differentiably on ``x``.

    Only meaningful when ``x`` requires grad and grad mode is on (otherwise ``out`` is returned
    unchanged): a forward that detaches, runs under ``torch.no_grad()`` or ends in ``argmax``
    leaves nothing for input gradients to flow through.
    """
    if torch.is_grad_enabled() and x.requires_grad and not out.requires_grad:
        raise ModelOutputError(
            f"{name} is not differentiable with respect to the input (does the forward detach, use "
            "torch.no_grad() or argmax?); input gradients are needed here"
        )
    return out


def check_model_on(
    model: nn.Module,
    x: Tensor,
    labels: Tensor | None = None,
    *,
    differentiable: bool = True,
    labels_name: str = "labels",
) -> Tensor:
    """One validating forward pass: ``model`` must take ``x`` and return finite (N, K) logits
    (differentiable in ``x`` if ``differentiable``), and ``labels`` must be classes below K.

    Runs in eval mode (no BatchNorm statistics change, mode restored) and touches no parameter
    gradient. Raises the :mod:`salign.errors` exception that names the culprit; returns the
    detached logits. Public functions call it up front where one extra forward is cheap, or
    only after a failure (to turn torch's error into a clear one) where it is not.
    """
    x_req = x.detach().requires_grad_(differentiable)
    with eval_mode(model), torch.enable_grad():
        out = check_logits(run_model(model, x_req), x.shape[0])
        if differentiable:
            check_differentiable(out, x_req)
    if labels is not None:
        check_labels(labels, x.shape[0], out.shape[1], name=labels_name)
    return out.detach()


def resolve_device(device: object, *, name: str = "device") -> torch.device:
    """Parse a device option (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``) and check
    that it can run computations here; errors name ``name`` (e.g. ``"--device"``)."""
    try:
        dev = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"{name} {device!r} is not a device; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if dev.type == "meta":
        raise ConfigError(f"{name} 'meta' holds no data; use a real device such as 'cpu' or 'cuda'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{name} {device!r}: CUDA is not available on this machine; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{name} {device!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ConfigError(f"{name} {device!r}: MPS is not available on this machine; use 'cpu'")
    return dev


_warned_probabilities: set[int] = set()


def check_logits(out: object, n: int, *, name: str = "model output") -> Tensor:
    """Validate a forward pass result: a finite (n, K) tensor with K >= 2.

    Warns (once per model output shape) when the rows look like probabilities rather than
    logits: every quantity here is defined on logits.
    """
    if not isinstance(out, Tensor):
        raise ModelOutputError(
            f"{name} must be a tensor of logits, got {type(out).__name__}; "
            "wrap models that return tuples or dicts"
        )
    if out.ndim != 2 or out.shape[0] != n:
        raise ModelOutputError(f"{name} must have shape (N, K) = ({n}, K), got {tuple(out.shape)}")
    if out.shape[1] < 2:
        raise ModelOutputError(f"{name} must have at least 2 classes, got shape {tuple(out.shape)}")
    if not bool(torch.isfinite(out).all()):
        bad = int((~torch.isfinite(out)).any(1).sum())
        raise ModelOutputError(f"{name} contains NaN or Inf logits (in {bad} of {n} samples)")
    with torch.no_grad():
        if bool((out >= 0).all()) and bool((out <= 1).all()):
            sums = out.sum(1)
            if bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-3)):
                key = out.shape[1]
                if key not in _warned_probabilities:
                    _warned_probabilities.add(key)
                    warnings.warn(
                        f"{name} rows sum to 1 and lie in [0, 1]: the model seems to return "
                        "probabilities; salign expects logits (remove the final softmax)",
                        stacklevel=3,
                    )
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode; restore each one's flag afterwards.

    BatchNorm then uses running statistics and Dropout is off, as every quantity of the paper
    assumes. The caller's mode (including mixed modes across submodules) comes back unchanged,
    also when the block raises.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, flag in flags:
            module.training = flag


def warn_count(n_bad: int, n: int, what: str) -> None:
    """Warn that ``n_bad`` of ``n`` samples have a problem ``what``; silent when ``n_bad`` is 0."""
    if n_bad:
        warnings.warn(f"{n_bad} of {n} samples: {what}", RuntimeWarning, stacklevel=3)

"""Training-state checkpoints in safetensors: model, optimizer, schedule, RNG states, position.

One file, ``state.safetensors``, replaced atomically (temp file + fsync + rename), so the
latest checkpoint is always complete. Tensors are stored as tensors (``model.*``,
``optim.state.<param>.<name>``, ``rng.*``); everything else (optimizer hyper-parameters,
scalar optimizer state, the NumPy/Python RNG scalars, epoch, step, metrics history) is JSON in
the safetensors metadata. Loading parses JSON and tensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from salign._io import atomic_path
from salign.errors import CheckpointError

FORMAT = "salign-train-state/1"


@dataclass
class TrainState:
    """Where a run stands: the next (epoch, step) to run and everything needed to continue.

    ``epoch``/``step`` name the next batch to run (``step == 0``: start of ``epoch``).
    """

    epoch: int = 0
    step: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    partial: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def capture_rng(
    rank_states: list[torch.Tensor] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Current RNG states as (tensors, JSON metadata): torch CPU (per rank), CUDA, NumPy, Python."""
    tensors: dict[str, torch.Tensor] = {}
    states = rank_states if rank_states is not None else [torch.get_rng_state()]
    for rank, st in enumerate(states):
        tensors[f"rng.torch_cpu.rank{rank}"] = st.clone()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st.clone()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    version, internal, gauss_next = random.getstate()
    tensors["rng.python.internal"] = torch.tensor(list(internal), dtype=torch.int64)
    meta = {
        "numpy": {"name": name, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "gauss_next": gauss_next},
        "torch_cpu_ranks": len(states),
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any], *, rank: int = 0) -> bool:
    """Restore RNG states saved by :func:`capture_rng`; False if this rank's torch state is absent."""
    key = f"rng.torch_cpu.rank{rank}"
    ok = key in tensors
    if ok:
        torch.set_rng_state(tensors[key].to(torch.uint8))
    cuda = [tensors[k] for k in sorted(t for t in tensors if t.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda[: torch.cuda.device_count()]])
    if "rng.numpy.keys" in tensors:
        m = meta["numpy"]
        np.random.set_state(
            (
                m["name"],
                tensors["rng.numpy.keys"].numpy().astype(np.uint32),
                m["pos"],
                m["has_gauss"],
                m["cached"],
            )
        )
    if "rng.python.internal" in tensors:
        m = meta["python"]
        random.setstate(
            (m["version"], tuple(int(v) for v in tensors["rng.python.internal"].tolist()), m["gauss_next"])
        )
    return ok


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.state.{pid}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim.state."):
            pid, name = key[len("optim.state.") :].split(".", 1)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    # JSON turns tuples (Adam's betas) into lists; torch optimizers keep them as tuples.
    groups = [
        {k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
        for g in meta["param_groups"]
    ]
    return {"state": state, "param_groups": groups}


def save_state(
    path: str | os.PathLike[str],
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: dict[str, Any],
    state: TrainState,
    config: dict[str, Any],
    rank_rng_states: list[torch.Tensor] | None = None,
) -> Path:
    """Write the full training state to ``path`` atomically (a reader never sees a partial file)."""
    inner = getattr(model, "module", model)
    tensors = {f"model.{k}": v.detach().to("cpu").contiguous() for k, v in inner.state_dict().items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    rng_tensors, rng_meta = capture_rng(rank_rng_states)
    tensors.update(rng_tensors)
    meta = {
        "format": FORMAT,
        "optimizer": json.dumps(opt_meta),
        "schedule": json.dumps(schedule),
        "rng": json.dumps(rng_meta),
        "position": json.dumps({"epoch": state.epoch, "step": state.step, "global_step": state.global_step}),
        "history": json.dumps(state.history),
        "partial": json.dumps(state.partial),
        "extra": json.dumps(state.extra),
        "config": json.dumps(config, sort_keys=True),
    }
    target = Path(path)
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return target


@dataclass
class LoadedState:
    """A training state read back: apply it with :meth:`apply`."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    state: TrainState
    config: dict[str, Any]

    def apply(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, rank: int = 0) -> bool:
        """Load model and optimizer states and restore the RNGs; False if this rank's RNG was absent."""
        inner = getattr(model, "module", model)
        model_state = {k[len("model.") :]: v for k, v in self.tensors.items() if k.startswith("model.")}
        try:
            inner.load_state_dict(model_state, strict=True)
            optimizer.load_state_dict(_unflatten_optimizer(self.tensors, self.meta["optimizer"]))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"training state does not fit this model/optimizer: {exc}") from exc
        return restore_rng(self.tensors, self.meta["rng"], rank=rank)


def load_state(path: str | os.PathLike[str]) -> LoadedState:
    """Read a training state written by :func:`save_state` (raises CheckpointError if unusable)."""
    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as fh:
            raw = dict(fh.metadata() or {})
        tensors = load_file(str(p))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{p} is not a readable training-state checkpoint: {exc}") from exc
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a salign training state (format {raw.get('format')!r})")
    try:
        meta = {k: json.loads(v) for k, v in raw.items() if k != "format"}
        pos = meta["position"]
        state = TrainState(
            epoch=int(pos["epoch"]),
            step=int(pos["step"]),
            global_step=int(pos["global_step"]),
            history=list(meta["history"]),
            partial=dict(meta["partial"]),
            extra=dict(meta["extra"]),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{p}: corrupt training-state metadata: {exc}") from exc
    return LoadedState(tensors=tensors, meta=meta, state=state, config=meta["config"])

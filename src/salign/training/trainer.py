"""The training loop: input-gradient regularisation or adversarial training, resumable, DDP-ready.

``train(config, run_dir=...)`` writes into ``run_dir``:

- ``checkpoint.safetensors``: the final model (:func:`salign.models.save`; load it with
  :func:`salign.models.load`), with λ, epochs and accuracy in its metadata;
- ``state.safetensors``: the training state (model, optimizer, schedule, RNG states, epoch and
  batch position, metrics history), replaced atomically every epoch and optionally every
  ``checkpoint_every_steps`` steps; a rerun with ``resume=True`` continues from it;
- ``train_log.csv``: one row per epoch (rewritten atomically); ``config.yaml``; ``tensorboard/``.

Determinism: batches are a permutation drawn from a ``torch.Generator`` seeded by
``(seed, epoch)`` (no DataLoader workers), and the global RNG (Dropout, PGD starts) is saved in
the state, so on CPU a killed-and-resumed run ends with bit-identical weights.

Distributed: run the same entry point under ``torchrun --nproc_per_node=N``. Each rank takes a
disjoint shard of every global batch (as ``DistributedSampler`` would), the model is wrapped in
``DistributedDataParallel`` (gloo on CPU, nccl on GPU), and each rank's loss is scaled so that
DDP's gradient average equals the gradient of the global-batch objective. The penalty's
double-backward gradients reach the parameters in the single final ``backward()``, where
DDP's hooks all-reduce them (tests/test_training_ddp.py checks 2 ranks against 1 process).
The double-backward step is never compiled (torch.compile does not support it).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from salign._io import write_text_atomic
from salign._progress import progress_bar
from salign._validation import check_inputs, check_labels, check_model_on, eval_mode
from salign.errors import CheckpointError, ConfigError, DataError, InputTypeError
from salign.training import distributed as dist_util
from salign.training.adversarial import ddn_examples, pgd_l2_examples
from salign.training.config import TrainConfig, config_from_dict, load_config, lr_at
from salign.training.penalty import penalty_terms
from salign.training.state import TrainState, load_state, save_state

STATE_FILE = "state.safetensors"
MODEL_FILE = "checkpoint.safetensors"
LOG_FILE = "train_log.csv"
LOG_COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "cross_entropy",
    "penalty",
    "train_grad_norm",
    "train_accuracy",
    "val_accuracy",
    "val_cross_entropy",
    "val_grad_norm",
    "seconds",
)

TrainData = tuple[Tensor, Tensor, Tensor, Tensor]


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA if available else CPU; ``"cuda"`` without a GPU is a ConfigError."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def load_data(config: TrainConfig) -> TrainData:
    """Train and validation tensors for ``config.data`` via :func:`salign.data.load`."""
    try:
        from salign.data import load as data_load  # type: ignore[attr-defined]
    except ImportError as exc:  # the data package is optional at this layer
        raise DataError(f"salign.data.load is not available ({exc}); pass data=... to train()") from exc
    d = config.data
    x_tr, y_tr = data_load(d.name, d.train_split, data_dir=d.data_dir, **d.options)
    if d.holdout is not None:
        if d.holdout >= x_tr.shape[0]:
            raise ConfigError(
                f"data.holdout {d.holdout} leaves no training images (split has {x_tr.shape[0]})"
            )
        x_va, y_va = x_tr[-d.holdout :], y_tr[-d.holdout :]
        x_tr, y_tr = x_tr[: -d.holdout], y_tr[: -d.holdout]
    else:
        x_va, y_va = data_load(d.name, d.val_split, data_dir=d.data_dir, **d.options)
    if d.train_subset is not None:
        x_tr, y_tr = x_tr[: d.train_subset], y_tr[: d.train_subset]
    if d.val_subset is not None:
        x_va, y_va = x_va[: d.val_subset], y_va[: d.val_subset]
    return x_tr, y_tr, x_va, y_va


def epoch_permutation(n: int, seed: int, epoch: int) -> Tensor:
    """The order of the training examples in ``epoch``: a function of (seed, epoch) only."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + epoch * 7_919 + 12_345) % (2**63))
    return torch.randperm(n, generator=g)


def global_batches(n: int, batch_size: int, world_size: int) -> int:
    """Number of global batches per epoch (a last batch smaller than the world size is dropped)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world_size else 0)


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


def penalty_mask(n: int, fraction: float) -> Tensor:
    """Which positions of a global batch of ``n`` get the penalty: ⌊f·n⌋ (at least 1), evenly spaced.

    Position p is chosen when ⌊(p+1)·f⌋ > ⌊p·f⌋. The choice depends on the global position
    only, so it is the same set for any number of DDP ranks and is spread evenly over them.
    """
    if fraction >= 1:
        return torch.ones(n, dtype=torch.bool)
    pos = torch.arange(n, dtype=torch.float64)
    mask = torch.floor((pos + 1) * fraction + 1e-9) > torch.floor(pos * fraction + 1e-9)
    if not bool(mask.any()):
        mask[0] = True
    return mask


def evaluate_split(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int) -> Tensor:
    """Local sums (correct, CE, ‖∇_x CE_i‖₂, count) in eval mode, as a float64 tensor of 4."""
    out = torch.zeros(4, dtype=torch.float64)
    with eval_mode(model):
        for start in range(0, x.shape[0], batch_size):
            xb = x[start : start + batch_size].detach().requires_grad_(True)
            yb = y[start : start + batch_size]
            logits = model(xb)
            ce = F.cross_entropy(logits, yb, reduction="none")
            (g,) = torch.autograd.grad(ce.sum(), xb)
            out += torch.tensor(
                [
                    float((logits.detach().argmax(1) == yb).sum()),
                    float(ce.detach().sum()),
                    float(g.flatten(1).norm(dim=1).sum()),
                    float(xb.shape[0]),
                ],
                dtype=torch.float64,
            )
    return out


def _write_log(run_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(LOG_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    write_text_atomic(run_dir / LOG_FILE, buf.getvalue())


def _tensorboard(run_dir: Path, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra
        return None
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def _as_config(config: TrainConfig | dict[str, Any] | str | os.PathLike[str]) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return config
    if isinstance(config, dict):
        return config_from_dict(config)
    if not isinstance(config, (str, os.PathLike)):
        raise InputTypeError(
            f"config must be a TrainConfig, a dict or a YAML path, got {type(config).__name__}"
        )
    return load_config(config)


def _comparable(cfg: dict[str, Any]) -> dict[str, Any]:
    """Config fields that must match for a resume (epochs, threads, quiet, device may change)."""
    return {
        k: v for k, v in cfg.items() if k not in ("epochs", "num_threads", "quiet", "tensorboard", "device")
    }


def _remove_stale_temporaries(run_dir: Path) -> None:
    for name in (STATE_FILE, MODEL_FILE, LOG_FILE):
        for tmp in run_dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


def train(
    config: TrainConfig | dict[str, Any] | str | os.PathLike[str],
    *,
    run_dir: str | os.PathLike[str],
    resume: bool = True,
    data: TrainData | None = None,
    quiet: bool | None = None,
) -> Path:
    """Train one model as ``config`` says and return the path of its final checkpoint.

    Args:
        config: a :class:`TrainConfig`, a dict, or a YAML path.
        run_dir: output directory (created); see the module docstring for its files.
        resume: continue from ``run_dir/state.safetensors`` if present (an already finished
            run returns at once); ``False`` starts afresh and overwrites.
        data: ``(x_train, y_train, x_val, y_val)`` tensors instead of ``config.data``.
        quiet: no progress bar (default: ``config.quiet``, else ``SALIGN_QUIET``).

    Returns:
        ``run_dir / "checkpoint.safetensors"`` (readable by :func:`salign.models.load`).

    Raises:
        ConfigError: invalid config; CheckpointError: a state that belongs to another config.
    """
    cfg = _as_config(config)
    out = Path(run_dir)
    device = resolve_device(cfg.device)
    info = dist_util.setup(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _train(cfg, out, resume=resume, data=data, quiet=quiet, device=device, info=info)
    finally:
        dist_util.teardown(info)


def _train(
    cfg: TrainConfig,
    out: Path,
    *,
    resume: bool,
    data: TrainData | None,
    quiet: bool | None,
    device: torch.device,
    info: dist_util.DistInfo,
) -> Path:
    from salign import models

    cfg_dict = cfg.model_dump(mode="json", by_alias=True)
    if cfg.batch_size < info.world_size:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is smaller than the number of ranks {info.world_size}"
        )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(out)
    dist_util.barrier(info)  # nobody reads the state before rank 0 has tidied the directory

    x_tr, y_tr, x_va, y_va = data if data is not None else load_data(cfg)
    x_tr, y_tr = x_tr.to(device), y_tr.to(device).long()
    x_va, y_va = x_va.to(device), y_va.to(device).long()

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    inner = models.build(cfg.model.name, **cfg.model.kwargs).to(device)
    _check_data_fits(inner, x_tr, y_tr, x_va, y_va)
    inner.train()
    params = [p for p in inner.parameters() if p.requires_grad]
    if cfg.optimizer.name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=cfg.optimizer.lr,
            momentum=cfg.optimizer.momentum,
            nesterov=cfg.optimizer.nesterov,
            weight_decay=cfg.optimizer.weight_decay,
        )
    else:
        opt = torch.optim.Adam(
            params, lr=cfg.optimizer.lr, betas=cfg.optimizer.betas, weight_decay=cfg.optimizer.weight_decay
        )
    torch.manual_seed((cfg.seed + 1 + 7_777 * info.rank) % (2**63))  # Dropout / attack randomness

    state = TrainState()
    state_path = out / STATE_FILE
    if resume and state_path.is_file():
        loaded = load_state(state_path)
        if _comparable(loaded.config) != _comparable(cfg_dict):
            raise CheckpointError(
                f"{state_path} was written by a different config; use another run directory or "
                "resume=False (--no-resume) to start afresh"
            )
        rng_ok = loaded.apply(inner, opt, rank=info.rank)
        if not rng_ok:  # e.g. a different number of ranks: continue, reproducibly but differently
            torch.manual_seed((cfg.seed + 1 + 7_777 * info.rank + loaded.state.global_step) % (2**63))
        state = loaded.state

    model: nn.Module = inner
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            inner,
            device_ids=[device.index] if device.type == "cuda" else None,
        )

    n_train = x_tr.shape[0]
    n_batches = global_batches(n_train, cfg.batch_size, info.world_size)
    writer = _tensorboard(out, cfg.tensorboard) if info.is_main else None
    if info.is_main:
        write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    bar_quiet = quiet if quiet is not None else cfg.quiet
    stat_names = (
        "ce_sum",
        "penalty_sum",
        "penalty_count",
        "grad_norm_sum",
        "grad_norm_count",
        "correct",
        "count",
    )

    try:
        for epoch in range(state.epoch, cfg.epochs):
            lr = lr_at(cfg, epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            perm = epoch_permutation(n_train, cfg.seed, epoch).to(device)
            start_step = state.step if epoch == state.epoch else 0
            sums = torch.zeros(len(stat_names) + 1, dtype=torch.float64)
            if start_step > 0 and info.is_main and state.partial:
                sums = torch.tensor(
                    [state.partial.get(k, 0.0) for k in (*stat_names, "seconds")], dtype=torch.float64
                )
            t0 = time.perf_counter()
            bar = progress_bar(
                desc=f"epoch {epoch + 1}/{cfg.epochs}", total=n_batches, quiet=bar_quiet or not info.is_main
            )
            bar.update(start_step)
            for step in range(start_step, n_batches):
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                shards = torch.tensor_split(idx, info.world_size)
                local = shards[info.rank]
                mask = penalty_mask(int(idx.numel()), cfg.regularizer.penalty_fraction)
                local_mask = torch.tensor_split(mask, info.world_size)[info.rank].to(device)
                obj, st = step_objective(
                    model,
                    inner,
                    x_tr[local],
                    y_tr[local],
                    cfg,
                    global_batch=int(idx.numel()),
                    global_penalised=int(mask.sum()),
                    world_size=info.world_size,
                    penalised=local_mask,
                )
                opt.zero_grad(set_to_none=True)
                torch.autograd.backward(obj, inputs=params)
                opt.step()
                sums[: len(stat_names)] += torch.tensor(
                    [float(getattr(st, k)) for k in stat_names], dtype=torch.float64
                )
                state.global_step += 1
                bar.update(1)
                every = cfg.checkpoint_every_steps
                if every is not None and state.global_step % every == 0 and step + 1 < n_batches:
                    sums[-1] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    total = dist_util.all_reduce_sum(sums[: len(stat_names)], info)
                    rng = dist_util.gather_rng_states(info)
                    sums[: len(stat_names)] = total if info.is_main else 0.0
                    state.epoch, state.step = epoch, step + 1
                    state.partial = {
                        k: float(v) for k, v in zip((*stat_names, "seconds"), sums.tolist(), strict=True)
                    }
                    if info.is_main:
                        save_state(state_path, model=inner, optimizer=opt, schedule=_schedule_record(cfg, epoch),
                                   state=state, config=cfg_dict, rank_rng_states=rng)  # fmt: skip
            bar.close()
            sums[-1] += time.perf_counter() - t0
            total = dist_util.all_reduce_sum(sums[: len(stat_names)], info)
            val_idx = torch.tensor_split(torch.arange(x_va.shape[0], device=device), info.world_size)[
                info.rank
            ]
            val = dist_util.all_reduce_sum(
                evaluate_split(inner, x_va[val_idx], y_va[val_idx], batch_size=cfg.batch_size), info
            )
            row = _epoch_row(
                cfg, epoch, lr, dict(zip(stat_names, total.tolist(), strict=True)), val, float(sums[-1])
            )
            rng = dist_util.gather_rng_states(info)
            state.history = [*state.history[:epoch], row]
            state.epoch, state.step, state.partial = epoch + 1, 0, {}
            if info.is_main:
                save_state(state_path, model=inner, optimizer=opt, schedule=_schedule_record(cfg, epoch + 1),
                           state=state, config=cfg_dict, rank_rng_states=rng)  # fmt: skip
                _write_log(out, state.history)
                if writer is not None:
                    for key, value in row.items():
                        if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                            writer.add_scalar(f"train/{key}", value, epoch + 1)
                    writer.flush()
    finally:
        if writer is not None:
            writer.close()

    final = out / MODEL_FILE
    if info.is_main:
        last = state.history[-1] if state.history else {}
        models.save(
            inner,
            final,
            metadata={
                "lambda": cfg.regularizer.lambda_,
                "method": cfg.regularizer.method,
                "adversarial": cfg.adversarial.method,
                "epochs": cfg.epochs,
                "seed": cfg.seed,
                "val_accuracy": last.get("val_accuracy"),
                "config": cfg_dict,
            },
        )
    dist_util.barrier(info)
    return final


def _check_data_fits(model: nn.Module, x_tr: Tensor, y_tr: Tensor, x_va: Tensor, y_va: Tensor) -> None:
    """Fail early, naming the culprit, if the model cannot take the data or the labels exceed K."""
    if x_tr.shape[0] == 0:
        raise DataError("the training set is empty")
    check_inputs(x_tr[:256], name="training images x")
    out = check_model_on(model, x_tr[:2])
    k = out.shape[1]
    check_labels(y_tr, y_tr.shape[0], k, name="training labels")
    if x_va.shape[0]:
        check_labels(y_va, y_va.shape[0], k, name="validation labels")


def _schedule_record(cfg: TrainConfig, next_epoch: int) -> dict[str, Any]:
    return {**cfg.schedule.model_dump(mode="json"), "next_epoch": next_epoch, "lr": lr_at(cfg, next_epoch)}


def _epoch_row(
    cfg: TrainConfig, epoch: int, lr: float, t: dict[str, float], val: Tensor, seconds: float
) -> dict[str, Any]:
    count = max(t["count"], 1.0)
    ce = t["ce_sum"] / count
    pen = t["penalty_sum"] / t["penalty_count"] if t["penalty_count"] else 0.0
    v_correct, v_ce, v_gn, v_n = val.tolist()
    v_n = max(v_n, 1.0)
    return {
        "epoch": epoch + 1,
        "lr": lr,
        "loss": ce + cfg.regularizer.lambda_ * pen,
        "cross_entropy": ce,
        "penalty": pen,
        "train_grad_norm": t["grad_norm_sum"] / t["grad_norm_count"]
        if t["grad_norm_count"]
        else float("nan"),
        "train_accuracy": t["correct"] / count,
        "val_accuracy": v_correct / v_n,
        "val_cross_entropy": v_ce / v_n,
        "val_grad_norm": v_gn / v_n,
        "seconds": seconds,
    }

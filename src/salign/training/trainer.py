"""The training loop: input-gradient regularisation or adversarial training, resumable, DDP-ready.

``train(config, run_dir=...)`` writes into ``run_dir``:

- ``checkpoint.safetensors``: the final model (:func:`salign.models.save`; load it with
  :func:`salign.models.load`), with λ, epochs and accuracy in its metadata;
- ``state.safetensors``: the training state (model, optimizer, schedule, RNG states, epoch and
  batch position, metrics history), replaced atomically every epoch and optionally every
  ``checkpoint_every_steps`` steps; a rerun with ``resume=True`` continues from it;
- ``train_log.csv``: one row per epoch (rewritten atomically); ``config.yaml``; ``tensorboard/``.

The trainer is three concepts: where batches come from (:mod:`salign.training.batches`:
in-memory tensors, or an ImageFolder streamed through ``DataLoader`` workers with ``data.stream``),
how one step is computed (:mod:`salign.training.step`: penalty or adversarial objective, bf16
autocast, micro-batches for gradient accumulation), and the loop with its checkpoints (here).

Determinism: batches follow a plan that is a function of (seed, epoch, step) only, streamed
items are augmented under a seed of (seed, epoch, index), and the global RNG (Dropout, PGD
starts) is saved in the state, so on CPU a run killed mid-epoch and resumed ends with
bit-identical weights, with or without loader workers.

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
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn
from torch.utils.data import Subset

from salign._faults import fault_point
from salign._io import write_text_atomic
from salign._progress import progress_bar
from salign._validation import check_inputs, check_labels, check_model_on, eval_mode
from salign.errors import CheckpointError, ConfigError, DataError, InputTypeError, TrainingError
from salign.training import distributed as dist_util
from salign.training.batches import (
    Batch,
    BatchSource,
    DatasetBatches,
    Plan,
    TensorBatches,
    evaluation_batches,
)
from salign.training.config import TrainConfig, config_from_dict, load_config, lr_at
from salign.training.state import TrainState, load_state, save_state
from salign.training.step import StepStats, autocast, step_objective

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
    "images_per_second",
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


def evaluate_batches(
    model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], device: torch.device
) -> Tensor:
    """Local sums (correct, CE, ‖∇_x CE_i‖₂, count) in eval mode, as a float64 tensor of 4."""
    out = torch.zeros(4, dtype=torch.float64)
    with eval_mode(model):
        for xb, yb in batches:
            xb, yb = xb.to(device).detach().requires_grad_(True), yb.to(device)
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


@dataclass(frozen=True)
class Sources:
    """The training batches, the validation batches of this rank, and a sample to check the model on."""

    train: BatchSource
    validation: Callable[[], Iterable[tuple[Tensor, Tensor]]]
    sample: tuple[Tensor, Tensor]
    train_labels: Tensor | None
    val_labels: Tensor | None


def tensor_sources(
    data: TrainData, cfg: TrainConfig, device: torch.device, info: dist_util.DistInfo
) -> Sources:
    """In-memory tensors (moved to ``device`` once); validation is this rank's contiguous shard."""
    x_tr, y_tr, x_va, y_va = data
    x_tr, y_tr = x_tr.to(device), y_tr.to(device).long()
    x_va, y_va = x_va.to(device), y_va.to(device).long()
    if x_tr.shape[0] == 0:
        raise DataError("the training set is empty")
    check_inputs(x_tr[:256], name="training images x")
    shard = torch.tensor_split(torch.arange(x_va.shape[0], device=device), info.world_size)[info.rank]
    xv, yv = x_va[shard], y_va[shard]
    b = cfg.batch_size

    def validation() -> Iterator[tuple[Tensor, Tensor]]:
        for start in range(0, xv.shape[0], b):
            yield xv[start : start + b], yv[start : start + b]

    return Sources(TensorBatches(x_tr, y_tr), validation, (x_tr[:2], y_tr[:2]), y_tr, y_va)


def stream_sources(cfg: TrainConfig, info: dist_util.DistInfo) -> Sources:
    """A streamed ImageFolder (``data.stream``): per-item decoding, seeded augmentation, workers."""
    from salign.data.streaming import ImageFolderDataset, eval_transform, train_transform

    d, st = cfg.data, cfg.data.stream
    assert st is not None
    if d.name != "imagefolder" or d.data_dir is None:
        raise ConfigError(
            f"data.stream needs data.name 'imagefolder' and a data.data_dir, got {d.name!r}, {d.data_dir!r}"
        )
    if d.holdout is not None or d.options:
        raise ConfigError("data.holdout and data.options do not apply to a streamed imagefolder")
    augment = train_transform(st.augment, crop=st.crop, rescale=st.rescale, hue=st.hue)
    train_set: Any = ImageFolderDataset(d.data_dir, d.train_split, transform=augment, file_list=st.train_list,
                                   on_error=st.on_error)  # fmt: skip
    val_set: Any = ImageFolderDataset(d.data_dir, d.val_split, transform=eval_transform(resize=st.eval_resize,
                                      crop=st.eval_crop), file_list=st.val_list, on_error=st.on_error)  # fmt: skip
    train_labels, val_labels = train_set.labels, val_set.labels
    if d.train_subset is not None and d.train_subset < len(train_set):
        train_set, train_labels = Subset(train_set, range(d.train_subset)), train_labels[: d.train_subset]
    if d.val_subset is not None and d.val_subset < len(val_set):
        # evenly spaced over the class-sorted listing, so every class is validated (ImageNet val's
        # first 1000 images would be its first 20 classes)
        spaced = torch.linspace(0, len(val_set) - 1, d.val_subset).round().long()
        val_set, val_labels = Subset(val_set, spaced.tolist()), val_labels[spaced]
    source = DatasetBatches(train_set, workers=st.workers, pin_memory=st.pin_memory)
    first = train_set[0]
    if not isinstance(first, tuple):
        raise DataError(f"the first training image cannot be decoded: {first.reason}")

    def validation() -> Iterator[tuple[Tensor, Tensor]]:
        return evaluation_batches(val_set, batch_size=cfg.batch_size, world_size=info.world_size,
                                  rank=info.rank, workers=st.workers)  # fmt: skip

    sample = (first[0].unsqueeze(0), torch.tensor([first[1]]))
    return Sources(source, validation, sample, train_labels, val_labels)


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
    with dist_util.left_at_exit(info):
        return _train(cfg, out, resume=resume, data=data, quiet=quiet, device=device, info=info)


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

    if data is not None or cfg.data.stream is None:
        sources = tensor_sources(data if data is not None else load_data(cfg), cfg, device, info)
    else:
        sources = stream_sources(cfg, info)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    inner = _build_model(cfg).to(device)
    if cfg.channels_last:
        inner = inner.to(memory_format=torch.channels_last)
    _check_data_fits(inner, sources)
    inner.train()
    if cfg.freeze_batchnorm:  # small-batch fine-tuning: the pretrained statistics stay
        for m in inner.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    params = [p for p in inner.parameters() if p.requires_grad]
    opt = _optimizer(cfg, params)
    torch.manual_seed((cfg.seed + 1 + 7_777 * info.rank) % (2**63))  # Dropout / attack randomness

    state_path = out / STATE_FILE
    state = (
        _resume(state_path, cfg_dict, inner, opt, info) if resume and state_path.is_file() else TrainState()
    )
    model: nn.Module = inner
    if info.enabled:
        model = nn.parallel.DistributedDataParallel(
            inner,
            device_ids=[device.index] if device.type == "cuda" else None,
        )
    writer = _tensorboard(out, cfg.tensorboard) if info.is_main else None
    if info.is_main:
        write_text_atomic(out / "config.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    loop = _Loop(cfg, cfg_dict, out, device, info, model, inner, opt, params, state, sources,
                 quiet if quiet is not None else cfg.quiet)  # fmt: skip
    try:
        for epoch in range(state.epoch, cfg.epochs):
            row = loop.epoch(epoch)
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


def _build_model(cfg: TrainConfig) -> nn.Module:
    """The network of ``cfg.model``: built by name, then (fine-tuning) its ``weights`` file loaded strictly."""
    from salign import models

    m = cfg.model
    if m.weights is None:
        return models.build(m.name, **m.kwargs)
    if not m.name.startswith(("torchvision/", "timm/")) and m.name not in models.available():
        raise ConfigError(
            f"model.weights needs a model name (registry, torchvision/<arch> or timm/<arch>), got {m.name!r}"
        )
    return models.load_spec(m.name, weights=m.weights, **m.kwargs)


def _optimizer(cfg: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    o = cfg.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(
            params, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=o.weight_decay
        )
    return torch.optim.Adam(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)


def _resume(
    path: Path,
    cfg_dict: dict[str, Any],
    inner: nn.Module,
    opt: torch.optim.Optimizer,
    info: dist_util.DistInfo,
) -> TrainState:
    loaded = load_state(path)
    if _comparable(loaded.config) != _comparable(cfg_dict):
        raise CheckpointError(
            f"{path} was written by a different config; use another run directory or "
            "resume=False (--no-resume) to start afresh"
        )
    if not loaded.apply(inner, opt, rank=info.rank):  # e.g. another number of ranks: continue differently
        torch.manual_seed((cfg_dict["seed"] + 1 + 7_777 * info.rank + loaded.state.global_step) % (2**63))
    return loaded.state


STAT_NAMES = (
    "ce_sum",
    "penalty_sum",
    "penalty_count",
    "grad_norm_sum",
    "grad_norm_count",
    "correct",
    "count",
)


@dataclass
class _Loop:
    """The epoch loop and its checkpoints: one optimiser step per global batch of the plan."""

    cfg: TrainConfig
    cfg_dict: dict[str, Any]
    out: Path
    device: torch.device
    info: dist_util.DistInfo
    model: nn.Module
    inner: nn.Module
    opt: torch.optim.Optimizer
    params: list[nn.Parameter]
    state: TrainState
    sources: Sources
    quiet: bool | None

    def epoch(self, epoch: int) -> dict[str, Any]:
        cfg, info, state = self.cfg, self.info, self.state
        lr = lr_at(cfg, epoch)
        for group in self.opt.param_groups:
            group["lr"] = lr
        plan = Plan(len(self.sources.train), cfg.batch_size, cfg.seed, epoch, info.world_size, info.rank,
                    cfg.regularizer.penalty_fraction)  # fmt: skip
        start_step = state.step if epoch == state.epoch else 0
        sums = torch.zeros(len(STAT_NAMES) + 1, dtype=torch.float64)  # + seconds
        if start_step > 0 and info.is_main and state.partial:
            sums = torch.tensor(
                [state.partial.get(k, 0.0) for k in (*STAT_NAMES, "seconds")], dtype=torch.float64
            )
        t0 = time.perf_counter()
        bar = progress_bar(desc=f"epoch {epoch + 1}/{cfg.epochs}", total=plan.steps,
                           quiet=bool(self.quiet) or not info.is_main)  # fmt: skip
        bar.update(start_step)
        for batch in self.sources.train.batches(plan, start_step, self.device):
            st = self.step(batch)
            sums[: len(STAT_NAMES)] += torch.tensor(
                [float(getattr(st, k)) for k in STAT_NAMES], dtype=torch.float64
            )
            state.global_step += 1
            bar.update(1)
            if info.is_main:
                seconds = float(sums[-1]) + time.perf_counter() - t0
                bar.set_postfix(
                    img_s=f"{float(sums[STAT_NAMES.index('count')]) * info.world_size / seconds:.1f}"
                )
            every = cfg.checkpoint_every_steps
            if every is not None and state.global_step % every == 0 and batch.step + 1 < plan.steps:
                sums[-1] += time.perf_counter() - t0
                t0 = time.perf_counter()
                total = dist_util.all_reduce_sum(sums[: len(STAT_NAMES)], info)
                sums[: len(STAT_NAMES)] = total if info.is_main else 0.0
                state.epoch, state.step = epoch, batch.step + 1
                state.partial = {
                    k: float(v) for k, v in zip((*STAT_NAMES, "seconds"), sums.tolist(), strict=True)
                }
                self.save(epoch)
        bar.close()
        sums[-1] += time.perf_counter() - t0
        total = dist_util.all_reduce_sum(sums[: len(STAT_NAMES)], info)
        val = dist_util.all_reduce_sum(
            evaluate_batches(self.inner, self.sources.validation(), self.device), info
        )
        row = _epoch_row(
            cfg, epoch, lr, dict(zip(STAT_NAMES, total.tolist(), strict=True)), val, float(sums[-1])
        )
        state.history = [*state.history[:epoch], row]
        state.epoch, state.step, state.partial = epoch + 1, 0, {}
        self.save(epoch + 1)
        if info.is_main:
            _write_log(self.out, state.history)
        return row

    def step(self, batch: Batch) -> StepStats:
        """One optimiser step on this rank's share of a global batch, in micro-batches."""
        fault_point("train_step", index=self.state.global_step + 1, rank=self.info.rank)  # tests only
        cfg = self.cfg
        x = batch.x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else batch.x
        parts = [p for p in torch.tensor_split(torch.arange(x.shape[0]), cfg.accumulation_steps) if p.numel()]
        self.opt.zero_grad(set_to_none=True)
        total = StepStats(0.0, 0.0, 0, 0.0, 0, 0, 0)
        for k, part in enumerate(parts):
            last = k == len(parts) - 1
            sync = contextlib.nullcontext() if last or not self.info.enabled else self.model.no_sync()  # type: ignore[operator]
            with sync:
                with autocast(self.device, cfg.precision):
                    obj, st = step_objective(
                        self.model, self.inner, x[part], batch.y[part], cfg,
                        global_batch=batch.global_size, global_penalised=batch.global_penalised,
                        world_size=self.info.world_size, penalised=batch.penalised[part],
                    )  # fmt: skip
                self._check_finite(obj, batch.step)
                torch.autograd.backward(obj, inputs=self.params)
            total = total + st
        self.opt.step()
        return total

    def _check_finite(self, obj: Tensor, step: int) -> None:
        bad = torch.tensor([0.0 if bool(torch.isfinite(obj.detach())) else 1.0], dtype=torch.float64)
        if float(dist_util.all_reduce_sum(bad, self.info)[0]) > 0:  # every rank stops together
            raise TrainingError(
                f"non-finite loss at epoch {self.state.epoch + 1}, step {step + 1}: training stopped; "
                f"the last good state is {self.out / STATE_FILE} (lower optimizer.lr or λ and resume)"
            )

    def save(self, next_epoch: int) -> None:
        rng = dist_util.gather_rng_states(self.info)
        if self.info.is_main:
            save_state(self.out / STATE_FILE, model=self.inner, optimizer=self.opt,
                       schedule=_schedule_record(self.cfg, next_epoch), state=self.state, config=self.cfg_dict,
                       rank_rng_states=rng)  # fmt: skip


def _check_data_fits(model: nn.Module, sources: Sources) -> None:
    """Fail early, naming the culprit, if the model cannot take the data or the labels exceed K."""
    x, y = sources.sample
    check_inputs(x, name="training images x")
    k = check_model_on(model, x[:2].to(next(iter(model.parameters()), x).device)).shape[1]
    for labels, name in (
        (sources.train_labels, "training labels"),
        (sources.val_labels, "validation labels"),
    ):
        if labels is not None and labels.numel():
            check_labels(labels, labels.shape[0], k, name=name)
    check_labels(y, y.shape[0], k, name="training labels")


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
        "images_per_second": t["count"] / seconds if seconds > 0 else float("nan"),
    }

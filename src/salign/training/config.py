"""Training configuration: pydantic models (unknown keys are errors) and a YAML loader.

Example (the paper's MNIST setup, ``configs/mnist-paper.yaml``)::

    model: {name: smallnet}
    data: {name: mnist, val_split: test, val_subset: 1000}
    optimizer: {name: sgd, lr: 0.001, momentum: 0.9, weight_decay: 1.0e-6}
    schedule: {name: step, step_size: 80, gamma: 0.1}
    epochs: 200
    batch_size: 100
    regularizer: {lambda: 10, method: double_backprop, target: loss, scaling: batch_mean}
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from salign.errors import ConfigError, MissingFileError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ModelConfig(_Strict):
    """Which network to train: a :func:`salign.models.build` name and its keyword arguments.

    ``weights``: a local state-dict file (``.safetensors``, or ``.pt``/``.pth`` read with
    ``torch.load(weights_only=True)``) loaded strictly before training: fine-tuning from
    pretrained weights (e.g. ``{name: torchvision/resnet50, weights: resnet50.pth}``).
    """

    name: str = "smallnet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None


class StreamConfig(_Strict):
    """Stream an ImageFolder tree from disk (decoded per item by ``DataLoader`` workers).

    ``augment``: ``paper`` (short side to a random integer in ``rescale``, random ``crop``, hue
    ±``hue``, flip; Etmann et al. 2019 §4), ``standard`` (random resized ``crop`` + flip) or
    ``none``. Validation uses resize ``eval_resize`` + centre crop ``eval_crop``.
    ``train_list``/``val_list``: optional ``path label`` files (paths relative to the split
    folder) that fix the images and labels; else the sorted class folders give the labels.
    ``on_error``: an unreadable image stops training naming it (``raise``) or is logged and
    skipped (``skip``). ``pin_memory`` defaults to "when CUDA is available".
    """

    augment: Literal["paper", "standard", "none"] = "paper"
    crop: int = Field(default=256, ge=1)
    rescale: tuple[int, int] = (258, 512)
    hue: float = Field(default=0.06, ge=0, le=0.5)
    eval_resize: int = Field(default=256, ge=1)
    eval_crop: int = Field(default=256, ge=1)
    workers: int = Field(default=2, ge=0)
    pin_memory: bool | None = None
    train_list: str | None = None
    val_list: str | None = None
    on_error: Literal["raise", "skip"] = "raise"

    @model_validator(mode="after")
    def _sizes(self) -> StreamConfig:
        if self.augment == "paper" and not self.crop <= self.rescale[0] < self.rescale[1]:
            raise ValueError(
                f"paper augmentation needs crop <= rescale[0] < rescale[1], got {self.crop}, {self.rescale}"
            )
        if self.eval_crop > self.eval_resize:
            raise ValueError(f"eval_crop {self.eval_crop} exceeds eval_resize {self.eval_resize}")
        return self


class DataConfig(_Strict):
    """Dataset read with :func:`salign.data.load` (offline).

    ``holdout: 10000`` on MNIST reproduces the authors' split: train on the first 50k official
    training images (``mnist.pkl.gz``'s train part), validate on the last 10k (its valid part).
    """

    name: str = "mnist"
    train_split: str = "train"
    val_split: str = "test"
    data_dir: str | None = None
    holdout: int | None = Field(
        default=None, ge=1, description="validate on the last N train-split images instead of val_split"
    )
    train_subset: int | None = Field(default=None, ge=1, description="use the first N training images")
    val_subset: int | None = Field(
        default=1000,
        ge=1,
        description="validate on the first N images (streamed: N evenly spaced ones, so every class appears)",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="extra salign.data.load options")
    stream: StreamConfig | None = Field(default=None, description="stream an imagefolder from disk")


class OptimizerConfig(_Strict):
    """SGD with (Nesterov) momentum or Adam; ``weight_decay`` is the optimizer's L2 term μ·w."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(default=1e-3, gt=0, allow_inf_nan=False)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(default=0.0, ge=0)


class ScheduleConfig(_Strict):
    """Learning-rate schedule as a function of the epoch.

    ``constant``; ``step``: lr0·γ^⌊epoch/step_size⌋ (the paper's staircase decay);
    ``multistep``: lr0·γ^(number of milestones ≤ epoch); ``cosine``: lr0·(1+cos(π·epoch/epochs))/2.
    """

    name: Literal["constant", "step", "multistep", "cosine"] = "constant"
    step_size: int = Field(default=80, ge=1)
    gamma: float = Field(default=0.1, gt=0)
    milestones: list[int] = Field(default_factory=list)


class RegularizerConfig(_Strict):
    """Input-gradient penalty (see :func:`salign.training.gradient_norm_penalty`).

    ``lambda`` (alias ``lambda_``) is λ; 0 switches the penalty off. ``penalty_fraction`` < 1
    computes the penalty on the first ⌈f·B⌉ examples of each batch only (cheaper; measured
    costs: docs/benchmarks/training.md).
    ``batchnorm``: ``"batch"`` (batch statistics in the penalty's forward, as the authors) or
    ``"running"`` (running statistics: a separate forward with BatchNorm in eval mode).
    With ``penalty_fraction`` < 1 and ``"batch"``, the penalised and the other examples go
    through separate forwards, so each part is normalised with its own batch statistics.
    """

    lambda_: float = Field(default=0.0, ge=0, alias="lambda", allow_inf_nan=False)
    method: Literal["double_backprop", "finite_difference"] = "double_backprop"
    target: Literal["loss", "logit", "binarized"] = "loss"
    p: float = Field(default=2.0, ge=1)
    scaling: Literal["per_example", "batch_mean"] = "per_example"
    h: float = Field(default=1e-2, gt=0)
    penalty_fraction: float = Field(default=1.0, gt=0, le=1)
    batchnorm: Literal["batch", "running"] = "batch"


class AdversarialConfig(_Strict):
    """Adversarial-training baseline: train on PGD-L2 (Madry) or DDN (Rony) examples.

    ``clean_weight`` mixes in the clean loss: ``(1−w)·CE(x_adv) + w·CE(x)``.
    ``attack_mode``: the model's mode while the examples are generated.
    """

    method: Literal["none", "pgd_l2", "ddn"] = "none"
    epsilon: float = Field(default=2.0, ge=0)
    steps: int = Field(default=10, ge=1)
    step_size: float | None = Field(default=None, gt=0)
    random_start: bool = True
    gamma: float = Field(default=0.05, gt=0, lt=1)
    clean_weight: float = Field(default=0.0, ge=0, le=1)
    attack_mode: Literal["eval", "train"] = "eval"


class TrainConfig(_Strict):
    """One training run. Every field has a default; unknown keys are errors."""

    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    regularizer: RegularizerConfig = Field(default_factory=RegularizerConfig)
    adversarial: AdversarialConfig = Field(default_factory=AdversarialConfig)
    epochs: int = Field(default=10, ge=1)
    batch_size: int = Field(default=100, ge=1, description="global batch (over all ranks)")
    accumulation_steps: int = Field(default=1, ge=1, description="micro-batches per rank and step")
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    freeze_batchnorm: bool = Field(
        default=False, description="keep BatchNorm in eval mode (running statistics, not updated)"
    )
    seed: int = 0
    checkpoint_every_steps: int | None = Field(default=None, ge=1)
    num_threads: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    tensorboard: bool = True
    quiet: bool | None = None

    @field_validator("seed")
    @classmethod
    def _seed_range(cls, v: int) -> int:
        if not 0 <= v < 2**63:
            raise ValueError("seed must be in [0, 2**63)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.adversarial.method != "none" and self.regularizer.lambda_ > 0:
            raise ValueError("use either regularizer.lambda > 0 or adversarial.method, not both")
        return self

    def with_overrides(self, **changes: Any) -> TrainConfig:
        """A copy with dotted-path overrides, e.g. ``{"regularizer.lambda": 0.1, "epochs": 3}``."""
        data = self.model_dump(by_alias=True)
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        return config_from_dict(data)


def _format_errors(exc: ValidationError, source: str) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return f"invalid training config{source}: " + "; ".join(parts)


def config_from_dict(data: dict[str, Any] | None, *, source: str = "") -> TrainConfig:
    """Validate a plain dict as a :class:`TrainConfig`; errors name the offending key."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"invalid training config{source}: expected a mapping, got {type(data).__name__}")
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source)) from None


def load_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a YAML training config. A file with a top-level ``train:`` section uses that section.

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: YAML syntax errors (with line), unknown keys, wrong types or values.
    """
    p = Path(path)
    if not p.is_file():
        raise MissingFileError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if isinstance(data, dict) and set(data) == {"train"}:
        data = data["train"]
    return config_from_dict(data, source=f" {p}")


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate of ``epoch`` (0-based) under ``config.schedule``."""
    import math

    lr0 = config.optimizer.lr
    s = config.schedule
    if s.name == "step":
        return lr0 * s.gamma ** (epoch // s.step_size)
    if s.name == "multistep":
        return lr0 * s.gamma ** sum(1 for m in s.milestones if epoch >= m)
    if s.name == "cosine":
        return lr0 * (1 + math.cos(math.pi * epoch / config.epochs)) / 2
    return lr0

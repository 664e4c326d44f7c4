"""Experiment configuration: one YAML file describes a whole study (sweep → evaluate → report).

Example (``configs/demo.yaml``)::

    name: demo
    seed: 0
    dataset: {name: mnist}
    model: {name: smallnet}
    training:                       # a salign.training.TrainConfig (model/data default to the above)
      epochs: 2
      data: {train_subset: 12000}
      optimizer: {name: adam, lr: 1.0e-3}
    sweep: {lambdas: [0, 0.1, 1, 10], method: double_backprop}
    evaluation: {n: 500, seed: 0}
    attacks: {names: [deepfool, ddn, fmn], budget: fast}

Other norms (``evaluation.norms``; docs/theory.md, "Other norms")::

    evaluation: {n: 500, norms: [2, inf]}
    attacks:
      names: {2: [deepfool, ddn, fmn], inf: [deepfool, fmn]}   # or one list for every norm

A study without ``training`` evaluates one model as built (e.g. the pretrained
``efficientnet_lite0``) or the checkpoint named by ``model.checkpoint``: no λ sweep.

A model zoo (``models``, instead of or beside the sweep): each entry is one *arm* of the study,
any :func:`salign.models.load_spec` spec with a ``tag`` that names its run files and its row of
summary.csv; every arm is evaluated on the same seeded images (``configs/zoo-example.yaml``)::

    models:
      - {tag: mine, spec: nets/mynet.py:make_model, weights: mynet.pt, kwargs: {width: 4}}
      - {tag: exported, spec: mynet.pt2}
      - {tag: salign-ckpt, spec: runs/demo/models/1/checkpoint.safetensors}

:meth:`ExperimentConfig.arms` is the one list the pipeline walks: the sweep's arms (tag = λ,
trained) then the listed ones (nothing to train). Unknown keys anywhere are errors that name the
key (and, inside ``models``, the entry's tag); every field has a documented default.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

from salign._norms import parse_norm
from salign.errors import ConfigError, InputError, MissingFileError
from salign.training.config import AdversarialConfig, TrainConfig

#: Sections of a run's resolved config.yaml that record the environment, ignored on loading.
RECORD_KEYS = ("versions", "resolved")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: Names a listed model's tag cannot take: other files of ``eval/`` and the pooled summary row.
RESERVED_TAGS = ("sanity", "pooled")
MAX_TAG_LENGTH = 64


def _norm(value: object, where: str) -> float:
    """``value`` as one of the norms 1, 2, ∞ (``salign._norms.parse_norm``), else a ValueError
    that pydantic reports under the key ``where``."""
    try:
        return parse_norm(value, where)
    except InputError as exc:
        raise ValueError(str(exc)) from None


def norm_text(p: float) -> str | int:
    """How configs spell the norm ``p``: ``2``, ``1`` or ``"inf"`` (YAML- and JSON-safe)."""
    return "inf" if math.isinf(p) else int(p)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class DatasetConfig(_Strict):
    """The evaluation data: :func:`salign.data.load` ``(name, split, data_dir=..., **options)``.

    For ``imagefolder`` only the evaluation subset (and the ``accuracy_n`` images) is decoded,
    so an ImageNet validation folder is never held in memory; ``options`` may name a
    ``file_list`` (``path label`` lines) and the ``size``.
    """

    name: str = "mnist"
    split: str = "test"
    data_dir: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)


class ModelSpec(_Strict):
    """The model: any :func:`salign.models.load_spec` spec (a registry name, ``torchvision/<arch>``,
    ``timm/<arch>``, ``file.py:factory``) with its arguments and ``weights`` file, or a file.

    ``checkpoint`` (only without ``training``): evaluate this file (a :func:`salign.models.save`
    checkpoint or a ``.pt2`` export). ``weights``: the state dict loaded into the model ``name``
    builds; with ``training`` it is where every model of the sweep starts (fine-tuning from
    pretrained weights, e.g. ``{name: torchvision/resnet50, weights: resnet50.pth}``). A study
    that trains needs a registry, ``torchvision/`` or ``timm/`` ``name``.
    """

    name: str = "smallnet"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = None
    weights: str | None = None


class ArmConfig(_Strict):
    """One entry of the study's ``models`` list: a model given as it is, or an adversarially
    trained arm.

    A given model (``spec``): anything :func:`salign.models.load_spec` accepts (a salign
    checkpoint, a ``.pt2`` export, ``file.py:factory`` or ``package.module:factory``,
    ``torchvision/<arch>``, ``timm/<arch>``, a registry name), with its ``weights`` file and
    factory ``kwargs``; nothing is trained.

    An adversarial-training arm (``adversarial``): the study trains the sweep's architecture with
    the study's ``training`` section, on PGD-L2 (Madry et al. 2018) or DDN (Rony et al. 2019)
    examples instead of the gradient penalty (:class:`salign.training.AdversarialConfig`;
    ``method`` and ``epsilon`` must be given, the rest has defaults)::

        models:
          - {tag: pgd-1, adversarial: {method: pgd_l2, epsilon: 1.0, steps: 5}}
          - {tag: ddn-2, adversarial: {method: ddn, epsilon: 2.0, steps: 20}}

    ``tag`` names the arm's files (``models/<tag>/``, ``eval/<tag>.csv``) and its row of
    summary.csv: letters, digits, ``.``, ``_``, ``-``; not a number (numbers name the λ sweep's
    models), not ``sanity`` or ``pooled``. Relative paths are relative to the working directory,
    as everywhere in a config. A ``file.py:factory`` spec imports and runs that file.
    """

    tag: str
    spec: str | None = Field(default=None, min_length=1)
    weights: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    adversarial: AdversarialConfig | None = None

    @field_validator("tag")
    @classmethod
    def _valid_tag(cls, v: str) -> str:
        if not _NAME.match(v) or len(v) > MAX_TAG_LENGTH:
            raise ValueError(
                f"tag {v!r} must be 1–{MAX_TAG_LENGTH} letters, digits, '.', '_' or '-', starting with "
                "a letter or digit (it names the model's files)"
            )
        if _is_number(v):
            raise ValueError(f"tag {v!r} is a number, which names a model of the λ sweep; use a word")
        if v.lower() in RESERVED_TAGS:
            raise ValueError(f"tag {v!r} is reserved ({', '.join(RESERVED_TAGS)}); choose another")
        return v

    @model_validator(mode="after")
    def _one_kind(self) -> ArmConfig:
        if self.adversarial is None:
            if self.spec is None:
                raise ValueError(
                    "give 'spec' (a model to evaluate) or 'adversarial' (an arm the study trains, "
                    "e.g. adversarial: {method: pgd_l2, epsilon: 1.0})"
                )
            return self
        if self.spec is not None or self.weights is not None or self.kwargs:
            raise ValueError(
                "an 'adversarial' arm is trained from the study's 'model' section; remove spec, "
                "weights and kwargs (or 'adversarial' to evaluate the given model)"
            )
        given = self.adversarial.model_fields_set
        missing = [key for key in ("method", "epsilon") if key not in given]
        if missing or self.adversarial.method == "none":
            raise ValueError(
                "an adversarial-training arm needs adversarial.method (pgd_l2 or ddn) and "
                f"adversarial.epsilon (the L2 radius ε it trains at){'; missing: ' + ', '.join(missing) if missing else ''}"
            )
        return self


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Arm:
    """One model of a study, as the pipeline sees it (built by :meth:`ExperimentConfig.arms`).

    ``tag`` names its files and summary row; ``lam`` is its λ when it belongs to the sweep (the
    figures against λ use only those). Its model is trained by the study (``train``: the
    trainer's config, the gradient penalty of the sweep or an adversarial-training arm) or
    loaded as given (``spec``, ``weights``, ``kwargs``: the arguments of
    :func:`salign.models.load_spec`); ``listed`` marks a given entry of ``models``.
    """

    tag: str
    lam: float | None = None
    train: TrainConfig | None = None
    spec: str | None = None
    weights: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    listed: bool = False

    def describe(self) -> dict[str, Any]:
        """What this arm is, for the evaluation's metadata (JSON-safe): ``kind`` is ``sweep``
        (gradient penalty at ``lambda``), ``adversarial`` (``method``, ``epsilon``, ``steps``),
        ``listed`` or ``given``."""
        if self.train is not None and self.train.adversarial.method != "none":
            adv = self.train.adversarial
            return {"kind": "adversarial", "method": adv.method, "epsilon": adv.epsilon, "steps": adv.steps}
        if self.train is not None:
            return {"kind": "sweep", "lambda": self.lam}
        return {
            "kind": "listed" if self.listed else "given",
            "spec": self.spec,
            "weights": self.weights,
            "kwargs": self.kwargs,
        }


class SweepConfig(_Strict):
    """The λ grid: one model is trained per value with the input-gradient penalty weight λ."""

    lambdas: list[float] = Field(min_length=1)
    method: Literal["double_backprop", "finite_difference"] = "double_backprop"

    @field_validator("lambdas")
    @classmethod
    def _valid_lambdas(cls, v: list[float]) -> list[float]:
        if not all(math.isfinite(lam) for lam in v):
            raise ValueError(f"every λ must be a finite number, got {v}")
        if any(lam < 0 for lam in v):
            raise ValueError("every λ must be >= 0")
        tags = [f"{lam:g}" for lam in v]
        if len(set(tags)) != len(tags):
            raise ValueError(f"λ values must be distinct, got {v}")
        return sorted(v)


class AttributionEntry(_Strict):
    """One attribution method of ``evaluation.attributions``: a name of
    :data:`salign.attributions.METHODS` (``gradient``, ``input_x_gradient``,
    ``integrated_gradients``, ``smoothgrad``) or a captum input-attribution class by its path
    (``captum.attr.GradientShap``), with the options of its ``attribute`` call (``n_steps``,
    ``nt_samples``, ``baselines`` as a number, ...). ``name`` labels its columns
    (``attr_<name>_alignment``, ...; default: the method's name, lower-cased for a captum class).
    A plain string is the entry ``{method: <string>}``.
    """

    method: str = Field(min_length=1)
    name: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        """The name of its columns."""
        if self.name is not None:
            return self.name
        return self.method.rpartition(".")[2].lower() if "." in self.method else self.method

    @model_validator(mode="after")
    def _known(self) -> AttributionEntry:
        from salign.attributions import BOUNDARY_METHODS, METHODS

        if self.method in BOUNDARY_METHODS:
            raise ValueError(
                f"{self.method} is computed from the attack's boundary points: set evaluation.boundary: "
                "true instead of listing it"
            )
        if "." not in self.method and self.method not in METHODS:
            known = ", ".join(m for m in METHODS if m not in BOUNDARY_METHODS)
            raise ValueError(
                f"unknown attribution {self.method!r}; known: {known}, or a captum class such as "
                "captum.attr.GradientShap"
            )
        if not _NAME.match(self.label) or "__" in self.label:
            raise ValueError(f"attribution name {self.label!r} must be letters, digits, '.', '_' or '-'")
        return self

    def resolve(self) -> Any:
        """The method :func:`salign.attributions.attribute` takes: the name, or the captum class
        (a one-line error when captum or the class is missing, or it is not an input attribution)."""
        if "." not in self.method:
            return self.method
        from salign.attributions._captum import captum_attr

        module, _, cls_name = self.method.rpartition(".")
        if module not in ("captum.attr", "captum.attr._core"):
            raise ConfigError(
                f"evaluation.attributions: {self.method!r} is not a captum.attr class "
                "(write captum.attr.<Class>)"
            )
        cls = getattr(captum_attr(), cls_name, None)
        if not isinstance(cls, type):
            raise ConfigError(f"evaluation.attributions: captum.attr has no class {cls_name!r}")
        return cls

    def check(self) -> None:
        """Build the method on a tiny model and check its options, so a captum method that needs
        arguments a study cannot give (a layer, ``baselines`` not set) fails before training."""
        import torch

        from salign.attributions import attribute
        from salign.errors import MissingDependencyError, SalignError
        from salign.experiments.evaluate import attribution_options

        probe = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        x = torch.full((2, 1, 2, 2), 0.5)
        try:
            attribute(probe, x, self.resolve(), mode="logit", **attribution_options(self.options, x))
        except MissingDependencyError:
            raise
        except SalignError as exc:
            raise ConfigError(f"evaluation.attributions[{self.label}]: {exc}") from None
        except (TypeError, ValueError, RuntimeError, AssertionError) as exc:  # captum asserts too
            raise ConfigError(
                f"evaluation.attributions[{self.label}]: {self.method} failed with the given options "
                f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
            ) from None


class EvaluationConfig(_Strict):
    """The fixed, seeded evaluation subset (identical for every model) and how it is processed.

    ``n`` samples are drawn without replacement from the split with a generator seeded by
    ``seed`` (sorted by index). ``rival``/``candidates`` go to :func:`salign.analyze`
    (``candidates`` limits the j* search to the top logits: needed for 1000 classes on CPU).
    ``chunk_size`` samples are evaluated and saved at a time, so a killed run loses at most one
    chunk. ``gallery`` images (one per class first) get saved saliency maps for figure P1.
    ``accuracy_n`` test images (None: the whole split) give the clean accuracy.

    ``norms`` (``2``, ``inf``, ``1``; default ``[2]``, the paper's) are the Lp norms the study
    measures in. This one list drives both halves of the comparison for each norm p: the
    quantities of :func:`salign.analyze` with ``norm=p`` (α_p = |⟨x, g⟩| / ‖g‖_q with q the dual
    exponent, ρ̃_p, |β|/‖g‖_q, the nearest rival in Lp) and ρ_p by :func:`salign.robustness` with
    ``norm=p`` (the attacks of ``attacks.names`` for that norm). There is no separate attack
    norm, so α_p is always compared with ρ_p of the same p. In ``eval/<model>.csv`` the L2
    columns keep their names (``alignment``, ``rho``, ...); every other norm's columns carry a
    suffix (``alignment_linf``, ``rho_linf``, ``rho_fmn_l1``, ...), see
    :mod:`salign.report.columns`.

    ``attributions`` (default none): attribution methods (:class:`AttributionEntry`; names or
    captum classes) whose α (logit map), α_bin (binarized map, the same rival as ``analyze``)
    and saliency quality (:func:`salign.attributions.saliency_quality` of the logit map, with
    ``quality_threshold``) become columns ``attr_<name>_<quantity>`` (L2). ``boundary: true``
    adds the boundary attributions (Wang, Fredrikson & Datta 2022) of the L2 attack's boundary
    points: no attack beyond the one that gives ρ (:func:`salign.attributions.boundary_attributions`;
    columns ``boundary_*`` and the quality of the ``boundary_gradient`` and
    ``boundary_integrated_gradients`` maps).
    """

    n: int = Field(default=1000, ge=1)
    seed: int = Field(default=0, ge=0)
    batch_size: int = Field(default=100, ge=1)
    chunk_size: int = Field(default=250, ge=1)
    rival: Literal["nearest", "runner_up"] = "nearest"
    candidates: int | None = Field(default=None, ge=2)
    gallery: int = Field(default=6, ge=0)
    accuracy_n: int | None = Field(default=None, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    norms: list[float] = Field(default_factory=lambda: [2.0], min_length=1)
    attributions: list[AttributionEntry] = Field(default_factory=list)
    boundary: bool = False
    quality_threshold: float = Field(default=0.5, gt=0, lt=1)

    @field_validator("attributions", mode="before")
    @classmethod
    def _entries(cls, v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [{"method": e} if isinstance(e, str) else e for e in v]
        return v

    @field_validator("attributions")
    @classmethod
    def _distinct(cls, v: list[AttributionEntry]) -> list[AttributionEntry]:
        labels = [e.label for e in v]
        twice = sorted({lab for lab in labels if labels.count(lab) > 1})
        if twice:
            raise ValueError(f"attribution name(s) {twice} used twice; give each entry its own 'name'")
        return v

    def check_attributions(self) -> None:
        """Run every attribution entry once on a tiny model (:meth:`AttributionEntry.check`): a
        study fails on a bad method before it trains anything."""
        for entry in self.attributions:
            entry.check()

    @model_validator(mode="after")
    def _boundary_needs_l2(self) -> EvaluationConfig:
        if (self.boundary or self.attributions) and 2.0 not in self.norms:
            raise ValueError(
                "attributions and boundary attributions are measured in L2: add 2 to evaluation.norms"
            )
        return self

    @field_validator("norms", mode="before")
    @classmethod
    def _valid_norms(cls, v: Any) -> Any:
        if not isinstance(v, (list, tuple)):
            v = [v]
        out = [_norm(p, "every norm") for p in v]
        if len(set(out)) != len(out):
            raise ValueError(f"norms must be distinct, got {list(v)}")
        return out

    @field_serializer("norms")
    def _spell_norms(self, v: list[float]) -> list[str | int]:
        return [norm_text(p) for p in v]


class AttackConfig(_Strict):
    """ρ(x) by :func:`salign.robustness`: attack names, budget, optional step override.

    ``names`` is one list run in every norm of ``evaluation.norms`` (each attack must minimise
    every one of them), or a mapping norm → list, one ensemble per norm (``{2: [deepfool, ddn],
    inf: [deepfool, fmn]}``; it must name exactly the evaluated norms). Unset (the default):
    :func:`salign.robustness`'s own ensemble for each norm (``DEFAULT_ATTACKS``: DeepFool, DDN,
    FMN, ALMA and FAB-T in L2; DeepFool, FAB-T and FMN in L∞ and L1), so a study measures ρ as
    the function does.
    """

    names: list[str] | dict[str, list[str]] | None = None
    budget: Literal["fast", "standard", "thorough"] = "standard"
    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)

    @field_validator("names", mode="before")
    @classmethod
    def _canonical_keys(cls, v: Any) -> Any:
        if isinstance(v, dict):
            keys = [_norm(k, "every key of attacks.names") for k in v]
            if len(set(keys)) != len(keys):
                raise ValueError(f"names a norm twice: {list(v)}")
            return {str(norm_text(k)): names for k, names in zip(keys, v.values(), strict=True)}
        return v

    @field_validator("names")
    @classmethod
    def _known(cls, v: list[str] | dict[str, list[str]] | None) -> list[str] | dict[str, list[str]] | None:
        from salign.attacks.ensemble import ATTACKS

        if v is None:
            return v
        lists = v.values() if isinstance(v, dict) else [v]
        if any(len(names) == 0 for names in lists):
            raise ValueError("every list of attacks must name at least one attack")
        unknown = sorted({a for names in lists for a in names if a not in ATTACKS})
        if unknown:
            raise ValueError(f"unknown attack(s) {unknown}; choose from {sorted(ATTACKS)}")
        return v

    def for_norm(self, p: float) -> list[str]:
        """The attacks run to measure ρ in the norm ``p``."""
        from salign.attacks.ensemble import DEFAULT_ATTACKS

        if self.names is None:
            return list(DEFAULT_ATTACKS[float(p)])
        if isinstance(self.names, dict):
            return list(self.names[str(norm_text(p))])
        return list(self.names)

    def check_norms(self, norms: list[float]) -> None:
        """ValueError (one line) unless every norm has attacks and every attack minimises its norm."""
        from salign.attacks.ensemble import ATTACKS

        if self.names is None:
            return
        if isinstance(self.names, dict):
            wanted = {str(norm_text(p)) for p in norms}
            if set(self.names) != wanted:
                raise ValueError(
                    f"attacks.names has lists for the norms {sorted(self.names)} but evaluation.norms "
                    f"is {sorted(wanted)}; give one list per evaluated norm"
                )
        for p in norms:
            for name in self.for_norm(p):
                able = ATTACKS[name].norms
                if p not in able:
                    raise ValueError(
                        f"attacks.names: {name} does not minimise the norm {norm_text(p)} of "
                        f"evaluation.norms (it supports {', '.join(str(norm_text(q)) for q in able)}); "
                        "remove it, or give one list per norm (names: {2: [...], inf: [...]})"
                    )


class ReportConfig(_Strict):
    """Statistics and extras of the report.

    ``interactive_samples``: the first K samples of the evaluation subset of each model get
    their views saved by the evaluation (``eval/<model>.views.npz``: image, saliency map and
    adversarial perturbation, at most 64 pixels a side, uint8/float16), which the interactive
    scatter of ``report.html`` shows on a click; every sample gets a point. ``interactive_mb``
    caps the megabytes of thumbnails embedded in the page (samples in order, every model's views
    of a sample together, until the cap; lowered to what the rest of the page leaves of 9.5 MB),
    so the sample images never push the page over 10 MB, whatever their size and the number of
    models (docs/benchmarks.md, "Interactive report size").
    """

    n_bootstrap: int = Field(default=2000, ge=100)
    level: float = Field(default=0.95, gt=0, lt=1)
    linear_sanity: bool = True
    figures: bool = Field(default=True, description="draw the PNG figures (false: tables and HTML only)")
    interactive_samples: int = Field(default=200, ge=0)
    interactive_mb: float = Field(default=2.0, ge=0)


class ExperimentConfig(_Strict):
    """A whole study. See the module docstring for an example."""

    name: str
    description: str = ""
    seed: int = Field(default=0, ge=0)
    output_dir: str = "runs"
    num_threads: int | None = Field(default=None, ge=1)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelSpec = Field(default_factory=ModelSpec)
    training: TrainConfig | None = None
    sweep: SweepConfig | None = None
    models: list[ArmConfig] = Field(default_factory=list)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    attacks: AttackConfig = Field(default_factory=AttackConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"name must be letters, digits, '.', '_' or '-' (it names a directory), got {v!r}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> ExperimentConfig:
        self.attacks.check_norms(self.evaluation.norms)
        trained_arms = [m.tag for m in self.models if m.adversarial is not None]
        if self.training is not None and self.sweep is None and not trained_arms:
            raise ValueError(
                "'training' needs a 'sweep' with the λ values to train (sweep: {lambdas: [...]}) "
                "or adversarial-training arms in 'models'"
            )
        if trained_arms and self.training is None:
            raise ValueError(
                f"models[{trained_arms[0]}]: an adversarial-training arm is trained with the study's "
                "'training' section, and this study has none"
            )
        if self.training is None and self.sweep is not None:
            raise ValueError("'sweep' needs a 'training' section (or remove 'sweep' to evaluate one model)")
        if self.models and self.training is None and "model" in self.model_fields_set:
            raise ValueError(
                "'model' is the λ sweep's architecture, and this study has no sweep; "
                "put the model into the 'models' list with a tag"
            )
        self._check_tags()
        if self.training is not None:
            if self.model.checkpoint is not None:
                raise ValueError(
                    "model.checkpoint is for evaluating a given model; remove it or 'training' "
                    "(to fine-tune from pretrained weights, give model.weights)"
                )
            if self.model.weights is not None and "weights" in self.model.kwargs:
                raise ValueError("give the weights once: model.weights or model.kwargs.weights, not both")
            if "model" in self.training.model_fields_set:
                raise ValueError(
                    "set the architecture in the top-level 'model' section, not in 'training.model'"
                )
            if "lambda_" in self.training.regularizer.model_fields_set:
                raise ValueError("set λ in 'sweep.lambdas', not in 'training.regularizer.lambda'")
            if self.training.adversarial.method != "none":
                raise ValueError(
                    "set adversarial training per arm in 'models' (adversarial: {method: pgd_l2, "
                    "epsilon: ...}), not in 'training.adversarial'"
                )
        return self

    def _check_tags(self) -> None:
        """Every arm's tag names its own files: unique, also ignoring case (macOS and Windows
        file systems do), and no listed tag equal to a λ tag."""
        from salign.report.rundata import lambda_tag

        seen: dict[str, str] = {}
        sweep = [lambda_tag(lam) for lam in self.sweep.lambdas] if self.sweep is not None else []
        for tag in sweep + [m.tag for m in self.models]:
            if tag.lower() in seen:
                same = "" if seen[tag.lower()] == tag else f" (as {seen[tag.lower()]!r}, ignoring case)"
                raise ValueError(f"models: tag {tag!r} is used twice{same}; every model needs its own tag")
            seen[tag.lower()] = tag

    def arms(self) -> list[Arm]:
        """Every model of the study, in report order: the λ sweep's (tag = λ, trained; increasing
        λ), then the ``models`` list's (as listed). A study with neither evaluates its one
        ``model`` (tag ``pretrained``)."""
        from salign.report.rundata import lambda_tag

        arms = [Arm(lambda_tag(lam), lam, train=self.train_config(lam)) for lam in self.sweep_lambdas()]
        for entry in self.models:
            if entry.adversarial is not None:
                arms.append(Arm(entry.tag, train=self.train_config(0.0, adversarial=entry.adversarial)))
            else:
                arms.append(
                    Arm(
                        entry.tag,
                        spec=entry.spec,
                        weights=entry.weights,
                        kwargs=dict(entry.kwargs),
                        listed=True,
                    )
                )
        if not arms:
            m = self.model
            spec = m.checkpoint if m.checkpoint is not None else m.name
            kwargs = {} if m.checkpoint is not None else dict(m.kwargs)
            arms.append(Arm(lambda_tag(None), spec=spec, weights=m.weights, kwargs=kwargs))
        return arms

    def sweep_lambdas(self) -> list[float]:
        """The sweep's λ values in increasing order (empty without a sweep)."""
        return list(self.sweep.lambdas) if self.sweep is not None else []

    @property
    def trains(self) -> bool:
        """True when the study trains (a λ sweep, adversarial arms; False: it only evaluates
        given models)."""
        return self.training is not None

    def lambdas(self) -> list[float | None]:
        """The sweep's λ values in increasing order (``[None]`` for a study of one given model)."""
        if self.sweep is not None:
            return list(self.sweep.lambdas)
        return [] if self.models else [None]

    def train_config(self, lam: float, *, adversarial: AdversarialConfig | None = None) -> TrainConfig:
        """The trainer's config for the model with penalty weight ``lam``, or for the
        adversarial-training arm ``adversarial`` (then λ = 0).

        Model, seed and (unless ``training.data`` names them) dataset name and directory come
        from the top-level sections; λ and the method from ``sweep``.
        """
        if self.training is None:
            raise ConfigError("this study has no training section")
        overrides: dict[str, Any] = {
            "model.name": self.model.name,
            "model.kwargs": dict(self.model.kwargs),
            "model.weights": self.model.weights,  # fine-tuning: every arm starts from these weights
            "regularizer.lambda": float(lam),
        }
        if self.sweep is not None:
            overrides["regularizer.method"] = self.sweep.method
        if adversarial is not None:
            overrides["regularizer.lambda"] = 0.0
            overrides["adversarial"] = adversarial.model_dump()
        if "seed" not in self.training.model_fields_set:
            overrides["seed"] = self.seed
        data_set = self.training.data.model_fields_set
        if "name" not in data_set:
            overrides["data.name"] = self.dataset.name
        if "data_dir" not in data_set:
            overrides["data.data_dir"] = self.dataset.data_dir
        if self.num_threads is not None and "num_threads" not in self.training.model_fields_set:
            overrides["num_threads"] = self.num_threads
        return self.training.with_overrides(**overrides)

    def run_dir(self, out: str | os.PathLike[str] | None = None) -> Path:
        """``out`` if given, else ``output_dir/name``."""
        return Path(out) if out is not None else Path(self.output_dir) / self.name

    def to_dict(self) -> dict[str, Any]:
        """JSON/YAML-safe dict with aliases (``lambda``), exactly re-loadable by :func:`config_from_dict`."""
        data = self.model_dump(
            mode="json",
            by_alias=True,
            # these two are set by the study, not the training section (see train_config)
            exclude={"training": {"model": True, "regularizer": {"lambda_": True}}},
        )
        return data


def _where(loc: tuple[Any, ...], data: Any) -> str:
    """The dotted key of an error; an entry of ``models`` is named by its tag (``models[mine].weights``),
    or by its position when it has none (``models[#2].tag``)."""
    parts = [str(p) for p in loc]
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int) and isinstance(data, dict):
        entries = data.get("models")
        entry = entries[loc[1]] if isinstance(entries, list) and loc[1] < len(entries) else None
        tag = entry.get("tag") if isinstance(entry, dict) else None
        name = tag if isinstance(tag, str) and tag else f"#{loc[1] + 1}"
        parts[:2] = [f"models[{name}]"]
    return ".".join(parts) or "(root)"


def _format_errors(exc: ValidationError, source: str, data: Any = None) -> str:
    parts = []
    for err in exc.errors():
        loc = _where(tuple(err["loc"]), data)
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key {loc!r}")
        elif err["type"] == "missing":
            parts.append(f"missing required key {loc!r}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(msg if loc == "(root)" else f"{loc}: {msg}")
    return f"invalid experiment config{source}: " + "; ".join(parts)


def config_from_dict(data: Any, *, source: str = "") -> ExperimentConfig:
    """Validate a mapping as an :class:`ExperimentConfig`; errors name the offending key."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid experiment config{source}: expected a mapping, got {type(data).__name__}")
    # A run's resolved config.yaml records its environment; those sections are not settings.
    data = {k: v for k, v in data.items() if k not in RECORD_KEYS}
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, source, data)) from None
    except ConfigError as exc:
        raise ConfigError(f"invalid experiment config{source}: {exc}") from None


def load_config(path: str | os.PathLike[str]) -> ExperimentConfig:
    """Read and validate an experiment YAML file.

    Raises:
        MissingFileError: the file does not exist.
        ConfigError: YAML syntax errors (with line and column), unknown keys, wrong types or values.
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
    return config_from_dict(data, source=f" {p}")


def packaged_config(name: str) -> Path:
    """Path of a config shipped inside the package (``salign/configs/<name>.yaml``)."""
    here = Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml"
    if not here.is_file():
        raise MissingFileError(f"no packaged config {name!r} (looked for {here})")
    return here

"""One attack run: the engine behind every public attack and every run of :func:`robustness`.

An attack is a frozen dataclass of its options (a subclass of :class:`Attack`) whose
:meth:`Attack.iterate` runs the paper's iterations on a :class:`~salign.attacks._tracker.Tracker`.
:func:`attack_chunk` runs one attack on one chunk of already validated inputs: the iterations,
then the optional line search and polish, then verification, and returns the chunk's
:class:`AttackResult`. :meth:`Attack.__call__` validates the arguments, sets eval mode and frozen
parameters, and calls :func:`attack_chunk` chunk by chunk.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor, nn

from salign._norms import norm_label, parse_norm
from salign._validation import eval_mode
from salign.attacks._model import Chunk, CountingModel, chunks, clean_forward, frozen_parameters, prepare
from salign.attacks._ops import check_positive
from salign.attacks._refine import refine, verify
from salign.attacks._tracker import Tracker
from salign.attacks.result import FLAG_NAMES, AttackResult, concat_results
from salign.errors import InputError

#: What each sanity flag means, for the warning that reports it.
FLAG_MESSAGES = {
    "zero_gradient": "zero or non-finite input gradients at some step (gradient masking or saturated "
    "loss); a random direction was used",
    "nonfinite_logits": "the model returned NaN/Inf logits at some visited point",
    "not_found": "no verified adversarial point found (success rate below 100%)",
    "nondeterministic": "two verification forwards disagree: the model is non-deterministic",
    "worse_than_deepfool": "an attack ended more than 0.1% farther from x than DeepFool (weak attack or budget)",
}


@dataclass(frozen=True)
class Start:
    """Where a run starts: points ``adv`` (n, ...) and, if they are known verified adversarial
    points (the ensemble's best so far), their distances (+inf where there is none): the run's
    result can then only improve on them."""

    adv: Tensor
    distance: Tensor | None = None


@dataclass(frozen=True)
class Refinement:
    """What happens to a run's best points after its iterations (all off by default: the papers'
    algorithms return their best iterate).

    Attributes:
        line_search_steps: bisection steps moving each best point onto the boundary along the
            segment from x (0: off).
        polish_steps: rounds of one DeepFool step from x with the gradients taken at the best
            point, then a line search (each round: 1 forward, up to 9 backwards,
            ``line_search_steps`` forwards per sample; needs ``line_search_steps > 0``).
        levels: quantise adversarial points to this many levels (e.g. 256) and verify after
            quantisation.
    """

    line_search_steps: int = 0
    polish_steps: int = 0
    levels: int | None = None

    def __post_init__(self) -> None:
        check_positive(self.line_search_steps, "line_search_steps", integer=True, allow_zero=True)
        check_positive(self.polish_steps, "polish_steps", integer=True, allow_zero=True)
        levels = self.levels
        if levels is not None and (isinstance(levels, bool) or not isinstance(levels, int) or levels < 2):
            raise InputError(f"levels must be an integer >= 2 (e.g. 256) or None, got {levels!r}")


def checked_norm(name: str, norms: tuple[float, ...], norm: object) -> float:
    """``norm`` as 1.0, 2.0 or inf; an InputError if the attack ``name``, which minimises the
    ``norms``, does not minimise it (the message lists the registered attacks that do)."""
    p = parse_norm(norm)
    if p not in norms:
        from salign.attacks.ensemble import ATTACKS  # the registry imports every attack

        supported = " or ".join(norm_label(q) for q in norms)
        able = ", ".join(n for n, cls in ATTACKS.items() if p in cls.norms)
        raise InputError(
            f"{name} minimises the {supported} norm only, not norm={p:g}; for {norm_label(p)} use {able}, "
            "or robustness(..., norm=...)"
        )
    return p


class Attack:
    """Base class of the attacks' option dataclasses.

    A subclass is a frozen dataclass whose fields are the attack's options (with the paper's
    defaults), whose ``__post_init__`` checks them, and whose :meth:`iterate` runs the
    iterations. Calling an instance attacks a batch (see :meth:`__call__`).
    """

    name: ClassVar[str]
    #: whether :meth:`iterate` accepts a warm start
    accepts_start: ClassVar[bool] = True
    #: the Lp norms the attack minimises (its ``norm`` option, if it has one)
    norms: ClassVar[tuple[float, ...]] = (2.0,)

    def _parse_norm(self) -> None:
        """Set the ``norm`` option to its float (1, 2 or inf), checked against :attr:`norms`;
        for subclasses' ``__post_init__``."""
        object.__setattr__(self, "norm", checked_norm(self.name, self.norms, getattr(self, "norm", 2.0)))

    @property
    def distance_norm(self) -> float:
        """The norm this attack minimises and its result's distances are measured in."""
        return float(getattr(self, "norm", 2.0))

    def applies_to(self, num_classes: int) -> bool:
        """Whether the attack can run on a model with ``num_classes`` logits (the ensemble skips
        a run that cannot; a direct call raises in :meth:`iterate`)."""
        return True

    def iterate(self, model: nn.Module, tracker: Tracker, start: Tensor | None) -> None:
        """Run the attack's iterations on the active samples of ``tracker``, reporting every
        visited point to it."""
        raise NotImplementedError

    @classmethod
    def attack(cls, model: nn.Module, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> AttackResult:
        """``cls(**options)(model, x, labels, **settings)``, splitting ``kwargs`` into the
        attack's options (its fields) and the run settings of :meth:`__call__`."""
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if "norm" in kwargs and "norm" not in names:
            checked_norm(cls.name, cls.norms, kwargs.pop("norm"))
        settings = {"start", "line_search_steps", "polish_steps", "levels", "patience", "batch_size", "warn"}
        unknown = sorted(set(kwargs) - names - settings)
        if unknown:
            raise InputError(
                f"{cls.name}: unknown option(s) {unknown}; its options are {sorted(names)} and the "
                f"run settings {sorted(settings)}"
            )
        attack = cls(**{k: v for k, v in kwargs.items() if k in names})
        return attack(model, x, labels, **{k: v for k, v in kwargs.items() if k not in names})

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        labels: Tensor | None = None,
        *,
        start: Tensor | None = None,
        line_search_steps: int = 0,
        polish_steps: int = 0,
        levels: int | None = None,
        patience: int | None = None,
        batch_size: int | None = None,
        warn: bool = True,
    ) -> AttackResult:
        """Attack ``x`` away from ``labels`` and return the verified :class:`AttackResult`.

        Args:
            model: classifier returning logits (N, K) for inputs in [0, 1]; its train/eval mode
                and parameters' ``requires_grad`` flags are restored afterwards.
            x: inputs (N, C, H, W) or (N, D) in [0, 1].
            labels: classes (N,) to move away from; ``None`` uses the predicted class. Samples
                already misclassified get distance 0.
            start: optional warm start (N, ...), for attacks that take one.
            line_search_steps, polish_steps, levels: see :class:`Refinement` (off by default).
            patience: early exit: every ``patience`` steps, a sample whose best distance improved
                by less than 0.1% jumps to the last ``patience`` steps of the step-size schedule
                (restarting from its best point) or, if already there, stops (``None``: run all
                steps).
            batch_size: process the inputs in chunks of this size (memory).
            warn: warn once per non-zero sanity flag.
        """
        if start is not None and not self.accepts_start:
            raise InputError(f"{self.name} does not take a warm start (start=...)")
        if patience is not None:
            check_positive(patience, "patience", integer=True)
        refinement = Refinement(line_search_steps, polish_steps, levels)
        model, x, labels, start = prepare(model, x, labels, levels=levels, start=start)
        parts = []
        with eval_mode(model), frozen_parameters(model):
            for chunk in chunks(x.shape[0], batch_size):
                clock = time.perf_counter()
                counted = CountingModel(model)
                batch = clean_forward(counted, x[chunk], None if labels is None else labels[chunk])
                begin = None if start is None else Start(start[chunk])
                result, _ = attack_chunk(
                    self, counted, batch, begin, patience=patience, refinement=refinement
                )
                parts.append(
                    dataclasses.replace(
                        result,
                        forwards=counted.forwards,
                        backwards=counted.backwards,
                        seconds=time.perf_counter() - clock,
                    )
                )
        result = concat_results(parts)
        if warn:
            warn_flags(self.name, result.flags, len(result))
        return result


def attack_chunk(
    attack: Attack,
    model: CountingModel,
    chunk: Chunk,
    start: Start | None = None,
    *,
    only: Tensor | None = None,
    patience: int | None = None,
    refinement: Refinement = Refinement(),
    polish_from: Start | None = None,
) -> tuple[AttackResult, dict[str, Tensor]]:
    """Run ``attack`` once on a validated chunk: iterate, refine, verify.

    ``start``: passed to the iterations; if it carries distances, the tracker starts from it.
    ``only``: iterate and line-search on these samples only (the others keep the start's
    verified points, which ``start`` must then carry). ``polish_from``: verified points merged
    into the best points before the refinement, which then covers every sample (the ensemble's
    final polish starts from the best point over every run). Returns the verified result (costs
    of this run only) and the per-sample sanity flags.
    """
    clock, forwards, backwards = time.perf_counter(), model.forwards, model.backwards
    x, labels, attacked = chunk.x, chunk.labels, chunk.attacked
    if only is not None and (start is None or start.distance is None):
        raise ValueError("attack_chunk(only=...) needs a start with verified distances")
    iterated = attacked if only is None else attacked & only
    tracker = Tracker(x, labels, iterated, patience=patience, norm=attack.distance_norm)
    if start is not None and start.distance is not None:
        tracker.seed(start.adv, start.distance)
    attack.iterate(model, tracker, None if start is None else start.adv)
    refined = only
    if polish_from is not None and polish_from.distance is not None:
        tracker.absorb(polish_from.adv, polish_from.distance)
        refined = None  # the final polish covers every sample
    refine(model, tracker, refinement.line_search_steps, refinement.levels, refinement.polish_steps, refined)
    verified = verify(model, x, tracker.best_adv, labels, chunk.clean_class, refinement.levels, tracker.norm)
    verified["distance"][~attacked] = 0
    verified["success"][~attacked] = True
    per_sample = {
        "zero_gradient": tracker.zero_gradient,
        "nonfinite_logits": tracker.nonfinite,
        "not_found": ~verified["success"],
        "nondeterministic": verified["nondeterministic"],
    }
    result = AttackResult(
        adv=verified["adv"],
        distance=verified["distance"],
        success=verified["success"],
        adv_class=verified["adv_class"],
        labels=labels,
        forwards=model.forwards - forwards,
        backwards=model.backwards - backwards,
        seconds=time.perf_counter() - clock,
        flags=count_flags(per_sample),
        norm=tracker.norm,
    )
    return result, per_sample


def count_flags(per_sample: dict[str, Tensor]) -> dict[str, int]:
    """Sanity-flag counts (every name of ``FLAG_NAMES``) from per-sample boolean flags."""
    return {name: int(per_sample[name].sum()) if name in per_sample else 0 for name in FLAG_NAMES}


def warn_flags(name: str, flags: dict[str, int], n: int) -> None:
    """Warn once per non-zero sanity flag; never silent."""
    for key, count in flags.items():
        if count:
            warnings.warn(
                f"{name}: {count} of {n} samples: {FLAG_MESSAGES[key]}", RuntimeWarning, stacklevel=4
            )

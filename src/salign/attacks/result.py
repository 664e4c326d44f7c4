"""The result of a minimal-norm attack: verified adversarial points, distances and costs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

#: Names of the sanity flags every result carries (AutoAttack-style indicators of failure).
FLAG_NAMES = (
    "zero_gradient",  # samples where the input gradient vanished at some step (masking, saturation)
    "nonfinite_logits",  # samples where the model returned NaN/Inf logits at some visited point
    "not_found",  # samples without a verified adversarial point (success rate below 100%)
    "nondeterministic",  # samples whose two verification forwards disagree
    "worse_than_deepfool",  # samples where an attack ended farther than DeepFool (ensemble only)
)


@dataclass(frozen=True)
class AttackResult:
    """Per-sample outcome of a minimal-norm attack (or of the ensemble :func:`robustness`).

    Attributes:
        adv: adversarial points, same shape as the inputs, in [0, 1]; equal to the input where
            no adversarial point was found.
        distance: ``‖adv − x‖_p`` per sample (p = ``norm``), ``+inf`` where nothing was found and ``0`` where
            the input is already misclassified with respect to ``labels``.
        success: per-sample bool, verified by re-forwarding the clamped (and, if asked,
            quantised) ``adv`` twice through the model: both forwards must predict a class other
            than ``labels``.
        adv_class: class predicted at ``adv`` by the verification forward.
        labels: the class each sample was attacked away from.
        forwards: per-sample forward passes spent, counted by a wrapper around the model (a
            forward of a batch of ``n`` counts ``n``); includes line search and verification.
        backwards: per-sample backward passes through the model's output, counted by a hook.
        seconds: wall-clock time.
        best_attack: for the ensemble, the name of the attack that found each sample's minimum
            (``None`` entries where nothing was found); ``None`` for a single attack.
        per_attack: for the ensemble, each attack's own verified result; ``None`` otherwise.
        flags: sanity-flag counts (see ``FLAG_NAMES``); every non-zero count is also warned.
        norm: the Lp norm of ``distance`` (2, 1 or ``inf``).
    """

    adv: Tensor
    distance: Tensor
    success: Tensor
    adv_class: Tensor
    labels: Tensor
    forwards: int
    backwards: int
    seconds: float
    best_attack: list[str | None] | None = None
    per_attack: dict[str, AttackResult] | None = None
    flags: dict[str, int] = field(default_factory=dict)
    norm: float = 2.0

    def __len__(self) -> int:
        return int(self.distance.shape[0])

    @property
    def success_rate(self) -> float:
        """Fraction of samples with a verified adversarial point."""
        return float(self.success.float().mean())

    def median(self) -> float:
        """Median distance over all samples (``inf`` counts as larger than everything)."""
        return float(self.distance.double().median())

    def to_dict(self) -> dict[str, Any]:
        """Per-sample columns as lists (distance, success, adv_class, label, best_attack, and
        each attack's distance as ``distance_<name>``), ready for ``pandas.DataFrame``."""
        columns: dict[str, Any] = {
            "distance": self.distance.detach().cpu().double().tolist(),
            "success": self.success.detach().cpu().tolist(),
            "adv_class": self.adv_class.detach().cpu().tolist(),
            "label": self.labels.detach().cpu().tolist(),
        }
        if self.best_attack is not None:
            columns["best_attack"] = list(self.best_attack)
        for name, res in (self.per_attack or {}).items():
            columns[f"distance_{name}"] = res.distance.detach().cpu().double().tolist()
        return columns

    def to_frame(self) -> Any:
        """The per-sample columns of :meth:`to_dict` as a ``pandas.DataFrame``."""
        import pandas as pd

        return pd.DataFrame(self.to_dict())


def concat_results(parts: list[AttackResult]) -> AttackResult:
    """Join results of consecutive chunks of one batch (sample order kept, costs summed)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    per_attack = None
    if first.per_attack is not None:
        per_attack = {name: concat_results([p.per_attack[name] for p in parts]) for name in first.per_attack}  # type: ignore[index]
    best = None
    if first.best_attack is not None:
        best = [b for p in parts for b in (p.best_attack or [])]
    flags = {k: sum(p.flags.get(k, 0) for p in parts) for k in first.flags}
    return dataclasses.replace(
        first,
        adv=torch.cat([p.adv for p in parts]),
        distance=torch.cat([p.distance for p in parts]),
        success=torch.cat([p.success for p in parts]),
        adv_class=torch.cat([p.adv_class for p in parts]),
        labels=torch.cat([p.labels for p in parts]),
        forwards=sum(p.forwards for p in parts),
        backwards=sum(p.backwards for p in parts),
        seconds=sum(p.seconds for p in parts),
        best_attack=best,
        per_attack=per_attack,
        flags=flags,
    )

"""Minimal-norm attacks (L2; DeepFool, FMN and FAB also L∞ and L1), APGD at a fixed radius, and the
verified ensemble that estimates ρ(x).

Each attack is a frozen dataclass of its options with the paper's defaults (:class:`DDN`,
:class:`FMN`, :class:`ALMA`, :class:`DeepFool`, :class:`CarliniWagner`, :class:`FAB`, :class:`APGD`), callable on a batch,
and a function of the same name (``ddn(model, x, labels, **options)``). Every call returns a
new :class:`AttackResult` whose success is verified by re-forwarding the adversarial points.
:func:`robustness` runs a plan of tuned attacks (:func:`default_plan`) and keeps the per-sample minimum,
with warm starts, early exit, cost accounting and sanity flags.
"""

from __future__ import annotations

from salign.attacks._engine import Attack, Refinement
from salign.attacks._model import CountingModel
from salign.attacks.alma import ALMA, alma
from salign.attacks.apgd import APGD, apgd
from salign.attacks.carlini_wagner import CarliniWagner, carlini_wagner
from salign.attacks.ddn import DDN, ddn
from salign.attacks.deepfool import DeepFool, deepfool
from salign.attacks.ensemble import (
    ATTACKS,
    BUDGETS,
    DEFAULT_ATTACKS,
    TUNED,
    PlannedRun,
    default_plan,
    robustness,
    tuned_attack,
)
from salign.attacks.fab import FAB, fab
from salign.attacks.fmn import FMN, fmn
from salign.attacks.result import FLAG_NAMES, AttackResult

__all__ = [
    "ALMA",
    "APGD",
    "ATTACKS",
    "BUDGETS",
    "DDN",
    "DEFAULT_ATTACKS",
    "FAB",
    "FLAG_NAMES",
    "FMN",
    "TUNED",
    "Attack",
    "AttackResult",
    "CarliniWagner",
    "CountingModel",
    "DeepFool",
    "PlannedRun",
    "Refinement",
    "alma",
    "apgd",
    "carlini_wagner",
    "ddn",
    "deepfool",
    "default_plan",
    "fab",
    "fmn",
    "robustness",
    "tuned_attack",
]

"""Minimal-norm L2 attacks and the verified ensemble that estimates ρ(x).

One pure, batched function per attack (each returns an :class:`AttackResult` whose success is
verified by re-forwarding the adversarial points), and :func:`robustness`, the per-sample
minimum over an ensemble with warm starts, early exit, cost accounting and sanity flags.
"""

from __future__ import annotations

from salign.attacks._core import CountingModel
from salign.attacks.alma import alma
from salign.attacks.carlini_wagner import carlini_wagner
from salign.attacks.ddn import ddn
from salign.attacks.deepfool import deepfool
from salign.attacks.ensemble import ATTACKS, BUDGETS, robustness
from salign.attacks.fmn import fmn
from salign.attacks.result import FLAG_NAMES, AttackResult

__all__ = [
    "ATTACKS",
    "BUDGETS",
    "FLAG_NAMES",
    "AttackResult",
    "CountingModel",
    "alma",
    "carlini_wagner",
    "ddn",
    "deepfool",
    "fmn",
    "robustness",
]

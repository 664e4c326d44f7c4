"""The Lp norms salign measures in (1, 2, ∞) and their duals, shared by the quantities and the
attacks (docs/theory.md, "Other norms")."""

from __future__ import annotations

import math

from salign.errors import InputError

#: The norms salign knows (1 / p + 1 / q = 1 pairs them with their duals: 1 ↔ ∞, 2 ↔ 2).
NORMS: tuple[float, ...] = (1.0, 2.0, math.inf)


def parse_norm(norm: object, name: str = "norm") -> float:
    """``norm`` as a float among :data:`NORMS`: 1, 2 or inf (numbers, or the strings "1", "2",
    "inf", "linf", "l1", "l2"); anything else is an InputError naming it."""
    aliases = {"1": 1.0, "l1": 1.0, "2": 2.0, "l2": 2.0, "inf": math.inf, "linf": math.inf}
    if isinstance(norm, str) and norm.strip().lower() in aliases:
        return aliases[norm.strip().lower()]
    if not isinstance(norm, bool) and isinstance(norm, (int, float)) and float(norm) in NORMS:
        return float(norm)
    raise InputError(f"{name} must be 1, 2 or inf (float('inf') or 'inf'), got {norm!r}")


def norm_label(p: float) -> str:
    """``L2``, ``L∞`` or ``L1``: the norm in messages, figure labels and the reading."""
    return "L∞" if math.isinf(p) else f"L{p:g}"


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (∞ for p = 1, 1 for p = ∞)."""
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1)

"""Held-out check (MNIST test images 1000–1099) of where the L2 ensemble starts ALMA: warm-started
from the best point so far (the default until commit 8431d19), from x, both runs, or from x with the
restart chain's short ALMA warm-started from the best point so far in place of the chain's best
point (the default since, ``salign.attacks.ensemble.ALMA_FROM_X``).

Prints, per variant, the median ÷ the median of the per-sample best over the three variants,
the shares within 1% and 0.1% of that best, the worst sample, and the forwards per sample.
Per-sample distances are kept in benchmarks/.cache/alma_start_NAME.json (a variant found there is
not run again); the findings are in docs/benchmarks/attacks.md.

    .venv/bin/python benchmarks/alma_start_check.py plain     # and gradreg, in parallel
    .venv/bin/python benchmarks/alma_start_check.py plain 1   # L1: as it is, and with the L2 swap
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import salign
from bench_attacks import CACHE, get_model
from salign.attacks import DEFAULT_ATTACKS, ensemble, robustness
from salign.attacks.ensemble import BUDGETS, PlannedRun, default_plan


def variants() -> dict[str, list[PlannedRun]]:
    """The standard L2 plan with ALMA warm-started from the best point so far and its short run
    from the chain's (the default until commit 8431d19), with ALMA from x instead, with both long
    ALMA runs, and with ALMA from x and its short run from the best point so far (the default
    since: ensemble.ALMA_FROM_X)."""
    plan = default_plan(DEFAULT_ATTACKS[2.0], "standard", BUDGETS["standard"][0], "auto", 2.0)
    labels = [r.label for r in plan]
    i, k = labels.index("alma"), labels.index("alma_short")
    warm = dataclasses.replace(plan[i], start="best", polish="none")
    cold = dataclasses.replace(plan[i], start="x", polish="own")
    short_chain = dataclasses.replace(plan[k], start="chain")
    short_best = dataclasses.replace(plan[k], start="best")
    today = [*plan[:i], warm, *plan[i + 1 : k], short_chain, *plan[k + 1 :]]
    return {
        "warm (default)": today,
        "from x": [*plan[:i], cold, *plan[i + 1 : k], short_chain, *plan[k + 1 :]],
        "both": [
            *plan[:i],
            warm,
            dataclasses.replace(cold, label="alma_cold"),
            *plan[i + 1 : k],
            short_chain,
            *plan[k + 1 :],
        ],
        "from x, short warm": [*plan[:i], cold, *plan[i + 1 : k], short_best, *plan[k + 1 :]],
    }


def l1_variants() -> dict[str, list[PlannedRun]]:
    """The standard L1 plan as it is (ALMA warm-started, its short run from the chain's best
    point) and with ALMA's starts swapped as in L2 (ensemble.ALMA_FROM_X)."""
    args = (DEFAULT_ATTACKS[1.0], "standard", BUDGETS["standard"][0], "auto", 1.0)
    today = default_plan(*args)
    saved = ensemble.ALMA_FROM_X
    ensemble.ALMA_FROM_X = frozenset({*saved, 1.0})
    try:
        swapped = default_plan(*args)
    finally:
        ensemble.ALMA_FROM_X = saved
    return {"warm (default)": today, "from x, short warm": swapped}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "plain"
    l1 = len(sys.argv) > 2 and sys.argv[2] == "1"
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    model = get_model(0.0 if name == "plain" else 1.0, 1)
    x = salign.data.load("mnist", "test")[0][1000:1100]
    path = CACHE / f"alma_start_{name}{'_L1' if l1 else ''}.json"
    out: dict[str, dict[str, object]] = json.loads(path.read_text()) if path.exists() else {}
    for tag, plan in (l1_variants() if l1 else variants()).items():
        if tag in out:
            continue
        start = time.perf_counter()
        result = robustness(model, x, norm=1.0 if l1 else 2.0, plan=plan, quiet=True, batch_size=50)
        out[tag] = {
            "distance": result.distance.tolist(),
            "forwards": result.forwards / len(x),
            "seconds": time.perf_counter() - start,
        }
        path.write_text(json.dumps(out))
    distances = {tag: torch.tensor(v["distance"]) for tag, v in out.items()}
    best = torch.stack(list(distances.values())).min(0).values
    for tag, d in distances.items():
        ratio = d / best
        print(
            f"{name} {tag}: median ÷ best {float(d.median() / best.median()):.4f}, within 1% "
            f"{float((ratio <= 1.01).float().mean()):.0%}, within 0.1% {float((ratio <= 1.001).float().mean()):.0%}, "
            f"worst {float(ratio.max()):.3f}, forwards/sample {out[tag]['forwards']:.0f}"
        )


if __name__ == "__main__":
    main()

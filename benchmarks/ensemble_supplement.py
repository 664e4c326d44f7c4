"""Supplementary to bench_attacks.py: `robustness` (standard and fast budgets) on its 200 images.

Prints one JSON line per budget (median ρ, seconds, forwards/backwards per sample, per-attack
medians), to compare the current ensemble with a cached bench_attacks.py run's envelope median.

    .venv/bin/python benchmarks/ensemble_supplement.py plain                 # or: gradreg
    .venv/bin/python benchmarks/ensemble_supplement.py gradreg thorough 2    # budgets, threads
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import salign
from bench_attacks import get_model
from salign.attacks import robustness


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "plain"
    budgets = sys.argv[2].split(",") if len(sys.argv) > 2 else ["standard", "fast"]
    torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
    model = get_model(0.0 if name == "plain" else 1.0, 1)
    x, _ = salign.data.load("mnist", "test")
    x = x[:200]
    with torch.no_grad():
        labels = model(x).argmax(1)
    for budget in budgets:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = robustness(model, x, labels, budget=budget, quiet=True)
        row = {
            "model": name,
            "budget": budget,
            "median": float(r.distance.double().median()),
            "seconds": time.perf_counter() - start,
            "fwd_per_sample": r.forwards / len(x),
            "bwd_per_sample": r.backwards / len(x),
            "per_attack_median": {k: float(v.distance.double().median()) for k, v in r.per_attack.items()},
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

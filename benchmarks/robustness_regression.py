"""Regression check of ``salign.robustness``: per-sample results of one code version against another.

The attack benchmark (bench_attacks.py) scores the ensemble against an envelope of ~50 runs,
which takes hours. When a change should not move the ensemble's numbers at all (a refactor),
this is the cheaper and stricter check: run ``robustness`` (standard budget) on the same two
benchmark SmallNets and test images with the old and the new code, and compare every sample.

    # with the old code on the path, then the new one:
    PYTHONPATH=/path/to/old/src .venv/bin/python benchmarks/robustness_regression.py --out old.json
    .venv/bin/python benchmarks/robustness_regression.py --out new.json
    .venv/bin/python benchmarks/robustness_regression.py --compare old.json new.json

``--attacks`` runs another list than the default one (e.g. the previous default); ``--models``
also takes ``mlp`` and ``mlp-pen``, bench_exact.py's 7×7 MLPs (with ``--first 0 --n 50``, the
points of docs/benchmarks/exact.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

import salign

CACHE = Path(__file__).resolve().parent / ".cache"


def get_model(lam: float) -> torch.nn.Module:
    """bench_attacks.py's SmallNet (1 epoch, seed 0): the committed one (benchmarks/models), or
    from its cache, or trained by it. Read straight from the file when it is there, so that older code (without bench_attacks.py's
    current imports) can run this script too."""
    for folder in (Path(__file__).resolve().parent / "models", CACHE):  # committed first
        path = folder / f"smallnet_lam{lam:g}_ep1.safetensors"
        if path.exists():
            return salign.models.load(path).eval()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_attacks import get_model as train_or_load

    return train_or_load(lam, 1)


#: bench_exact.py's 7×7 MNIST MLPs (49→32→10, 3 epochs; plain and λ = 0.03), whose exact ρ is known.
MLPS = {"mlp": 0.0, "mlp-pen": 0.03}


def get_model_and_inputs(name: str, x: torch.Tensor) -> tuple[torch.nn.Module, torch.Tensor]:
    """A SmallNet (``plain``, ``gradreg``) on ``x``, or an MLP of :data:`MLPS` on ``x`` pooled to 7×7."""
    if name not in MLPS:
        return get_model({"plain": 0.0, "gradreg": 1.0}[name]), x
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_exact import downsample
    from bench_exact import get_model as mlp

    return mlp(7, [32], MLPS[name], 3), downsample(x, 7).contiguous()


def run(
    models: list[str], first: int, n: int, steps: int, budget: str, attacks: list[str] | None = None
) -> dict[str, object]:
    x_all, _ = salign.data.load("mnist", "test")
    out: dict[str, object] = {"salign": salign.__file__, "first": first, "n": n, "steps": steps}
    for name in models:
        model, x = get_model_and_inputs(name, x_all[first : first + n])
        with torch.no_grad():
            labels = model(x).argmax(1)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = salign.robustness(model, x, labels, budget=budget, steps=steps, quiet=True, attacks=attacks)
        seconds = time.perf_counter() - start
        out[name] = {
            "distance": res.distance.double().tolist(),
            "best_attack": res.best_attack,
            "per_attack": {k: r.distance.double().tolist() for k, r in (res.per_attack or {}).items()},
            "forwards": res.forwards,
            "backwards": res.backwards,
            "seconds": seconds,
        }
        print(
            f"{name}: median {float(res.distance.double().median()):.6f} in {seconds:.1f} s", file=sys.stderr
        )
    return out


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    worst = 0.0
    for name in ("plain", "gradreg", *MLPS):
        if name not in a or name not in b:
            continue
        da, db = torch.tensor(a[name]["distance"]), torch.tensor(b[name]["distance"])
        rel = ((db - da).abs() / da.clamp_min(1e-12)).max().item()
        worst = max(worst, rel)
        same = sum(x == y for x, y in zip(a[name]["best_attack"], b[name]["best_attack"], strict=True))
        print(
            f"{name}: median {da.median().item():.6f} -> {db.median().item():.6f} "
            f"(ratio {db.median().item() / da.median().item():.6f}); max relative per-sample change "
            f"{rel:.2e}; identical samples {int((da == db).sum())}/{len(da)}; closer {int((db < da).sum())}, "
            f"farther {int((db > da).sum())}; same winner {same}/{len(da)}; "
            f"forwards {a[name]['forwards']} -> {b[name]['forwards']}, backwards {a[name]['backwards']} -> "
            f"{b[name]['backwards']}; seconds {a[name]['seconds']:.1f} -> {b[name]['seconds']:.1f}"
        )
    return 0 if worst == 0.0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="plain,gradreg")
    parser.add_argument("--first", type=int, default=200)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--budget", default="standard")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--attacks", default=None, help="comma-separated attacks (default: robustness's)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("OLD", "NEW"))
    args = parser.parse_args()
    if args.compare:
        raise SystemExit(compare(*args.compare))
    torch.set_num_threads(args.threads)
    attacks = args.attacks.split(",") if args.attacks else None
    result = run(args.models.split(","), args.first, args.n, args.steps, args.budget, attacks)
    if args.out:
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(result))
        tmp.replace(args.out)


if __name__ == "__main__":
    main()

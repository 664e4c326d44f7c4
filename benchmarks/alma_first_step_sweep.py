"""ALMA's first-step distance (``init_lr_distance``, salign.attacks.TUNED) swept on held-out
MNIST test images of a committed benchmark SmallNet: ALMA in L2 as the ensemble runs it (1000
steps, line search, 2 polish rounds) at each distance and with the paper's fixed first learning
rate, against the per-sample best over these runs and ``robustness()``.

    .venv/bin/python benchmarks/alma_first_step_sweep.py plain     # and: gradreg

Prints one line per run (median, seconds), then each run's median ÷ the envelope's median and
its share of samples within 1% of their best; docs/benchmarks/attacks.md, "tuned options".
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch

import bench_attacks as B
import salign
from salign.attacks import robustness
from salign.attacks.ensemble import tuned_attack

DISTANCES = (0.0625, 0.125, 0.25, 0.5, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", choices=("plain", "gradreg"))
    parser.add_argument("--first", type=int, default=1000, help="first held-out MNIST test image")
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = B.get_model(0.0 if args.model == "plain" else 1.0, 1)
    x = salign.data.load("mnist", "test")[0][args.first : args.first + args.n]
    with torch.no_grad():
        labels = model(x).argmax(1)
    runs: dict[str, dict[str, float | None]] = {
        f"alma init {v:g}": {"init_lr_distance": v} for v in DISTANCES
    }
    runs["alma lr 0.1 (paper)"] = {"init_lr_distance": None}
    distances: dict[str, torch.Tensor] = {}
    for label, options in runs.items():
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = tuned_attack("alma", 1000, **options)(model, x, labels, **B.REFINED)
        distances[label] = result.distance.double()
        print(
            f"{label:24s} median {B.median(result.distance):.4f}  {time.perf_counter() - start:.0f} s",
            flush=True,
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        distances["robustness standard"] = robustness(model, x, labels, quiet=True).distance.double()
    envelope = torch.stack(list(distances.values())).amin(0)
    for label, d in distances.items():
        within = float((d <= envelope * 1.01).double().mean())
        print(f"{label:24s} median ÷ envelope {B.median(d) / B.median(envelope):.4f}  within 1% {within:.0%}")


if __name__ == "__main__":
    main()

"""Benchmark: the cost of each attribution method per sample, next to the plain saliency map (issue 18).

SmallNet (untrained: the cost does not depend on the weights) on MNIST test images, one batch,
one CPU thread. Every variant is timed in the same process, interleaved (each repeat runs every
variant once, in a rotated order), and each ratio is taken within one repeat (variant ÷ the
plain saliency ``salign.saliency(model, x, mode="logit")``, one forward and one backward) and
summarised by its median and interquartile range over the repeats. captum's own IG and
SmoothGrad on the raw model are shown beside ours (the wrapper's overhead). Boundary
attributions are timed from a fixed x_b (DeepFool's, computed once before timing: the boundary
quantities add no attack run).

    python benchmarks/bench_attributions.py               # ~7 min on one loaded thread
    python benchmarks/bench_attributions.py --quick       # 3 repeats, batch 16
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

os.environ.setdefault("SALIGN_QUIET", "1")

import salign
from bench_quantities import quartiles, time_interleaved
from salign.attributions import attribute, boundary_attributions

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks" / "attributions.md"
BASE = "saliency(mode='logit')"
READING = (
    "Reading: the cost model is the number of forward+backward passes. IG costs its `n_steps` "
    "passes (plus one at x for the pair), SmoothGrad its `nt_samples`; salign's IG and SmoothGrad "
    "cost what captum's own do on the raw model (the rows side by side), so the one-output wrapper "
    "and the binarized / shift-invariant targets add nothing measurable. `gradient` with the "
    "nearest rival pays the K − 1 backwards of the j* search, as `salign.saliency` does. "
    "`boundary_gradient` is two gradients and two plain forwards; `boundary_attributions` adds one "
    "IG from x_b to that."
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.repeats = 16, 3
    torch.set_num_threads(args.threads)
    from captum.attr import IntegratedGradients, NoiseTunnel, Saliency

    torch.manual_seed(0)
    model = salign.models.build("smallnet").eval()
    x, _ = salign.data.load("mnist", "test")
    x = x[: args.batch]
    n = x.shape[0]
    with torch.no_grad():
        pred = model(x).argmax(1)
    x_b = salign.attacks.deepfool(model, x, warn=False)
    found = int(x_b.success.sum())
    # failed samples cost the same (their rows are NaN'd afterwards); their warning is not news here
    warnings.filterwarnings("ignore", message=".*the attack found no boundary point", category=RuntimeWarning)
    ig, nt = IntegratedGradients(model), NoiseTunnel(Saliency(model))
    v: dict[str, Callable[[], object]] = {
        BASE: lambda: salign.saliency(model, x, pred, mode="logit"),
        "gradient (logit)": lambda: attribute(model, x, "gradient", mode="logit"),
        "gradient (binarized, runner_up)": lambda: attribute(model, x, "gradient", rival="runner_up"),
        "gradient (binarized, nearest: K − 1 backwards)": lambda: attribute(model, x, "gradient"),
        "gradient (log_softmax)": lambda: attribute(model, x, "gradient", mode="log_softmax"),
        "input_x_gradient (logit)": lambda: attribute(model, x, "input_x_gradient", mode="logit"),
        "integrated_gradients (logit, 50 steps)": lambda: attribute(
            model, x, "integrated_gradients", mode="logit"
        ),
        "integrated_gradients (binarized, runner_up, 50 steps)": lambda: attribute(
            model, x, "integrated_gradients", rival="runner_up"
        ),
        "captum IntegratedGradients (50 steps, internal_batch_size = batch)": lambda: ig.attribute(
            x, target=pred, n_steps=50, internal_batch_size=n
        ),
        "smoothgrad (logit, 16 samples)": lambda: attribute(model, x, "smoothgrad", mode="logit"),
        "captum NoiseTunnel(Saliency) (16 samples, batch 1)": lambda: nt.attribute(
            x,
            nt_type="smoothgrad",
            nt_samples=16,
            nt_samples_batch_size=1,
            stdevs=0.15,
            target=pred,
            abs=False,
        ),
        "boundary_gradient (adversarial pair)": lambda: attribute(
            model, x, "boundary_gradient", boundary=x_b
        ),
        "boundary_attributions (all columns, 50 IG steps)": lambda: boundary_attributions(model, x, x_b),
    }
    wall, cpu = time_interleaved(v, args.repeats)
    lines = [
        "| method | median wall ms / sample | wall ratio ÷ saliency (median) | IQR | CPU-time ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in v:
        ratios = [a / b for a, b in zip(wall[name], wall[BASE], strict=True)]
        q1, med, q3 = quartiles(ratios)
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu[BASE], strict=True))
        per = statistics.median(wall[name]) * 1e3 / n
        lines.append(f"| {name} | {per:.3f} | {med:.2f} | {q1:.2f}–{q3:.2f} | {cpu_ratio:.2f} |")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    command = "python benchmarks/bench_attributions.py" + (" " + " ".join(argv) if argv else "")
    text = "\n".join(
        [
            "## Attributions: cost per sample next to the plain saliency map (issue 18)",
            "",
            f"Command: `{command}` — {datetime.date.today()}, torch {torch.__version__}, "
            f"{platform.machine()} CPU, {args.threads} thread(s), load average {load:.1f} at the end "
            f"(shared machine), SmallNet (K = 10, untrained), batch {n} MNIST test images, "
            f"{args.repeats} interleaved repeats. Ratios are taken within each repeat against "
            f"`salign.saliency(model, x, mode='logit')` (one forward + one backward); median and "
            "interquartile range over the repeats. IG: captum's Gauss–Legendre, 50 steps, "
            "`internal_batch_size` = the batch; SmoothGrad: 16 noisy copies, σ = 0.15. Boundary "
            f"rows use a fixed x_b (DeepFool's, not timed; verified on {found} of {n} samples, the "
            "others cost the same and come back NaN): they run no attack.",
            "",
            *lines,
            "",
            READING,
            "",
        ]
    )
    print(text)
    if not args.no_write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

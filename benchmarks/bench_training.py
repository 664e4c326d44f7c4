"""Benchmark of the training regularisers: step cost and the effect of λ and penalty_fraction.

Run:  .venv/bin/python benchmarks/bench_training.py [--quick] [--skip-effect] [--skip-cost]

1. Cost of one optimizer step (SmallNet, batch 100, CPU with PyTorch's default backends, 2
   threads and then 1 thread). Every method runs once per round, rounds repeated; each ratio is
   formed inside a round (so both sides see the same machine load) and the table gives its
   median and its spread (min–max) over the rounds.
   - double backprop: "two forwards" (a separate CE forward plus a penalty forward, what one
     writes when the penalty is a function of its own), "textbook one forward"
     (``x.requires_grad_()``, one forward, ``loss.backward()``), and ours
     (``penalty_terms``/``gradient_norm_penalty(return_loss=True)``: one forward, an input-only
     gradient with ``create_graph``, ``backward(inputs=params)``); bound: ours ÷ the plain CE
     step ≤ 2.4;
   - finite difference (Finlay & Oberman 2019): "straightforward" (separate CE forward, a
     forward+backward for the direction, two forwards for the difference) and ours (the CE
     forward reused for the direction and the difference, input-only gradient, one extra
     forward, one backward through both graphs); bound: ours ÷ the floor ≤ 1.15, the floor
     being what any finite-difference step pays at least: two forwards, two backwards and one
     optimizer step, timed in the same rounds; two "part" rows (the first forward alone, and
     with the input-gradient backward that gives the direction) show what an exact finite
     difference must add to that floor;
   - double backprop, ours with penalty_fraction 0.5 and 0.25.
2. Effect: SmallNet trained briefly on an MNIST subset for several λ; on test images, the mean
   input-gradient norm ‖∇_x CE‖₂ and the median linearised robustness ρ̃
   (salign.linearized_robustness), plus penalty_fraction's effect on ρ̃ at a fixed λ.

Writes the markdown tables to docs/benchmarks/training.md.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import salign
from salign import models
from salign.training import train
from salign.training.batches import penalty_mask
from salign.training.penalty import penalty_terms

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks" / "training.md"
#: λ grid of the effect run, in the authors' batch-mean scale (÷ 100² = per-example weight).
THREADS = (2, 1)
PLAIN = "plain CE step"
FLOOR = "floor: 2 × (forward + backward), one optimizer step"
FORWARD = "part: forward with x requiring grad"
DIRECTION = "part: that forward + the input-gradient backward (the direction)"
#: (row, its denominator, bound on the median ratio)
BOUNDS = (("double backprop, ours", PLAIN, 2.4), ("finite difference, ours", FLOOR, 1.15))
LAMBDAS = [0.0, 1e3, 1e4, 1e5]


def step_functions(lam: float = 0.1, h: float = 1e-2) -> dict[str, Callable[[], None]]:
    torch.manual_seed(0)
    model = models.build("smallnet").train()
    params = list(model.parameters())
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    x = torch.rand(100, 1, 28, 28)
    y = torch.randint(0, 10, (100,))

    def finish(loss: torch.Tensor, *, inputs: list[torch.Tensor] | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        torch.autograd.backward(loss, inputs=inputs)
        opt.step()

    def plain() -> None:
        finish(F.cross_entropy(model(x), y))

    def db_two_forwards() -> None:
        ce = F.cross_entropy(model(x), y)
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr, create_graph=True)
        finish(ce + lam * g.flatten(1).pow(2).sum(1).mean())

    def db_textbook() -> None:
        xr = x.clone().requires_grad_(True)
        ce = F.cross_entropy(model(xr), y, reduction="none")
        (g,) = torch.autograd.grad(ce.sum(), xr, create_graph=True)
        finish(ce.mean() + lam * g.flatten(1).pow(2).sum(1).mean())

    def db_ours() -> None:
        t = penalty_terms(model, x, y)
        finish(t.cross_entropy.mean() + lam * t.penalty.mean(), inputs=params)

    def fd_straightforward() -> None:
        ce = F.cross_entropy(model(x), y)
        xr = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        d = g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        l0 = F.cross_entropy(model(x), y, reduction="none")
        l1 = F.cross_entropy(model(x + h * d), y, reduction="none")
        finish(ce + lam * ((l1 - l0) / h).pow(2).mean())

    def fd_ours() -> None:
        t = penalty_terms(model, x, y, method="finite_difference", h=h)
        finish(t.cross_entropy.mean() + lam * t.penalty.mean(), inputs=params)

    def two_plain_passes() -> None:
        # The floor of any finite-difference step: the loss and its parameter gradient at two
        # points (two forwards, two backwards), one optimizer step, nothing else (zero_grad is
        # in every row). Which two points does not change the cost.
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    def forward_with_input_grad() -> None:
        # the finite difference's first forward (x requires grad), no backward
        F.cross_entropy(model(x.detach().requires_grad_(True)), y, reduction="none").sum()

    def direction() -> None:
        # the same forward plus the input-only backward that gives the direction d: the one
        # piece of work an exact finite-difference step does beyond the floor
        xr = x.detach().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="none").sum(), xr)

    def fraction(f: float) -> Callable[[], None]:
        mask = penalty_mask(100, f)

        def run() -> None:
            t = penalty_terms(model, x[mask], y[mask])
            rest = F.cross_entropy(model(x[~mask]), y[~mask], reduction="sum")
            finish((t.cross_entropy.sum() + rest) / 100 + lam * t.penalty.mean(), inputs=params)

        return run

    return {
        PLAIN: plain,
        "double backprop, two forwards": db_two_forwards,
        "double backprop, textbook one forward": db_textbook,
        "double backprop, ours": db_ours,
        "finite difference, straightforward": fd_straightforward,
        "finite difference, ours": fd_ours,
        FLOOR: two_plain_passes,
        FORWARD: forward_with_input_grad,
        DIRECTION: direction,
        "double backprop, ours, penalty_fraction 0.5": fraction(0.5),
        "double backprop, ours, penalty_fraction 0.25": fraction(0.25),
    }


def _spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median (min–max)`` of ``values``."""
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def bench_cost(repeats: int, steps: int, threads: int) -> tuple[str, dict[str, float]]:
    """Interleaved rounds; per method the wall and CPU time per step, per round.

    Every ratio is formed within a round (the two steps ran seconds apart, under the same load)
    and summarised by its median over rounds, with the min–max over rounds as the spread.
    Returns the markdown table with its verdict line and the median ratio of each bounded row.
    """
    torch.set_num_threads(threads)
    fns = step_functions()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):  # interleaved: every method once per round
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                fn()
            wall[name].append((time.perf_counter() - t0) / steps)
            cpu[name].append((time.process_time() - c0) / steps)

    def ratios(k: str, den: str, times: dict[str, list[float]]) -> list[float]:
        return [a / b for a, b in zip(times[k], times[den], strict=True)]

    bound_of = {k: (den, limit) for k, den, limit in BOUNDS}
    lines = [
        f"| step (SmallNet, batch 100, {threads} thread{'s' if threads > 1 else ''}) | wall ms | "
        "÷ plain (wall) | ÷ floor (wall) | ÷ plain (CPU) | ÷ floor (CPU) | bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in fns:
        bound = ""
        if k in bound_of:
            den, limit = bound_of[k]
            bound = f"÷ {'plain' if den == PLAIN else 'floor'} ≤ {limit:g}"
        lines.append(
            f"| {k} | {_spread([1000 * t for t in wall[k]], '{:.0f}')} | {_spread(ratios(k, PLAIN, wall))} | "
            f"{_spread(ratios(k, FLOOR, wall))} | {_spread(ratios(k, PLAIN, cpu))} | "
            f"{_spread(ratios(k, FLOOR, cpu))} | {bound} |"
        )
    verdicts = []
    medians: dict[str, float] = {}
    for k, den, limit in BOUNDS:
        name = "plain CE step" if den == PLAIN else "floor"
        parts = []
        for label, times in (("wall", wall), ("CPU", cpu)):
            r = ratios(k, den, times)
            med = statistics.median(r)
            medians.setdefault(k, med)  # the wall-time median
            parts.append(
                f"{label} {med:.3f} (min–max {min(r):.3f}–{max(r):.3f}): **{'pass' if med <= limit else 'FAIL'}**"
            )
        verdicts.append(f"{k} ÷ {name} ≤ {limit:g}, median of {repeats} rounds: {', '.join(parts)}")
    # what an exact finite difference adds to the floor: one input-gradient backward
    for label, times in (("wall", wall), ("CPU", cpu)):
        excess = [
            (a - b) / f
            for a, b, f in zip(times["finite difference, ours"], times[FLOOR], times[FLOOR], strict=True)
        ]
        direction = [
            (a - b) / f for a, b, f in zip(times[DIRECTION], times[FORWARD], times[FLOOR], strict=True)
        ]
        verdicts.append(
            f"{label} time, as fractions of the floor: finite difference, ours − floor {_spread(excess, '{:.3f}')}; "
            f"the input-gradient backward (difference of the two 'part' rows) {_spread(direction, '{:.3f}')}"
        )
    lines += [""] + [f"- {v}." for v in verdicts]
    return "\n".join(lines), medians


def _measure(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    xr = x.clone().requires_grad_(True)
    logits = model(xr)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xr)
    rho = salign.linearized_robustness(model, x)
    return {
        "accuracy": float((logits.argmax(1) == y).float().mean()),
        "grad_norm": float(g.flatten(1).norm(dim=1).mean()),
        "median_rho_tilde": float(rho.nanmedian()),
    }


def bench_effect(n_train: int, n_test: int, epochs: int, lambdas: list[float], fractions: list[float]) -> str:
    torch.set_num_threads(2)
    x_tr, y_tr = salign.data.load("mnist", "train")
    x_te, y_te = salign.data.load("mnist", "test")
    data = (x_tr[:n_train], y_tr[:n_train], x_te[:n_test], y_te[:n_test])
    base = {
        "model": {"name": "smallnet"},
        "optimizer": {"name": "adam", "lr": 1e-3},
        "epochs": epochs,
        "batch_size": 100,
        "seed": 0,
        "tensorboard": False,
        "quiet": True,
        "data": {"val_subset": n_test},
    }
    rows = []
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = [(lam, 1.0) for lam in lambdas] + [(lambdas[-2], f) for f in fractions if f < 1]
        for lam, frac in runs:
            cfg = {**base, "regularizer": {"lambda": lam, "scaling": "batch_mean", "penalty_fraction": frac}}
            t0 = time.perf_counter()
            path = train(cfg, run_dir=Path(tmp) / f"{lam}-{frac}", data=data)
            seconds = time.perf_counter() - t0
            m = _measure(models.load(path), data[2], data[3])
            rows.append((lam, frac, seconds, m))
            print(f"λ={lam} f={frac}: {m} ({seconds:.0f} s)", file=sys.stderr)
    lines = [
        "| λ (batch_mean, authors' scale) | penalty_fraction | train s | test acc | mean ‖∇ₓCE‖₂ | median ρ̃ |",
        "|---|---|---|---|---|---|",
    ]
    for lam, frac, seconds, m in rows:
        lines.append(
            f"| {lam:g} | {frac:g} | {seconds:.0f} | {m['accuracy']:.3f} | {m['grad_norm']:.4f} | "
            f"{m['median_rho_tilde']:.4f} |"
        )
    main_rows = [r for r in rows if r[1] == 1.0]
    gn = [r[3]["grad_norm"] for r in main_rows]
    rho = [r[3]["median_rho_tilde"] for r in main_rows]
    mono_gn = all(a > b for a, b in itertools.pairwise(gn))
    mono_rho = all(a < b for a, b in itertools.pairwise(rho))
    lines.append("")
    lines.append(
        f"Monotone over λ: mean gradient norm decreasing: **{mono_gn}**; median ρ̃ increasing: **{mono_rho}**."
    )
    return "\n".join(lines)


COST_TITLE = "## Cost of one regularised step"
EFFECT_TITLE = "## Effect of λ and of penalty_fraction"


def _previous_section(title: str) -> list[str]:
    """The section ``title`` of the existing report (kept when that part is skipped)."""
    if not OUT.is_file():
        return []
    text = OUT.read_text(encoding="utf-8")
    if title not in text:
        return []
    body = text[text.index(title) :]
    nxt = body.find("\n## ", len(title))
    return [body[: nxt if nxt >= 0 else len(body)].rstrip(), ""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-effect", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    args = ap.parse_args()
    repeats = args.repeats or (3 if args.quick else 15)
    parts = [
        "# Training benchmarks (salign.training)",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_training.py{''.join(' ' + a for a in sys.argv[1:])}` "
        f"({datetime.date.today().isoformat()}, torch {torch.__version__}, CPU, "
        "a shared 2-core machine: timings are noisy, ratios are what counts). A skipped part keeps the "
        "section of the previous run, with its own date.",
        "",
    ]
    if args.skip_cost:
        parts += _previous_section(COST_TITLE)
    else:
        load = " / ".join(f"{v:.2f}" for v in os.getloadavg())
        tables = []
        for threads in THREADS:
            table, _ = bench_cost(repeats=repeats, steps=2, threads=threads)
            tables += [table, ""]
            print(table, flush=True)
        parts += [
            COST_TITLE,
            "",
            f"Measured {datetime.date.today().isoformat()} (load average {load} at the start). "
            f"Interleaved rounds (every method once per round, {repeats} rounds × 2 steps); each cell is "
            "the median over rounds with the min–max in brackets. Ratios are formed within a round, in "
            "wall time and in process CPU time (the latter is the less disturbed by other jobs on a shared "
            "machine, at 1 thread especially). "
            "The floor is what any finite-difference step pays at least: two forwards, two backwards and "
            "one optimizer step. PyTorch's CPU backends as shipped (oneDNN on: "
            f"`torch.backends.mkldnn.is_available()` = {torch.backends.mkldnn.is_available()}); "
            "`torch.set_num_threads` as in each table's header.",
            "",
            *tables,
        ]
    if args.skip_effect:
        parts += _previous_section(EFFECT_TITLE)
    else:
        n_train, n_test, epochs = (1000, 200, 1) if args.quick else (2000, 300, 2)
        table = bench_effect(n_train, n_test, epochs, LAMBDAS, [0.5, 0.25])
        parts += [
            EFFECT_TITLE,
            "",
            f"Measured {datetime.date.today().isoformat()}. "
            f"SmallNet trained from the same seed on the first {n_train} MNIST training images for {epochs} "
            "epochs (Adam 1e-3, batch 100, penalty scaling `batch_mean` as in the authors' code, so λ = 10 "
            f"≡ per-example 1e-3); measured on the first {n_test} MNIST test images in eval mode. ρ̃ = "
            "`salign.linearized_robustness` (nearest rival). The penalty_fraction rows use the second-"
            "largest λ.",
            "",
            table,
            "",
        ]
        print(table)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(parts) + "\n", encoding="utf-8")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""Benchmark: how far the attacks are from the exact ρ_p on small MNIST ReLU MLPs (issue 17).

Trains (once, cached in benchmarks/.cache/) two ReLU MLPs on MNIST downsampled to ``--size``²
pixels (average pooling), one with plain cross-entropy and one with the double-backprop
input-gradient penalty (``salign.training.gradient_norm_penalty``, weight ``--lam``). On ``--n``
MNIST test images from ``--first`` it solves ρ_p exactly (``salign.exact.exact_robustness``:
HiGHS for L∞ and L1, SCIP for L2) and compares, per norm:

* ours: ``salign.robustness(model, x, norm=p)`` with the standard budget;
* foolbox 3.3.4 (if installed): FMN (L2, L∞, L1) and DDN (L2), 1000 steps, and EAD (L1, 9
  binary-search steps × 1000), ``epsilons=None``;
* pyautoattack 0.2.0 (if installed): FAB (L∞, L2, L1; one restart, 100 iterations), FAB-T (the
  same against each of the 9 other classes, per-sample best), and in L∞ APGD-CE / APGD-DLR
  (100 iterations) at ε = our median: the samples they break that we put farther than ε.

Every attack's point is verified the same way (clip to [0, 1], re-forward, another class);
ratios are per-sample attack ÷ exact distance. Per-sample results are cached in JSON, so a
rerun (or a killed run) only computes what is missing. Writes docs/benchmarks/exact.md.

    .venv/bin/python benchmarks/bench_exact.py             # n=50, L2 / L∞ / L1
    .venv/bin/python benchmarks/bench_exact.py --quick     # n=10, L2 / L∞
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import salign
from bench_attacks import fit, handwritten_sections
from salign._io import write_text_atomic
from salign.exact import exact_robustness

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
DOC = ROOT / "docs" / "benchmarks" / "exact.md"
NORMS = {"2": 2.0, "inf": math.inf, "1": 1.0}
#: Steps of foolbox's FMN and DDN (the standard budget of salign.robustness runs 1000 per attack).
FOOLBOX_STEPS = 1000


def downsample(x: torch.Tensor, size: int) -> torch.Tensor:
    """MNIST (N, 1, 28, 28) → (N, 1, size, size) by average pooling (stays in [0, 1])."""
    if 28 % size:
        raise SystemExit(f"--size must divide 28, got {size}")
    return F.avg_pool2d(x, 28 // size)


def mlp(size: int, hidden: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    d = size * size
    for h in hidden:
        layers += [nn.Linear(d, h), nn.ReLU()]
        d = h
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def train(size: int, hidden: list[int], lam: float, epochs: int, seed: int = 0) -> nn.Sequential:
    """The MLP trained on downsampled MNIST by bench_attacks.py's :func:`fit` (Adam, batch 100;
    λ > 0 adds the double-backprop penalty)."""
    torch.manual_seed(seed)
    x, y = salign.data.load("mnist", "train")
    model = fit(mlp(size, hidden), downsample(x, size), y, lam=lam, epochs=epochs)
    assert isinstance(model, nn.Sequential)
    return model


def get_model(size: int, hidden: list[int], lam: float, epochs: int) -> nn.Sequential:
    from safetensors.torch import load_file, save_file

    tag = f"exact_mlp_s{size}_h{'-'.join(map(str, hidden))}_lam{lam:g}_ep{epochs}"
    path = CACHE / f"{tag}.safetensors"
    model = mlp(size, hidden)
    if path.exists():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    model = train(size, hidden, lam, epochs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model


def verified(
    model: nn.Module, x: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, p: float
) -> list[float]:
    """‖adv − x‖_p where the clipped adv is classified ≠ labels, else inf."""
    adv = adv.detach().clamp(0, 1).to(x.dtype)
    with torch.no_grad():
        ok = model(adv).argmax(1) != labels
    d = (adv - x).flatten(1).double().norm(p=p, dim=1)
    return [float(v) if bool(o) else math.inf for v, o in zip(d, ok, strict=True)]


def run_ours(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, p: float) -> tuple[list[float], float]:
    start = time.perf_counter()
    r = salign.robustness(model, x, labels, norm=p, budget="standard", quiet=True)
    return verified(model, x, r.adv, labels, p), time.perf_counter() - start


def foolbox_runner(name: str) -> Callable[..., tuple[list[float], float]] | None:
    try:
        import foolbox as fb
    except ImportError:
        return None
    make = {"fmn": {2.0: fb.attacks.L2FMNAttack, math.inf: fb.attacks.LInfFMNAttack, 1.0: fb.attacks.L1FMNAttack},
            "ddn": {2.0: fb.attacks.DDNAttack}, "ead": {1.0: fb.attacks.EADAttack}}[name]  # fmt: skip

    def run(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, p: float) -> tuple[list[float], float]:
        attack = make[p](steps=FOOLBOX_STEPS)  # foolbox's default is 10 steps (EAD: 10000)
        fmodel = fb.PyTorchModel(model.eval(), bounds=(0, 1))
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, clipped, _ = attack(fmodel, x, labels, epsilons=None)
        return verified(model, x, clipped, labels, p), time.perf_counter() - start

    run.norms = set(make)  # type: ignore[attr-defined]
    return run


def fab_runner(targeted: bool = False) -> Callable[..., tuple[list[float], float]] | None:
    """pyautoattack's FAB, one run from x (100 iterations); ``targeted``: FAB-T, one such run
    against each of the 9 highest other logits, keeping the per-sample best."""
    try:
        from pyautoattack.fab_pt import FABAttack_PT
    except ImportError:
        return None

    def run(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, p: float) -> tuple[list[float], float]:
        norm = {2.0: "L2", math.inf: "Linf", 1.0: "L1"}[p]
        attack = FABAttack_PT(model.eval(), norm=norm, n_restarts=1, n_iter=100, eps=1e3, seed=0)
        start = time.perf_counter()
        best = [math.inf] * len(x)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for target in range(2, 11) if targeted else [None]:
                attack.target_class = target
                adv = attack.attack_single_run(x, labels, use_rand_start=False, is_targeted=targeted)
                best = [min(a, b) for a, b in zip(best, verified(model, x, adv, labels, p), strict=True)]
        return best, time.perf_counter() - start

    run.norms = {2.0, math.inf, 1.0}  # type: ignore[attr-defined]
    return run


def apgd_check(
    model: nn.Module, x: torch.Tensor, labels: torch.Tensor, eps: float, ours: list[float], exact: list[float]
) -> str | None:
    """pyautoattack's APGD-CE and APGD-DLR (L∞, 100 iterations) at ε: a sample they break within
    ε that our ensemble puts farther than ε is one our minimal-norm estimate missed."""
    try:
        from pyautoattack.autopgd_base import APGDAttack
    except ImportError:
        return None
    farther = [i for i, d in enumerate(ours) if d > eps]
    broken: set[int] = set()
    start = time.perf_counter()
    for loss in ("ce", "dlr"):
        attack = APGDAttack(model.eval(), norm="Linf", eps=eps, n_iter=100, loss=loss, seed=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adv = attack.perturb(x.clone(), labels.clone())
        d = verified(model, x, adv, labels, math.inf)
        broken |= {i for i in farther if d[i] <= eps * (1 + 1e-6)}
    below = sum(e <= eps for i, e in enumerate(exact) if i in farther)
    return (
        f"pyautoattack APGD-CE + APGD-DLR (L∞, 100 iterations each, {time.perf_counter() - start:.1f} s) at "
        f"ε = our median {eps:.4g}: break **{len(broken)}** of the {len(farther)} samples we put farther "
        f"than ε (the exact ρ puts {below} of those within ε)."
    )


def load_cache(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def save_cache(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def solve_exact(
    model: nn.Module,
    x: torch.Tensor,
    p: float,
    time_limit: float,
    cache: dict[str, Any],
    key: str,
    path: Path,
) -> dict[str, list[Any]]:
    """Exact results per sample, solved one sample at a time and cached after each."""
    rows: dict[str, Any] = cache.setdefault(key, {})
    for i in range(len(x)):
        if str(i) in rows:
            continue
        r = exact_robustness(model, x[i : i + 1], norm=p, time_limit=time_limit, quiet=True)
        rows[str(i)] = {
            "distance": float(r.distance[0]),
            "lower_bound": float(r.lower_bound[0]),
            "gap": float(r.gap[0]),
            "status": r.status[0],
            "seconds": float(r.seconds[0]),
            "nodes": int(r.nodes[0]),
        }
        save_cache(path, cache)
        print(f"    exact L{key.split('|')[-1]} sample {i}: {rows[str(i)]}", file=sys.stderr)
    return {k: [rows[str(i)][k] for i in range(len(x))] for k in next(iter(rows.values()))}


def fmt(v: float, digits: int = 4) -> str:
    return "∞" if math.isinf(v) else f"{v:.{digits}g}"


def table(
    exact: dict[str, list[Any]], attacks: dict[str, tuple[list[float], float]], gap: float
) -> list[str]:
    ex = exact["distance"]
    med = statistics.median(ex)
    n = len(ex)
    optimal = sum(s == "optimal" for s in exact["status"])
    lines = [
        "| method | median ρ | median ÷ exact median | within 0.1% | within 2% | worst ratio | seconds |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| **exact (MIP)** | {fmt(med)} | 1 | {optimal}/{n} proven (gap ≤ {gap:g}); max gap "
        f"{max(exact['gap']):.1e} | | | {sum(exact['seconds']):.1f} |",
    ]
    for name, (dist, seconds) in attacks.items():
        ratios = [d / e if e > 0 else (1.0 if d == 0 else math.inf) for d, e in zip(dist, ex, strict=True)]
        lines.append(
            f"| {name} | {fmt(statistics.median(dist))} | {statistics.median(dist) / med:.4f} | "
            f"{sum(r <= 1.001 for r in ratios)}/{n} | {sum(r <= 1.02 for r in ratios)}/{n} | "
            f"{fmt(max(ratios))} | {seconds:.1f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--first", type=int, default=0, help="first MNIST test image")
    parser.add_argument("--size", type=int, default=7, help="downsampled side (divides 28)")
    parser.add_argument("--hidden", type=str, default="32", help="hidden widths, e.g. 32 or 32,16")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lam", type=float, default=0.03, help="penalty weight of the regularised model")
    parser.add_argument("--norms", type=str, default="2,inf,1")
    parser.add_argument("--time-limit", type=float, default=30.0, help="seconds per sample and norm")
    parser.add_argument("--gap", type=float, default=1e-4)
    parser.add_argument("--no-peers", action="store_true", help="skip foolbox and FAB")
    parser.add_argument("--quick", action="store_true", help="n=10, L2 and L∞")
    parser.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks/exact.md")
    args = parser.parse_args()
    if args.quick:
        args.n, args.norms = 10, "2,inf"
    torch.set_num_threads(2)
    hidden = [int(h) for h in args.hidden.split(",")]
    norms = [NORMS[s.strip().lower()] for s in args.norms.split(",")]
    x_test, y_test = salign.data.load("mnist", "test")
    x = downsample(x_test[args.first : args.first + args.n], args.size).contiguous()
    peers: dict[str, Callable[..., tuple[list[float], float]] | None] = {}
    if not args.no_peers:
        peers = {
            "foolbox FMN (1000 steps)": foolbox_runner("fmn"),
            "foolbox DDN (1000 steps)": foolbox_runner("ddn"),
            "foolbox EAD (9 × 1000 steps)": foolbox_runner("ead"),
            "FAB (pyautoattack)": fab_runner(),
            "FAB-T (pyautoattack, 9 targets)": fab_runner(targeted=True),
        }
    started = time.perf_counter()
    sections: list[str] = []
    verdicts: list[str] = []
    for name, lam in (("plain", 0.0), ("gradient-norm penalty", args.lam)):
        model = get_model(args.size, hidden, lam, args.epochs)
        with torch.no_grad():
            pred = model(x).argmax(1)
        acc = float((model(downsample(x_test, args.size)).argmax(1) == y_test).float().mean())
        tag = f"s{args.size}_h{args.hidden.replace(',', '-')}_lam{lam:g}_ep{args.epochs}_n{args.n}_f{args.first}"
        path = CACHE / f"exact_{tag}.json"
        cache = load_cache(path)
        sections.append(f"\n## {name} (λ = {lam:g}; test accuracy {acc:.2%})\n")
        for p in norms:
            pname = "∞" if math.isinf(p) else f"{p:g}"
            key = f"exact|{args.time_limit:g}|{args.gap:g}|{pname}"
            print(f"{name}: L{pname}", file=sys.stderr)
            exact = solve_exact(model, x, p, args.time_limit, cache, key, path)
            attacks: dict[str, tuple[list[float], float]] = {}
            runners: dict[str, Callable[..., tuple[list[float], float]]] = {
                "salign robustness (standard)": run_ours
            }
            runners.update({k: v for k, v in peers.items() if v is not None and p in v.norms})  # type: ignore[attr-defined]
            for label, fn in runners.items():
                akey = f"{label}|{pname}"
                if akey not in cache:
                    dist, secs = fn(model, x, pred, p)
                    cache[akey] = {"distance": dist, "seconds": secs}
                    save_cache(path, cache)
                attacks[label] = (cache[akey]["distance"], cache[akey]["seconds"])
            sections.append(f"\n### L{pname}\n")
            sections += table(exact, attacks, args.gap)
            ours = attacks["salign robustness (standard)"][0]
            if math.isinf(p) and not args.no_peers:
                line = apgd_check(model, x, pred, statistics.median(ours), ours, exact["distance"])
                if line:
                    sections += ["", line]
            # the issue sets the goal for L2 and L∞; L1 is held to the same bar here
            med_ratio = statistics.median(ours) / statistics.median(exact["distance"])
            worst = max(d / e for d, e in zip(ours, exact["distance"], strict=True))
            holds = med_ratio <= 1.005 and worst <= 1.02
            verdicts.append(
                f"- {name}, L{pname}: median ratio {med_ratio:.4f} (goal ≤ 1.005), worst sample "
                f"{worst:.4f} (goal ≤ 1.02): **{'holds' if holds else 'does not hold'}**"
            )
    total = time.perf_counter() - started
    command = "python benchmarks/bench_exact.py " + " ".join(sys.argv[1:])
    doc = [
        "# Exact ρ_p against the attacks (issue 17)",
        "",
        f"Generated by `{command.strip()}` on {datetime.date.today().isoformat()} "
        f"({platform.processor() or platform.machine()}, torch {torch.__version__}, 2 threads; "
        f"this invocation {total:.0f} s; rows already in the per-sample cache of benchmarks/.cache were not recomputed, the seconds columns are those of the runs that computed them).",
        "",
        f"Models: ReLU MLPs {args.size * args.size}→{'→'.join(map(str, hidden))}→10 on MNIST average-pooled to "
        f"{args.size}×{args.size}, Adam {args.epochs} epochs, one plain and one with the double-backprop "
        f"penalty (λ = {args.lam:g}). Points: MNIST test images {args.first}–{args.first + args.n - 1}, "
        "ρ away from the predicted class. Exact: `salign.exact.exact_robustness` (HiGHS 1.16 for L∞ / "
        f"L1, SCIP 10 via PySCIPOpt 6.3 for L2), time limit {args.time_limit:g} s per sample, gap "
        f"{args.gap:g}. Ratios are per-sample attack distance ÷ exact distance (the exact distance is "
        "the verified MIP point, at most the gap above the proven lower bound); *within 0.1%* counts "
        "ratios ≤ 1.001.",
        "",
        "Notes: foolbox's FMN in L2 stops far from the boundary here as on the SmallNets of "
        "docs/benchmarks/attacks.md (its rows `fb fmn`: 1.68× the envelope), so its L2 row says more "
        "about that implementation than about FMN; FAB keeps a small overshoot (0/50 within 0.1%), "
        "having no final line search. The inputs were shrunk to 7×7 because at 14×14 (196→32→10) "
        "SCIP left L2 gaps of 10–60% after 30 s per sample.",
        "",
        "Why the L∞ / L1 ensembles changed (issue 17): with DeepFool → FMN (warm) → FMN short chain, "
        "every sample left more than 0.1% above the exact ρ (15 plain and 5 penalised in L∞) had "
        "reached a different class than the MIP's minimiser, often the 3rd–5th logit: a wrong rival's "
        "region, not a step size or an early exit (FMN at 5000 steps warm-started there stays). "
        "FAB-T (`salign.attacks.FAB`, `target_classes=9`, 100 iterations per target) after DeepFool "
        "visits every rival's boundary; FMN warm-started from its best point, then a cold FMN "
        "(which reached the exact L∞ minimum on small random ReLU MLPs where every warm run was "
        "1.4–1.9× above it), give the rows below. In L2 the ensemble ends its main chain with a "
        "short FAB-T (the 2 highest other logits, 30 iterations each): it brought the one penalised "
        "sample left 2.5% above the exact ρ to it.",
        "",
        "## The issue's goal (salign robustness: median within 0.5%, every sample within 2%)",
        "",
        *verdicts,
        *sections,
        "",
    ]
    text = "\n".join(doc)
    print(text)
    if not args.no_doc:  # the addenda below the tables are written by hand: kept
        text = text.rstrip("\n") + handwritten_sections(DOC, ("## Addendum", "written by hand")) + "\n"
        write_text_atomic(DOC, text)


if __name__ == "__main__":
    main()

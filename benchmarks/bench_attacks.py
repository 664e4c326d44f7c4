"""Benchmark: quality and cost of salign.attacks against foolbox 3.3.4 on MNIST SmallNets.

Trains (once, cached in benchmarks/.cache/) two SmallNets with a short plain PyTorch loop: one
with plain cross-entropy (λ = 0) and one with the double-backprop input-gradient penalty. On ``--n`` MNIST
test images from index ``--first`` (default 200–399: the defaults were chosen on images 0–199,
the previous benchmark set, and on 1000–1099) it runs, side by side in one process:

* ours: ``robustness`` (standard and fast budgets), DDN / FMN / ALMA alone at ``--steps`` as the
  ensemble runs them (tuned options, line search and polish: :func:`tuned`), DeepFool, C&W, and
  DDN / FMN with the papers' defaults (``ours ddn 1000 paper``);
* foolbox 3.3.4: DDN, FMN, C&W (binary search) at the same total steps, DeepFool;

every model call going through the same counting wrapper (forwards / backwards per sample).
Distances of foolbox's results are verified the same way as ours (re-forward the clipped point).
Quality = median distance ÷ median of the per-sample best over everything ("envelope").
Cost = wall time ratios at equal steps, and the time to reach a median within 1% of the
envelope's (for foolbox DDN/FMN by a sweep over steps).

    .venv/bin/python benchmarks/bench_attacks.py            # n=200, steps=1000 (slow on a CPU)
    .venv/bin/python benchmarks/bench_attacks.py --quick    # n=40, steps=200
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import salign
from salign.attacks import DDN, FMN, CountingModel, robustness, tuned_attack
from salign.models import build, load, save

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache"
#: The benchmark SmallNets, committed (1 MB each): trained once by :func:`train_smallnet` (seed 0),
#: so that every checkout and session measures the same models.
MODELS = ROOT / "benchmarks" / "models"
DOC = ROOT / "docs" / "benchmarks" / "attacks.md"


def fit(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: float, epochs: int
) -> torch.nn.Module:
    """Plain Adam training (lr 1e-3, batch 100); λ > 0 adds λ·mean‖∇_x CE‖₂² (double backprop).
    The caller seeds torch first (the batch order draws from it)."""
    from salign.training import gradient_norm_penalty

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x))
        for i in range(0, len(x), 100):
            idx = perm[i : i + 100]
            xb, yb = x[idx], y[idx]
            if lam > 0:
                penalty, ce = gradient_norm_penalty(model, xb, yb, return_loss=True)
                loss = ce + lam * penalty
            else:
                loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"  trained epoch {epoch + 1}/{epochs} (λ={lam})", file=sys.stderr)
    return model.eval()


def train_smallnet(lam: float, *, epochs: int, seed: int) -> torch.nn.Module:
    """A SmallNet trained on MNIST by :func:`fit`."""
    torch.manual_seed(seed)
    x, y = salign.data.load("mnist", "train")
    return fit(build("smallnet"), x, y, lam=lam, epochs=epochs)


def get_model(lam: float, epochs: int) -> torch.nn.Module:
    """The benchmark SmallNet trained with penalty ``lam`` for ``epochs``: the committed one in
    :data:`MODELS` (λ = 0 and 1, 1 epoch: every page's numbers come from these), else the one
    trained earlier into the cache, else trained now (on one thread: the trained weights depend
    on the thread count and on the CPU's vector instructions, so a retrained model is not the
    committed one bit for bit)."""
    name = f"smallnet_lam{lam:g}_ep{epochs}.safetensors"
    for folder in (MODELS, CACHE):
        if (folder / name).exists():
            return load(folder / name).eval()
    CACHE.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = train_smallnet(lam, epochs=epochs, seed=0)
    finally:
        torch.set_num_threads(threads)
    save(model, CACHE / name, metadata={"lambda": lam, "epochs": epochs})
    return load(CACHE / name).eval()


def verified_distance(
    model: torch.nn.Module, x: torch.Tensor, adv: torch.Tensor, labels: torch.Tensor, norm: float = 2.0
) -> torch.Tensor:
    """‖adv − x‖_p of the clipped point where it is classified ≠ labels, else inf."""
    with torch.no_grad():
        adv = adv.detach().clamp(0, 1)
        ok = model(adv).argmax(1) != labels
        d = (adv - x).flatten(1).norm(p=norm, dim=1)
    return torch.where(ok, d, torch.full_like(d, math.inf))


def run_peer(
    call: Any, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, norm: float = 2.0
) -> dict[str, Any]:
    """A peer's attack ``call(counting_model) -> adversarial points``, timed, its model calls
    counted by the same wrapper as ours, its points verified in the Lp ``norm``."""
    cm = CountingModel(model).eval()
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = call(cm)
    seconds = time.perf_counter() - start
    return {
        "distance": verified_distance(model, x, adv, labels, norm),
        "seconds": seconds,
        "forwards": cm.forwards,
        "backwards": cm.backwards,
    }


def run_foolbox(
    attack: Any, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, norm: float = 2.0
) -> dict[str, Any]:
    import foolbox as fb

    def call(cm: torch.nn.Module) -> torch.Tensor:
        return attack(fb.PyTorchModel(cm, bounds=(0, 1)), x, labels, epsilons=None)[1]

    return run_peer(call, model, x, labels, norm)


def cache_path(name: str, n: int, steps: int, first: int) -> Path:
    """Where a model's per-sample results are cached (test images first … first + n − 1)."""
    return CACHE / f"attacks_{name}_n{n}_s{steps}{f'_from{first}' if first else ''}.json"


#: The refinements robustness() adds to every attack (the public attacks run without them).
REFINED = {"line_search_steps": 20, "polish_steps": 2}


def tuned(name: str) -> Any:
    """Attack ``name`` as the ensemble runs it: its tuned options (salign.attacks.TUNED), a line
    search and 2 polish rounds; called as ``fn(model, x, labels, steps=..., **settings)``."""

    def run(
        model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, steps: int = 1000, **kw: Any
    ) -> Any:
        return tuned_attack(name, steps)(model, x, labels, **{**REFINED, **kw})

    return run


ddn, fmn, alma, deepfool = tuned("ddn"), tuned("fmn"), tuned("alma"), tuned("deepfool")


def paper(attack: type) -> Any:
    """Attack class ``attack`` with the paper's defaults (FMN: its ε update, not our guarded
    search), no refinement."""
    options = {"guarded_search": False} if attack is FMN else {}

    def run(
        model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, *, steps: int = 1000, **kw: Any
    ) -> Any:
        return attack(steps=steps, **options)(model, x, labels, **kw)

    return run


def ours(fn: Any, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: Any) -> dict[str, Any]:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fn(model, x, labels, **kw)
    seconds = time.perf_counter() - start
    return {"distance": r.distance, "seconds": seconds, "forwards": r.forwards, "backwards": r.backwards}


def median(d: torch.Tensor) -> float:
    return float(d.double().median())


def bench_model(
    name: str, model: torch.nn.Module, x: torch.Tensor, steps: int, sweep: list[int]
) -> dict[str, Any]:
    import foolbox as fb

    with torch.no_grad():
        labels = model(x).argmax(1)
    runs: dict[str, dict[str, Any]] = {}
    cw_rounds = 5

    def add(key: str, res: dict[str, Any]) -> None:
        runs[key] = res
        print(
            f"  {name:10s} {key:28s} median {median(res['distance']):.4f}  {res['seconds']:7.1f}s  "
            f"fwd/sample {res['forwards'] / len(x):7.1f}",
            file=sys.stderr,
        )

    patience = max(50, steps // 10)
    add(
        "ours robustness standard",
        ours(robustness, model, x, labels, budget="standard", steps=steps, quiet=True),
    )
    add("ours robustness fast", ours(robustness, model, x, labels, budget="fast", quiet=True))
    add("ours deepfool", ours(deepfool, model, x, labels, steps=50))
    # alone, every attack runs all its steps (equal steps with foolbox); early exit (patience)
    # trades quality for time on long schedules: the "early exit" rows show by how much
    add(f"ours ddn {steps}", ours(ddn, model, x, labels, steps=steps))
    add(f"fb ddn {steps}", run_foolbox(fb.attacks.DDNAttack(steps=steps), model, x, labels))
    add(f"ours ddn {steps} paper", ours(paper(DDN), model, x, labels, steps=steps))
    add(f"ours fmn {steps} paper", ours(paper(FMN), model, x, labels, steps=steps))
    add(f"ours fmn {steps}", ours(fmn, model, x, labels, steps=steps))
    add(f"fb fmn {steps}", run_foolbox(fb.attacks.L2FMNAttack(steps=steps), model, x, labels))
    add(f"ours alma {steps}", ours(alma, model, x, labels, steps=steps))
    add(f"ours ddn {steps} early exit", ours(ddn, model, x, labels, steps=steps, patience=patience))
    add(f"ours fmn {steps} early exit", ours(fmn, model, x, labels, steps=steps, patience=patience))
    add("fb deepfool", run_foolbox(fb.attacks.L2DeepFoolAttack(steps=50), model, x, labels))
    add(
        f"fb cw {cw_rounds}x{steps // cw_rounds}",
        run_foolbox(
            fb.attacks.L2CarliniWagnerAttack(
                binary_search_steps=cw_rounds, steps=steps // cw_rounds, initial_const=0.1
            ),
            model,
            x,
            labels,
        ),
    )
    # adv-lib 0.2.8 (the most efficient peer; `make peers`): its L2 FMN, DDN, ALMA and FAB join
    # the envelope at the same steps
    for key, run in peer_runs(2.0, steps).items():
        if key.startswith("advlib"):
            add(key, run(model, x, labels))
    for s in sweep:
        add(f"ours ddn {s}", ours(ddn, model, x, labels, steps=s, patience=max(10, s // 5)))
        add(f"fb ddn {s}", run_foolbox(fb.attacks.DDNAttack(steps=s), model, x, labels))
        add(f"fb fmn {s}", run_foolbox(fb.attacks.L2FMNAttack(steps=s), model, x, labels))
        add(
            f"ours ddn {s} no polish",
            ours(ddn, model, x, labels, steps=s, patience=max(10, s // 5), polish_steps=0),
        )
    envelope = torch.stack([r["distance"] for r in runs.values()]).amin(0)
    return {"runs": runs, "envelope": envelope, "labels": labels}


def table(name: str, out: dict[str, Any], n: int, steps: int) -> tuple[list[str], dict[str, float]]:
    runs, env = out["runs"], out["envelope"]
    env_med = median(env)
    lines = [
        f"### {name}: n = {n}, median of the per-sample best (envelope) = {env_med:.4f}",
        "",
        "| attack | median ρ | ÷ envelope median | within 1% of per-sample best | success | fwd/sample | bwd/sample | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        d = r["distance"]
        within = float((d <= env * 1.01).float().mean())
        lines.append(
            f"| {key} | {median(d):.4f} | {median(d) / env_med:.4f} | {within:.1%} | "
            f"{float(torch.isfinite(d).float().mean()):.1%} | {r['forwards'] / n:.0f} | {r['backwards'] / n:.0f} | "
            f"{r['seconds']:.1f} |"
        )
    sec = {k: r["seconds"] for k, r in runs.items()}
    ratios = {
        "ddn_time_ratio": sec[f"ours ddn {steps}"] / sec[f"fb ddn {steps}"],
        "fmn_time_ratio": sec[f"ours fmn {steps}"] / sec[f"fb fmn {steps}"],
        "standard_quality": median(runs["ours robustness standard"]["distance"]) / env_med,
        "ddn_quality": median(runs[f"ours ddn {steps}"]["distance"]) / env_med,
        "fmn_quality": median(runs[f"ours fmn {steps}"]["distance"]) / env_med,
        "alma_quality": median(runs[f"ours alma {steps}"]["distance"]) / env_med,
    }
    # time to a median within 1% of the envelope's median
    reach = {k: r["seconds"] for k, r in runs.items() if median(r["distance"]) <= 1.01 * env_med}
    ours_reach = {k: s for k, s in reach.items() if k.startswith("ours")}
    fb_reach = {k: s for k, s in reach.items() if k.startswith("fb")}
    best_ours = min(ours_reach.items(), key=lambda kv: kv[1]) if ours_reach else None
    best_fb = min(fb_reach.items(), key=lambda kv: kv[1]) if fb_reach else None
    lines.append("")

    def reached(best: tuple[str, float] | None, side: str) -> str:
        return f"{best[0]} ({best[1]:.1f} s)" if best else f"no {side} run"

    lines.append(
        f"Time to a median within 1% of the envelope: {reached(best_ours, 'ours')}, "
        f"{reached(best_fb, 'foolbox')}."
    )
    if best_ours:
        ratios["ours_to_1pct_seconds"] = best_ours[1]
    if best_ours and best_fb:
        ratios["time_to_1pct_ratio"] = best_ours[1] / best_fb[1]
    lines.append("")
    return lines, ratios


def early_exit_ratios(lines: list[str], steps: int) -> dict[str, float]:
    """Quality and time ÷ foolbox of the early-exit rows, read back from a model's table rows."""
    rows: dict[str, list[str]] = {}
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8:
            rows[cells[0]] = cells
    out: dict[str, float] = {}
    for attack in ("ddn", "fmn"):
        early, theirs = rows.get(f"ours {attack} {steps} early exit"), rows.get(f"fb {attack} {steps}")
        if early and theirs:
            out[f"{attack}_early_quality"] = float(early[2])
            out[f"{attack}_early_time_ratio"] = float(early[7]) / float(theirs[7])
    return out


def cost_pair(
    model: torch.nn.Module, x: torch.Tensor, steps: int, attack: str, all_steps: bool = False
) -> list[str]:
    """Our DDN or FMN (early exit, or all steps) and foolbox's at equal steps, side by side."""
    import foolbox as fb

    with torch.no_grad():
        labels = model(x).argmax(1)
    fn, theirs = {"ddn": (ddn, fb.attacks.DDNAttack), "fmn": (fmn, fb.attacks.L2FMNAttack)}[attack]
    a = ours(fn, model, x, labels, steps=steps, patience=None if all_steps else max(50, steps // 10))
    b = run_foolbox(theirs(steps=steps), model, x, labels)
    env = torch.minimum(a["distance"], b["distance"])
    rows = []
    label = f"ours {attack} {steps}" + ("" if all_steps else " early exit")
    for key, r in ((label, a), (f"fb {attack} {steps}", b)):
        rows.append(
            f"| {key} | {median(r['distance']):.4f} | {median(r['distance']) / median(env):.4f} | "
            f"{float(torch.isfinite(r['distance']).float().mean()):.1%} | {r['forwards'] / len(x):.0f} | "
            f"{r['backwards'] / len(x):.0f} | {r['seconds']:.1f} |"
        )
    rows.append(f"| **time ratio ours ÷ foolbox** | | | | | | **{a['seconds'] / b['seconds']:.2f}** |")
    return rows


# ---------------------------------------------------------------------------------------------
# Per-norm envelope (issue 17): the L∞ / L1 (or L2) ensemble against every peer attack of that norm


NORM_NAMES = {"2": 2.0, "inf": math.inf, "1": 1.0}
AA_NORMS = {2.0: "L2", math.inf: "Linf", 1.0: "L1"}


def pname(norm: float) -> str:
    return "∞" if math.isinf(norm) else f"{norm:g}"


def peer_runs(norm: float, steps: int, fab_t: bool = False) -> dict[str, Any]:
    """The peer attacks of the Lp ``norm`` that are installed, as ``key -> fn(model, x, labels)``:
    foolbox 3.3.4 (FMN, L∞ DeepFool, L1 EAD), pyautoattack 0.2.0 (FAB untargeted, and with
    ``fab_t`` FAB-T against the 9 highest other logits, 100 iterations each) and adv-lib 0.2.8 (FMN, FAB, ALMA-L1 /
    L2, DDN); FMN, DDN, ALMA and EAD at ``steps`` steps (EAD: 5 binary-search rounds)."""
    rows: dict[str, Any] = {}
    try:
        import foolbox as fb

        fbs = {
            "fmn": {
                2.0: fb.attacks.L2FMNAttack,
                math.inf: fb.attacks.LInfFMNAttack,
                1.0: fb.attacks.L1FMNAttack,
            },
            "deepfool": {2.0: fb.attacks.L2DeepFoolAttack, math.inf: fb.attacks.LinfDeepFoolAttack},
        }
        rows[f"fb fmn {steps}"] = lambda m, x, y: run_foolbox(fbs["fmn"][norm](steps=steps), m, x, y, norm)
        if norm in fbs["deepfool"]:
            rows["fb deepfool"] = lambda m, x, y: run_foolbox(fbs["deepfool"][norm](steps=50), m, x, y, norm)
        if norm == 1:
            ead = fb.attacks.EADAttack(binary_search_steps=5, steps=steps // 5, initial_const=0.1)
            rows[f"fb ead 5x{steps // 5}"] = lambda m, x, y: run_foolbox(ead, m, x, y, norm)
    except ImportError:
        print("  foolbox not installed: its rows are skipped", file=sys.stderr)
    try:
        from pyautoattack.fab_pt import FABAttack_PT

        def aa_fab(targets: int) -> Any:
            def run(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
                def call(cm: torch.nn.Module) -> torch.Tensor:
                    fab = FABAttack_PT(cm, norm=AA_NORMS[norm], n_restarts=1, n_iter=100, eps=1e3, seed=0)
                    best, best_d = x.clone(), torch.full((len(x),), math.inf)
                    for target in range(2, 2 + targets) if targets else [None]:
                        fab.target_class = target
                        adv = fab.attack_single_run(x, y, use_rand_start=False, is_targeted=bool(targets))
                        d = verified_distance(m, x, adv, y, norm)
                        better = d < best_d
                        best[better], best_d[better] = adv[better].clamp(0, 1), d[better]
                    return best

                return run_peer(call, m, x, y, norm)

            return run

        rows["aa fab 100"] = aa_fab(0)
        if fab_t:
            rows["aa fab-t 9x100"] = aa_fab(9)
    except ImportError:
        print("  pyautoattack not installed: its rows are skipped", file=sys.stderr)
    try:
        from adv_lib.attacks import alma as al_alma
        from adv_lib.attacks import ddn as al_ddn
        from adv_lib.attacks import fab as al_fab
        from adv_lib.attacks import fmn as al_fmn

        def adv(fn: Any, **kw: Any) -> Any:
            return lambda m, x, y: run_peer(lambda cm: fn(cm, x, y, **kw), m, x, y, norm)

        rows[f"advlib fmn {steps}"] = adv(al_fmn, norm=norm, steps=steps)
        rows["advlib fab 100"] = adv(al_fab, norm=norm, n_iter=100)
        if norm in (1.0, 2.0):
            rows[f"advlib alma {steps}"] = adv(al_alma, distance=f"l{norm:g}", num_steps=steps)
        if norm == 2:
            rows[f"advlib ddn {steps}"] = adv(al_ddn, steps=steps)
    except ImportError:
        print(
            "  adv-lib not installed (`make peers` installs it): its rows are skipped",
            file=sys.stderr,
        )
    return rows


def run_ensemble(
    model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, norm: float, steps: int
) -> dict[str, dict[str, Any]]:
    """``robustness(norm=...)`` at the standard budget, and each of its runs' own verified result
    (rows ``ours standard › LABEL``; their seconds and counts are the run's own)."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = robustness(model, x, labels, norm=norm, budget="standard", steps=steps, quiet=True)
    rows = {
        "ours robustness standard": {
            "distance": r.distance,
            "seconds": time.perf_counter() - start,
            "forwards": r.forwards,
            "backwards": r.backwards,
        }
    }
    for label, part in (r.per_attack or {}).items():
        rows[f"ours standard › {label}"] = {
            "distance": part.distance,
            "seconds": part.seconds,
            "forwards": part.forwards,
            "backwards": part.backwards,
        }
    return rows


def lp_cache(name: str, norm: float, steps: int, first: int) -> Path:
    return (
        CACHE / f"attacks_lp_{name}_L{'inf' if math.isinf(norm) else f'{norm:g}'}_s{steps}_from{first}.json"
    )


def current_commit() -> str:
    """The short commit hash of the working tree (with ``+`` if it has uncommitted changes)."""
    import subprocess

    def git(*a: str) -> str:
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + ("+" if git("status", "--porcelain", "src") else "")


#: The commit of the code this process runs (taken at start: later commits do not change it).
PROCESS_COMMIT = current_commit()


def bench_norm_chunk(
    name: str,
    model: torch.nn.Module,
    x: torch.Tensor,
    norm: float,
    steps: int,
    key: str,
    path: Path,
    rerun_ours: bool = False,
) -> None:
    """Every run of the Lp ``norm`` on one chunk of images; each run's per-sample results are
    cached as soon as it ends (a killed run resumes where it stopped), with the commit that
    computed it. ``rerun_ours``: recompute our rows made at another commit (after a change of
    the attacks; the peers' rows do not depend on our code); the replaced ensemble stays in the
    envelope as the row ``ours robustness standard @COMMIT``, so that a change that loses some
    samples shows."""
    cache = json.loads(path.read_text()) if path.exists() else {}
    done = cache.setdefault(key, {})
    commit = PROCESS_COMMIT
    if rerun_ours:
        for row in [r for r in done if r.startswith("ours") and done[r].get("commit") != commit]:
            if row == "ours robustness standard":
                done[f"{row} @{done[row].get('commit')}"] = done[row]
            if "@" not in row:
                del done[row]
    with torch.no_grad():
        labels = model(x).argmax(1)
    runs: dict[str, Any] = {"ours robustness standard": lambda m, xx, y: run_ensemble(m, xx, y, norm, steps)}
    runs.update(peer_runs(norm, steps))
    for label, fn in runs.items():
        if label in done:
            continue
        out = fn(model, x, labels)
        for row, r in (out if label == "ours robustness standard" else {label: out}).items():
            done[row] = {k: v.tolist() if isinstance(v, torch.Tensor) else v for k, v in r.items()}
            done[row]["commit"] = commit
            print(
                f"  {name} L{pname(norm)} {key} {row:34s} median {median(r['distance']):.4f} "
                f"{r['seconds']:7.1f}s fwd/sample {r['forwards'] / len(x):7.1f}",
                file=sys.stderr,
                flush=True,
            )
        from salign._io import write_text_atomic

        write_text_atomic(path, json.dumps(cache))


#: Random starts of the APGD check: seed 0 is the issue's check, the others show how much of a
#: zero is luck (each seed: one start of APGD-CE and one of APGD-DLR).
CHECK_SEEDS = 5


def budget_check(
    model: torch.nn.Module, x: torch.Tensor, ours: torch.Tensor, norm: float, path: Path
) -> dict[str, Any]:
    """pyautoattack's APGD-CE and APGD-DLR (100 iterations each) at ε = our median, on the samples
    we put farther than ε, from :data:`CHECK_SEEDS` random starts: any they break is a sample our
    minimal-norm estimate missed."""
    from pyautoattack.autopgd_base import APGDAttack

    eps = median(ours)
    key = f"apgd|{len(x)}|{eps:.9g}|seeds{CHECK_SEEDS}"
    cache = json.loads(path.read_text()) if path.exists() else {}
    if key not in cache:
        with torch.no_grad():
            labels = model(x).argmax(1)
        farther = (ours > eps).nonzero().squeeze(1)
        broken = torch.zeros(CHECK_SEEDS, len(farther), dtype=torch.bool)
        start = time.perf_counter()
        for seed in range(CHECK_SEEDS):
            for loss in ("ce", "dlr"):
                attack = APGDAttack(
                    model.eval(), norm=AA_NORMS[norm], eps=eps, n_iter=100, loss=loss, seed=seed
                )
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    adv = attack.perturb(x[farther].clone(), labels[farther].clone())
                d = verified_distance(model, x[farther], adv, labels[farther], norm)
                broken[seed] |= d <= eps * (1 + 1e-6)
        anywhere = broken.any(0)
        cache[key] = {
            "eps": eps,
            "farther": len(farther),
            "broken": int(broken[0].sum()),
            "ours_over_eps": [float(r) for r in ours[farther[broken[0]]] / eps],
            "broken_per_seed": [int(b.sum()) for b in broken],
            "broken_any_seed": int(anywhere.sum()),
            "ours_over_eps_any_seed": [float(r) for r in ours[farther[anywhere]] / eps],
            "seconds": time.perf_counter() - start,
        }
        from salign._io import write_text_atomic

        write_text_atomic(path, json.dumps(cache))
    return cache[key]


def norm_table(
    name: str, norm: float, cache: dict[str, Any], model: torch.nn.Module, x_all: torch.Tensor, path: Path
) -> tuple[list[str], dict[str, Any]]:
    """The table of one model and norm over the chunks whose runs all ended."""
    chunks = sorted((k for k in cache if k.startswith("chunk")), key=lambda k: int(k.split()[1]))
    complete = [k for k in chunks if "ours robustness standard" in cache[k]]
    labels = [r for r in cache[complete[0]] if all(r in cache[k] for k in complete)] if complete else []
    if not labels:
        return [], {}
    first = [int(k.split()[1]) for k in complete]
    size = int(complete[0].split()[2])
    idx = torch.cat([torch.arange(f, f + size) for f in first])
    runs = {
        r: {
            "distance": torch.cat([torch.tensor(cache[k][r]["distance"]) for k in complete]),
            **{c: sum(cache[k][r][c] for k in complete) for c in ("seconds", "forwards", "backwards")},
        }
        for r in labels
    }
    n = len(idx)
    env = torch.stack([r["distance"] for r in runs.values()]).amin(0)
    env_med = median(env)
    ours = runs["ours robustness standard"]["distance"]
    lines = [
        f"### SmallNet {name}, L{pname(norm)}: n = {n}, median of the per-sample best (envelope) = {env_med:.4f}",
        "",
        "| attack | median ρ | ÷ envelope median | within 1% of per-sample best | success | fwd/sample | bwd/sample | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in runs.items():
        d = r["distance"]
        within = float((d <= env * 1.01).float().mean())
        lines.append(
            f"| {key} | {median(d):.4f} | {median(d) / env_med:.4f} | {within:.1%} | "
            f"{float(torch.isfinite(d).float().mean()):.1%} | {r['forwards'] / n:.0f} | {r['backwards'] / n:.0f} | "
            f"{r['seconds']:.1f} |"
        )
    peers = torch.stack([r["distance"] for k, r in runs.items() if not k.startswith("ours")]).amin(0)
    summary: dict[str, Any] = {
        "n": n,
        "quality": median(ours) / env_med,
        "envelope": env_med,
        "vs_peers": median(ours) / median(peers),
    }
    try:
        check = budget_check(model, x_all[idx], ours, norm, path)
        summary["apgd"] = check
        ratios = check["ours_over_eps_any_seed"]
        lines += [
            "",
            f"pyautoattack APGD-CE + APGD-DLR (L{pname(norm)}, 100 iterations each, {CHECK_SEEDS} random "
            f"starts of each, {check['seconds']:.0f} s) at ε = our median {check['eps']:.4g}: from seed 0 they "
            f"break **{check['broken']}** of the {check['farther']} samples we put farther than ε; per seed "
            f"{' / '.join(str(b) for b in check['broken_per_seed'])}, **{check['broken_any_seed']}** from any "
            "seed" + (f" (ours ÷ ε there: {', '.join(f'{r:.5f}' for r in ratios)})." if ratios else "."),
        ]
    except ImportError:
        lines += ["", "pyautoattack not installed: no APGD check."]
    return [*lines, ""], summary


def main_norms(args: argparse.Namespace) -> None:
    """``--norms``: the per-norm envelope, chunk by chunk (every model and norm on images
    first … first + chunk − 1, then the next chunk), then the report of the chunks that ended."""
    norms = [NORM_NAMES[s.strip().lower()] for s in args.norms.split(",")]
    names = args.models.split(",")
    models = {n: get_model(0.0 if n == "plain" else args.lam, args.epochs) for n in names}
    x_all, _ = salign.data.load("mnist", "test")
    for first in [] if args.assemble else range(args.first, args.first + args.n, args.chunk):
        for name in names:
            for norm in norms:
                x = x_all[first : first + args.chunk]
                key = f"chunk {first} {args.chunk}"
                path = lp_cache(name, norm, args.steps, 0)
                bench_norm_chunk(name, models[name], x, norm, args.steps, key, path, args.rerun_ours)
    body: list[str] = []
    summary: list[str] = []
    commits: dict[str, set[str]] = {"ours": set(), "peers": set()}
    for norm in norms:
        for name in names:
            path = lp_cache(name, norm, args.steps, 0)
            cache = json.loads(path.read_text()) if path.exists() else {}
            for chunk in (v for k, v in cache.items() if k.startswith("chunk")):
                for row, r in chunk.items():
                    commits["ours" if row.startswith("ours") else "peers"].add(r.get("commit", "c5adfdc"))
            lines, s = norm_table(name, norm, cache, models[name], x_all, path)
            body += lines
            if s:
                apgd = s.get("apgd")
                summary.append(
                    f"| {name} | L{pname(norm)} | {s['n']} | {s['envelope']:.4f} | **{s['quality']:.4f}** | "
                    f"{s['vs_peers']:.4f} | "
                    + (
                        f"{apgd['broken']} of {apgd['farther']} | {apgd['broken_any_seed']} |"
                        if apgd
                        else "– | – |"
                    )
                )
    cmd = " ".join([".venv/bin/python benchmarks/bench_attacks.py", *sys.argv[1:]])
    head = [
        "# Attacks in L∞ and L1: the ensembles against every peer attack (issue 17)",
        "",
        f"Command: `{cmd.strip()}` (per-sample results cached in "
        "benchmarks/.cache/attacks_lp_*.json, chunk by chunk; `--assemble` rewrites this page "
        "from them).  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()}; our rows computed at "
        f"commit {', '.join(sorted(commits['ours']))}, the peers' at {', '.join(sorted(commits['peers']))}. "
        "The runs: one process per norm (`--norms inf` and `--norms 1`, with the other arguments "
        "above but `--assemble`), side by side on 2 shared cores, so the seconds show where the "
        "time goes, not what an idle core gives; the cost at equal steps is measured on its own in "
        "docs/benchmarks/attacks-cost.md. `--rerun-ours` recomputes our rows after a change of the "
        "attacks.",
        "",
        "The benchmark SmallNets committed in benchmarks/models (plain and λ = 1; the L2 page "
        "above ran on an earlier training of the same recipe), MNIST test images from "
        f"{args.first}, ρ away from the predicted class. `ours robustness standard` is "
        "`robustness(norm=p)` at the standard budget (DeepFool, FAB-T against the 9 highest other "
        "logits with 100 iterations each, FMN warm-started from the best point, in L1 then ALMA "
        "with the L1 distance warm-started likewise, a cold FMN, in L1 a full-length FMN with the "
        "paper's options, the short chain of FMN (L1: and ALMA), then three rounds of APGD probes, "
        "each followed by a short descent of FMN (L1: and ALMA; 100 steps) from the best points: "
        "APGD-CE and APGD-DLR at 0.999 × each sample's best distance, then two more rounds at "
        "0.9999 ×, `salign.attacks.ensemble.PROBES`); its rows "
        "`ours standard › RUN` are its runs' own results. Peers: foolbox "
        "3.3.4 (FMN, DeepFool L∞, EAD L1 at 5 binary-search rounds of steps/5), pyautoattack 0.2.0 "
        "(FAB, one run of 100 iterations: its FAB-T is left out for time, ours runs in the "
        "ensemble), adv-lib 0.2.8 (FMN, FAB with its defaults, ALMA-L1), all at `--steps`. Every point is "
        "verified the same way (clip, re-forward, another class). Envelope = per-sample best over "
        "every row; `÷ best peer` compares the ensemble's median with the median of the per-sample "
        "best over the peers' rows only. Goal: the ensemble's median ≤ 1.01 × the envelope's "
        "median; APGD at ε = our median (pyautoattack's, one random start, seed 0) breaks none "
        "of the samples we put farther than ε.",
        "",
        "The APGD check (issue 17; first written for the run of 2026-12-07 05:05 on the earlier "
        "nets, whose numbers this paragraph quotes). With the probes alone (three rounds, no "
        "descent) it broke 1 / 1 / 0 / 2 samples from seed 0, all 0.1–0.5% beyond ε: on such a "
        "sample APGD succeeds from some random starts only, and which loss works depends on the "
        "sample. Where a probe does succeed, its point often lies in another basin of the "
        "boundary, and a short FMN from it goes much further down: with a descent after each "
        "round the medians above dropped by 0.8% / 1.2% (L∞) and 2.4% / 3.6% (L1) for 7–11% more "
        "forwards, and seed 0 breaks nothing. The other four seeds show what is left: in L∞ one "
        "sample 0.02% beyond ε, in L1 samples 0.4–18% beyond it, so our L1 estimate is still "
        "loose on a few samples (the last round of probes still moved some by several percent; "
        '`budget="thorough"` runs five rounds). APGD-L1 starts as the authors\' code does (a '
        "standard Gaussian projected onto the ball, so a sparse start; it was a dense one scaled "
        "to ε before this run).",
        "",
        "ALMA with the L1 distance in the L1 ensemble (commit 9acd267). At commit b6646e9 the L1 "
        "ensemble missed the goal on the plain net: 1.0137 × the envelope's median, with 12 of the "
        "200 samples more than 0.1% above a peer's point, 10 of them adv-lib's ALMA-L1 (up to 17% "
        "closer, on test image 354); the median fell in a gap of the sorted distances (ours 5.391 at "
        "rank 100, the envelope's 5.318), so it moved by more than the 4% of samples farther than "
        "1% from their best. `ALMA(norm=1)` runs the authors' algorithm and defaults with ‖δ‖₁ "
        "(alone, cold, on these 200 images its distances match adv-lib's: median per-sample ratio "
        "0.9996); the L1 plan runs it after FMN, warm-started from the best point, in the short "
        "chain and in the descents after each round of probes. Our L1 rows were recomputed with it "
        "(`--norms 1 --rerun-ours`, then `--assemble`), and the ensemble of b6646e9, rerun at that "
        "commit on the same chunks (its medians reproduce the earlier page's), stays in the "
        "envelope as the row `ours robustness standard @b6646e9`. Plain net: 1.0137 → **1.0000**, "
        "85.5% → 96.5% of samples within 1% of their best, 0.916 × the best peer's median. "
        "Penalised net: the median is the same sample at the same distance (6.8369), **1.0056** "
        "both times, but 79.0% → 92.0% within 1%. Per sample, the new ensemble is more than 0.1% "
        "closer than the old on 28 / 39 samples and farther on 6 / 9 (up to 8% / 15%): ALMA moves "
        "the best points, and the probes after it (random starts of their own) then land elsewhere; "
        "the path an ensemble takes still decides some samples. APGD at ε = our median breaks "
        "none of ours from seed 0, and 0 / 2 from any of five seeds (2.2% and 1.6% beyond ε on the "
        "penalised net). Cost: 6090 / 6137 forwards per sample instead of 4755 / 4789 (+28%).",
        "",
        f"| model | norm | n | envelope median | ensemble ÷ envelope [≤ 1.01] | ÷ best peer | APGD breaks, seed 0 [0] | from any of {CHECK_SEEDS} seeds |",
        "|---|---|---|---|---|---|---|---|",
        *summary,
        "",
    ]
    text = "\n".join([*head, *body])
    print(text)
    from salign._io import write_text_atomic

    write_text_atomic(args.out if args.out != DOC else DOC.with_name("attacks-lp.md"), text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--first", type=int, default=200, help="index of the first MNIST test image")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument(
        "--sweep", type=str, default="30,50,100,300", help="extra DDN step counts (ours, foolbox)"
    )
    parser.add_argument("--lam", type=float, default=1.0, help="penalty weight of the regularised model")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", type=str, default="plain,gradreg")
    parser.add_argument(
        "--assemble", type=str, default="", help="only write the report from cached per-model runs"
    )
    parser.add_argument(
        "--cost-only",
        type=str,
        default="",
        help="ddn or fmn: only ours (early exit) vs foolbox at equal steps, on --models' first model",
    )
    parser.add_argument("--all-steps", action="store_true", help="--cost-only: ours runs all its steps")
    parser.add_argument("--quick", action="store_true", help="n=40, steps=200, sweep 30")
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument(
        "--norms",
        type=str,
        default="",
        help="e.g. inf,1: the per-norm envelope instead (writes docs/benchmarks/attacks-lp.md)",
    )
    parser.add_argument("--chunk", type=int, default=25, help="--norms: images per chunk")
    parser.add_argument(
        "--rerun-ours", action="store_true", help="--norms: recompute our rows made at another commit"
    )
    args = parser.parse_args()
    if args.norms:
        torch.set_num_threads(args.threads)
        torch.manual_seed(0)
        main_norms(args)
        return
    if args.cost_only:
        torch.set_num_threads(args.threads)
        x_all, _ = salign.data.load("mnist", "test")
        name = args.models.split(",")[0]
        model = get_model(0.0 if name == "plain" else args.lam, args.epochs)
        x = x_all[args.first : args.first + args.n]
        rows = cost_pair(model, x, args.steps, args.cost_only, args.all_steps)
        tag = f"{name}_{args.cost_only}{'_all' if args.all_steps else ''}_n{args.n}_s{args.steps}_from{args.first}"
        (CACHE / f"cost_{tag}.json").write_text(json.dumps(rows))
        print("\n".join(rows))
        return
    if args.quick:
        args.n, args.steps, args.sweep = 40, 200, "30"
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sweep = [int(s) for s in args.sweep.split(",") if s]
    x_all, _ = salign.data.load("mnist", "test")
    x = x_all[args.first : args.first + args.n]
    lines: list[str] = []
    summary: dict[str, dict[str, float]] = {}
    CACHE.mkdir(parents=True, exist_ok=True)
    for name in [] if args.assemble else args.models.split(","):
        lam = 0.0 if name == "plain" else args.lam
        model = get_model(lam, args.epochs)
        out = bench_model(name, model, x, args.steps, sweep)
        body, ratios = table(f"SmallNet {name} (λ = {lam:g})", out, args.n, args.steps)
        # per-sample distances and costs too, so that later runs can be compared sample by sample
        part = {
            "lines": body,
            "ratios": ratios,
            "runs": {
                key: {
                    "distance": r["distance"].tolist(),
                    "seconds": r["seconds"],
                    "forwards": r["forwards"],
                    "backwards": r["backwards"],
                }
                for key, r in out["runs"].items()
            },
        }
        cache_path(name, args.n, args.steps, args.first).write_text(json.dumps(part))
    for name in (args.assemble or args.models).split(","):
        part = json.loads(cache_path(name, args.n, args.steps, args.first).read_text())
        lines += part["lines"]
        summary[name] = {**part["ratios"], **early_exit_ratios(part["lines"], args.steps)}
    cmd = " ".join([".venv/bin/python benchmarks/bench_attacks.py", *sys.argv[1:]])
    head = [
        "# Attacks: quality and cost vs foolbox 3.3.4 and adv-lib 0.2.8",
        "",
        f"Command: `{cmd.strip()}`  ",
        *(
            [
                "(the per-model runs, in parallel: the same command with `--models NAME` instead of "
                "`--assemble ...`; each writes benchmarks/.cache/attacks_NAME_n*_s*.json)  "
            ]
            if args.assemble
            else []
        ),
        f"MNIST test images {args.first}–{args.first + args.n - 1}.  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; torch {torch.__version__}, "
        f"{args.threads} thread(s), {platform.processor() or platform.machine()} (shared, loaded CPU: "
        "timings are noisy).  ",
        "Models: the SmallNets committed in benchmarks/models (commit 98bcba5).",
        "",
        "Distances are verified by re-forwarding the clipped point for every attack; labels = predicted "
        "class (the paper's ρ). `fwd/bwd per sample` are counted by one wrapper around the model "
        f"for every attack. Steps = {args.steps}; foolbox C&W runs 5 binary-search steps × {args.steps // 5} "
        "steps (initial c = 0.1).",
        "",
        "Our attacks here: `ddn`/`fmn`/`alma` alone run as the ensemble runs them (salign.attacks.TUNED "
        "options, line search, polish) and all their steps (equal steps with foolbox); the `paper` rows run "
        "`DDN()` / `FMN(guarded_search=False)` with the papers' defaults and no refinement; the `advlib` rows "
        "run adv-lib's attacks with its defaults at the same steps (FAB: 100 iterations); "
        "the `early exit` rows use patience = max(50, steps/10) (0.1% relative improvement; a stalled "
        "sample first jumps to the last `patience` steps of its step-size schedule, restarting from "
        "its best point, and stops if it stalls there). Every attack ends with a line search onto the boundary and "
        "2 polish rounds (a DeepFool step from x with the gradients at the best point, up to 10 "
        "backwards per round) — all counted in fwd/bwd and seconds. `ours robustness` = DeepFool, "
        "DDN and ALMA from x, FMN warm-started from the best point so far, a short FAB-T from x (the "
        "2 highest other logits, steps/33 iterations each), then a restart chain of DDN and FMN "
        "with steps/10 steps each from DeepFool's point and ALMA with steps/10 from the best point so "
        "far, early exit (not for ALMA and FAB), one final "
        "polish (`fast`: 100 steps, ALMA warm-started, no restart chain). `ours ddn k` and `ours ddn k no polish` rows (patience = max(10, k/5)) and `fb ddn k` / "
        "`fb fmn k` rows are the step sweep used for the time-to-target comparison.",
        "",
        "## Summary (goals in brackets)",
        "",
        "| model | ensemble ÷ env. [≤1.01] | DDN [≤1.03] | FMN [≤1.03] | ALMA [≤1.03] | DDN time ÷ fb [≤0.8] | "
        "FMN time ÷ fb [≤0.8] | time to 1% ÷ fastest fb [≤0.33] |",
        "|---|---|---|---|---|---|---|---|",
    ]
    nan = float("nan")

    def to_target(r: dict[str, float]) -> str:
        if "time_to_1pct_ratio" in r:
            return f"{r['time_to_1pct_ratio']:.2f}"
        return "no foolbox run got there" if "ours_to_1pct_seconds" in r else "ours never got there"

    for name, r in summary.items():
        head.append(
            f"| {name} | {r['standard_quality']:.4f} | {r['ddn_quality']:.4f} "
            f"(early exit {r.get('ddn_early_quality', nan):.4f}) | {r['fmn_quality']:.4f} "
            f"(early exit {r.get('fmn_early_quality', nan):.4f}) | {r['alma_quality']:.4f} | "
            f"{r['ddn_time_ratio']:.2f} (early exit {r.get('ddn_early_time_ratio', nan):.2f}) | "
            f"{r['fmn_time_ratio']:.2f} (early exit {r.get('fmn_early_time_ratio', nan):.2f}) | "
            f"{to_target(r)} |"
        )
    text = "\n".join([*head, "", *lines])
    print(text)
    text += handwritten_sections(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from salign._io import write_text_atomic

    write_text_atomic(args.out, text + "\n")
    print(json.dumps(summary, indent=1), file=sys.stderr)


def handwritten_sections(page: Path, markers: tuple[str, ...] = ("written by hand",)) -> str:
    """The sections of ``page`` written by hand (from the first ``## `` heading that contains
    one of ``markers`` to the end), kept when the generated part is rewritten; "" if none."""
    if not page.exists():
        return ""
    lines = page.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if line.startswith("## ") and any(m in line for m in markers):
            return "\n\n" + "\n".join(lines[i:]).rstrip("\n")
    return ""


if __name__ == "__main__":
    main()

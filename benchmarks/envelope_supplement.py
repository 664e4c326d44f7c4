"""Supplementary rows for bench_attacks.py: more of our attack variants on the same images.

The "envelope" of bench_attacks.py (per-sample minimum over every run) is only as strong as the
runs in it. This adds variants whose local minima differ (DDN with cross-entropy throughout, DDN
on the margin, FMN with the paper's step size 1, each 1000 steps; the cross-entropy DDN step sweep; the
ensemble as it was before those defaults changed), stores their per-sample
distances next to the main run's in benchmarks/.cache/attacks_NAME_n200_s1000.json, and prints
every goal ratio against the enlarged envelope.

    .venv/bin/python benchmarks/envelope_supplement.py gradreg     # or: plain (after bench_attacks.py)
    .venv/bin/python benchmarks/envelope_supplement.py gradreg 0   # the images of an older run (0–199)

After a default changes, ``--rerun TAG`` runs the main table's rows of our ALMA and ensembles
(and the short ensembles above) again with the current code; the earlier results stay in the
envelope as supplementary rows named "KEY (TAG)", and the model's table lines are rebuilt
(then ``bench_attacks.py --assemble plain,gradreg`` rewrites the report):

    .venv/bin/python benchmarks/envelope_supplement.py plain 200 --rerun "ALMA init 1.0"

``--only "KEY,KEY"`` reruns just those rows of the main table and stops there (no supplementary
rows, no summary): for a default that changes one row, e.g. the standard ensemble:

    .venv/bin/python benchmarks/envelope_supplement.py plain 200 --rerun "ALMA warm" --only "ours robustness standard"

``--foolbox "ddn 3000,cw 5x600"`` adds longer foolbox runs: when no foolbox run reaches a median
within 1% of the envelope, their time to it is only bounded below by their longest runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import salign
from bench_attacks import (
    REFINED,
    alma,
    cache_path,
    get_model,
    ours,
    run_foolbox,
    table,
    verified_distance,
)
from salign.attacks import PlannedRun, default_plan, robustness, tuned_attack


def previous_ensemble(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: object) -> object:
    """`robustness` as it was before DDN's margin tail and FMN's step 10: DDN on cross-entropy,
    FMN with step 1, ALMA warm-started, no cold FMN copy (the runs of the previous envelope)."""
    budget = str(kw.pop("budget"))
    steps = {"fast": 100, "standard": 1000}[budget]
    extra = {"ddn": {"loss": "ce"}, "fmn": {"alpha_init": 1.0}}
    runs = [
        dataclasses.replace(r, attack=tuned_attack(r.label, steps, **extra.get(r.label, {})))
        for r in default_plan(["deepfool", "ddn", "fmn", "alma"], "fast", steps, "auto")
    ]
    return robustness(model, x, labels, quiet=True, plan=runs, **kw)  # type: ignore[arg-type]


def cold_fmn_ensemble(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: object) -> object:
    """`robustness` as it was before the restart chain: ``standard`` added a cold 1000-step FMN."""
    kw.pop("budget")
    main = default_plan(["deepfool", "ddn", "fmn", "alma"], "fast", 1000, "auto")
    cold = PlannedRun("fmn_cold", tuned_attack("fmn", 1000), polish="best", patience=100)
    runs = [*main[:-1], dataclasses.replace(main[-1], polish="none"), cold]
    return robustness(model, x, labels, quiet=True, plan=runs, **kw)  # type: ignore[arg-type]


def tuned_ddn(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: object) -> object:
    """The ensemble's DDN with some options changed (e.g. ``loss``), refined as in the ensemble."""
    steps = int(kw.pop("steps"))  # type: ignore[call-overload]
    options = {k: kw.pop(k) for k in list(kw) if k in ("loss", "gamma")}
    return tuned_attack("ddn", steps, **options)(model, x, labels, **{**REFINED, **kw})  # type: ignore[arg-type]


def tuned_fmn(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: object) -> object:
    """The ensemble's FMN with some options changed (e.g. ``alpha_init``), refined as in the ensemble."""
    steps = int(kw.pop("steps"))  # type: ignore[call-overload]
    options = {k: kw.pop(k) for k in list(kw) if k in ("alpha_init",)}
    return tuned_attack("fmn", steps, **options)(model, x, labels, **{**REFINED, **kw})  # type: ignore[arg-type]


EXTRA = {
    "ours ddn 1000 loss=ce": (tuned_ddn, {"loss": "ce", "steps": 1000}),
    "ours ddn 1000 loss=margin": (tuned_ddn, {"loss": "margin", "steps": 1000}),
    "ours fmn 1000 alpha_init=1": (tuned_fmn, {"alpha_init": 1.0, "steps": 1000}),
    **{
        f"ours ddn {s} loss=ce": (tuned_ddn, {"loss": "ce", "steps": s, "patience": max(10, s // 5)})
        for s in (30, 50, 100, 300)
    },
    "previous robustness fast": (previous_ensemble, {"budget": "fast"}),
    "previous robustness standard": (previous_ensemble, {"budget": "standard"}),
    # the standard budget before the restart chain replaced its cold FMN copy
    "robustness standard with cold FMN copy": (cold_fmn_ensemble, {"budget": "standard"}),
    # shorter ensembles: the time to a median within 1% of the envelope
    **{
        f"ours robustness fast {s} steps": (robustness, {"budget": "fast", "steps": s, "quiet": True})
        for s in (30, 50)
    },
}
# main-table rows that ``--rerun`` runs again with the current code (as bench_attacks.py runs them)
RERUN = {
    "ours alma 1000": (alma, {"steps": 1000}),
    "ours robustness standard": (robustness, {"budget": "standard", "steps": 1000, "quiet": True}),
    "ours robustness fast": (robustness, {"budget": "fast", "quiet": True}),
}
RERUN_EXTRA = ("ours robustness fast 30 steps", "ours robustness fast 50 steps")
GOALS = {
    "standard_quality": "ours robustness standard",
    "ddn_quality": "ours ddn 1000",
    "fmn_quality": "ours fmn 1000",
    "alma_quality": "ours alma 1000",
    "ddn_early_quality": "ours ddn 1000 early exit",
    "fmn_early_quality": "ours fmn 1000 early exit",
}


def foolbox_attack(spec: str) -> object:
    """A foolbox attack from "ddn STEPS", "fmn STEPS" or "cw ROUNDSxSTEPS" (bench_attacks.py's settings)."""
    import foolbox as fb

    attack, size = spec.split()
    if attack == "cw":
        rounds, steps = (int(v) for v in size.split("x"))
        return fb.attacks.L2CarliniWagnerAttack(binary_search_steps=rounds, steps=steps, initial_const=0.1)
    return {"ddn": fb.attacks.DDNAttack, "fmn": fb.attacks.L2FMNAttack}[attack](steps=int(size))


def run_fab(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, iterations: int) -> dict:
    """pyautoattack 0.2.0's FAB (Croce & Hein 2020), L2, untargeted, one run from x: its smallest
    adversarial point per sample (``perturb`` would keep only points inside a fixed ε)."""
    from pyautoattack.fab_pt import FABAttack_PT

    fab = FABAttack_PT(model, norm="L2", n_restarts=1, n_iter=iterations, eps=10.0, seed=0)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adv = fab.attack_single_run(x, labels, use_rand_start=False, is_targeted=False)
    seconds = time.perf_counter() - start
    return {"distance": verified_distance(model, x, adv, labels).tolist(), "seconds": seconds}


def rerun(
    name: str,
    part: dict,
    path: Path,
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    tag: str,
    only: list[str] | None = None,
) -> None:
    """Run the RERUN rows (or those in ``only``) again with the current code, keep the old ones as
    "KEY (tag)" supplementary rows, drop the RERUN_EXTRA rows (the loop of main() runs them again;
    not with ``only``) and rebuild the table."""
    extra = part["extra_runs"]
    for key in RERUN_EXTRA if only is None else ():
        if key in extra and f"{key} ({tag})" not in extra:
            extra[f"{key} ({tag})"] = extra.pop(key)
    for key, (fn, kw) in RERUN.items():
        if only is not None and key not in only:
            continue
        if f"{key} ({tag})" in extra:
            continue  # already rerun under this tag
        old = part["runs"][key]
        r = ours(fn, model, x, labels, **kw)
        part["runs"][key] = {k: v.tolist() if k == "distance" else v for k, v in r.items()}
        extra[f"{key} ({tag})"] = {"distance": old["distance"], "seconds": old["seconds"]}
        print(
            f"{name} {key}: median {float(r['distance'].median()):.4f} (was "
            f"{float(torch.tensor(old['distance']).median()):.4f}), {r['seconds']:.0f} s",
            flush=True,
        )
        path.write_text(json.dumps(part))
    runs = {k: {**v, "distance": torch.tensor(v["distance"])} for k, v in part["runs"].items()}
    envelope = torch.stack([r["distance"] for r in runs.values()]).amin(0)
    lam = 0.0 if name == "plain" else 1.0
    part["lines"], part["ratios"] = table(
        f"SmallNet {name} (λ = {lam:g})", {"runs": runs, "envelope": envelope}, 200, 1000
    )
    path.write_text(json.dumps(part))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("name", nargs="?", default="gradreg", help="plain or gradreg")
    parser.add_argument("first", nargs="?", type=int, default=200, help="index of the first test image")
    parser.add_argument(
        "--rerun", default="", help="rerun our ALMA and ensemble rows; TAG names the old ones"
    )
    parser.add_argument(
        "--only", default="", help="with --rerun: only these rows (comma-separated), then stop"
    )
    parser.add_argument(
        "--foolbox",
        default="",
        help='longer foolbox runs to add, comma-separated: "ddn 3000", "fmn 3000", "cw 5x600"',
    )
    parser.add_argument(
        "--fab", type=int, default=0, help="add pyautoattack's FAB (L2, untargeted) with this many iterations"
    )
    args = parser.parse_args()
    name, first = args.name, args.first
    torch.set_num_threads(1)
    path = cache_path(name, 200, 1000, first)
    part = json.loads(path.read_text())
    model = get_model(0.0 if name == "plain" else 1.0, 1)
    x, _ = salign.data.load("mnist", "test")
    x = x[first : first + 200]
    with torch.no_grad():
        labels = model(x).argmax(1)
    extra = part.setdefault("extra_runs", {})
    only = [k.strip() for k in args.only.split(",") if k.strip()] or None
    if only and (not args.rerun or set(only) - set(RERUN)):
        raise SystemExit(f"--only needs --rerun and rows among {sorted(RERUN)}")
    if args.rerun:
        rerun(name, part, path, model, x, labels, args.rerun, only)
        if only:
            return
    for key, (fn, kw) in EXTRA.items():
        if key in extra:
            continue
        r = ours(fn, model, x, labels, **kw)
        extra[key] = {"distance": r["distance"].tolist(), "seconds": r["seconds"]}
        print(f"{name} {key}: median {float(r['distance'].median()):.4f}, {r['seconds']:.0f} s", flush=True)
        path.write_text(json.dumps(part))
    for spec in [k.strip() for k in args.foolbox.split(",") if k.strip()]:
        key = f"fb {spec}"
        if key in extra:
            continue
        r = run_foolbox(foolbox_attack(spec), model, x, labels)
        extra[key] = {"distance": r["distance"].tolist(), "seconds": r["seconds"]}
        print(f"{name} {key}: median {float(r['distance'].median()):.4f}, {r['seconds']:.0f} s", flush=True)
        path.write_text(json.dumps(part))
    if args.fab and f"aa fab {args.fab}" not in extra:
        r = run_fab(model, x, labels, args.fab)
        extra[f"aa fab {args.fab}"] = r
        print(
            f"{name} aa fab {args.fab}: median {torch.tensor(r['distance']).median():.4f}, {r['seconds']:.0f} s"
        )
        path.write_text(json.dumps(part))
    main_runs = {k: torch.tensor(v["distance"]) for k, v in part["runs"].items()}
    extra_runs = {k: torch.tensor(v["distance"]) for k, v in extra.items()}
    env_main = torch.stack(list(main_runs.values())).amin(0)
    env_all = torch.stack([*main_runs.values(), *extra_runs.values()]).amin(0)
    m_main, m_all = float(env_main.median()), float(env_all.median())
    print(
        f"{name}: envelope median {m_main:.4f} (main run, {len(main_runs)} runs) -> {m_all:.4f} "
        f"(+ {len(extra_runs)} supplementary runs)"
    )
    rows = {**{k: main_runs[v] for k, v in GOALS.items()}, **extra_runs}
    for key, d in rows.items():
        within = float((d <= env_all * 1.01).float().mean())
        print(
            f"  {key:30s} median {float(d.median()):.4f}  ÷ main envelope {float(d.median()) / m_main:.4f}"
            f"  ÷ enlarged envelope {float(d.median()) / m_all:.4f}  within 1%: {within:.1%}"
        )
    # time to a median within 1% of the enlarged envelope: our current code ("ours …" rows without
    # a "(TAG)" of an earlier default) against foolbox (every "fb …" row)
    seconds = {k: v["seconds"] for k, v in {**part["runs"], **extra}.items()}
    medians = {k: float(d.median()) for k, d in {**main_runs, **extra_runs}.items()}
    reach = {k: seconds[k] for k, m in medians.items() if m <= 1.01 * m_all}
    ours_reach = {k: t for k, t in reach.items() if k.startswith("ours ") and "(" not in k}
    fb_reach = {k: t for k, t in reach.items() if k.startswith("fb ")}
    # a foolbox attack that never reaches the band would need more time than its longest run; the
    # fastest one would need more than the shortest of those (DeepFool is left out: it stops at
    # its first adversarial point, so more steps would not move it)
    families = ("fb ddn", "fb fmn", "fb cw")
    fb_longest = min(max(t for k, t in seconds.items() if k.startswith(f)) for f in families)
    best_ours = min(ours_reach.items(), key=lambda kv: kv[1]) if ours_reach else None
    best_fb = min(fb_reach.items(), key=lambda kv: kv[1]) if fb_reach else None
    if best_ours and best_fb:
        verdict = f"ratio {best_ours[1] / best_fb[1]:.3f} ({best_fb[0]}, {best_fb[1]:.1f} s)"
    elif best_ours:
        verdict = (
            f"no foolbox run reaches it (DDN, FMN and C&W each ran up to ≥ {fb_longest:.1f} s): "
            f"ratio < {best_ours[1] / fb_longest:.3f}"
        )
    else:
        verdict = "no run of ours reaches it"
    ours_text = f"{best_ours[0]} in {best_ours[1]:.1f} s" if best_ours else "never"
    print(f"  time to a median within 1% of the enlarged envelope: ours {ours_text}; {verdict}")
    part["enlarged"] = {
        "envelope_median": m_all,
        "ratios": {k: float(d.median()) / m_all for k, d in rows.items()},
        "time_to_1pct": {"ours": best_ours, "foolbox": best_fb, "foolbox_longest_seconds": fb_longest},
    }
    path.write_text(json.dumps(part))


if __name__ == "__main__":
    main()

"""Supplementary rows for bench_attacks.py: more of our attack variants on the same images.

The "envelope" of bench_attacks.py (per-sample minimum over every run) is only as strong as the
runs in it. This adds variants whose local minima differ (DDN with cross-entropy throughout, DDN
on the margin, FMN with the paper's step size 1, each 1000 steps; the cross-entropy DDN step sweep; the
ensemble as it was before those defaults changed), stores their per-sample
distances next to the main run's in benchmarks/.cache/attacks_NAME_n200_s1000.json, and prints
every goal ratio against the enlarged envelope.

    .venv/bin/python benchmarks/envelope_supplement.py gradreg     # or: plain (after bench_attacks.py)
    .venv/bin/python benchmarks/envelope_supplement.py gradreg 0   # the images of an older run (0–199)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import salign
from bench_attacks import cache_path, get_model, ours
from salign.attacks import ddn, ensemble, fmn, robustness


def previous_ensemble(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: object) -> object:
    """`robustness` as it was before DDN's margin tail and FMN's step 10: DDN on cross-entropy,
    FMN with step 1, ALMA warm-started, no cold FMN copy (the runs of the previous envelope)."""
    saved = (dict(ensemble.ATTACKS), dict(ensemble.BUDGETS), ensemble._options)
    inner = ensemble._options

    def options(name: str, steps: int) -> dict[str, object]:
        extra = {"ddn": {"loss": "ce"}, "fmn": {"alpha_init": 1.0}}.get(name, {})
        return {**inner(name, steps), **extra}

    try:
        ensemble.ATTACKS["alma"] = (ensemble.ATTACKS["alma"][0], True)
        ensemble.BUDGETS.update({b: (s, ()) for b, (s, _) in saved[1].items()})
        ensemble._options = options
        return robustness(model, x, labels, quiet=True, **kw)
    finally:
        ensemble.ATTACKS.clear()
        ensemble.ATTACKS.update(saved[0])
        ensemble.BUDGETS.clear()
        ensemble.BUDGETS.update(saved[1])
        ensemble._options = saved[2]


def cold_fmn_ensemble(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, **kw: object) -> object:
    """`robustness` as it was before the restart chain: ``standard`` added a cold 1000-step FMN."""
    saved = dict(ensemble.BUDGETS)
    try:
        ensemble.BUDGETS["standard"] = (1000, (("fmn_cold", "fmn", {}, None),))
        return robustness(model, x, labels, quiet=True, **kw)
    finally:
        ensemble.BUDGETS.clear()
        ensemble.BUDGETS.update(saved)


EXTRA = {
    "ours ddn 1000 loss=ce": (ddn, {"loss": "ce", "steps": 1000}),
    "ours ddn 1000 loss=margin": (ddn, {"loss": "margin", "steps": 1000}),
    "ours fmn 1000 alpha_init=1": (fmn, {"alpha_init": 1.0, "steps": 1000}),
    **{
        f"ours ddn {s} loss=ce": (ddn, {"loss": "ce", "steps": s, "patience": max(10, s // 5)})
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
GOALS = {
    "standard_quality": "ours robustness standard",
    "ddn_quality": "ours ddn 1000",
    "fmn_quality": "ours fmn 1000",
    "alma_quality": "ours alma 1000",
    "ddn_early_quality": "ours ddn 1000 early exit",
    "fmn_early_quality": "ours fmn 1000 early exit",
}


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "gradreg"
    first = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    torch.set_num_threads(1)
    path = cache_path(name, 200, 1000, first)
    part = json.loads(path.read_text())
    model = get_model(0.0 if name == "plain" else 1.0, 1)
    x, _ = salign.data.load("mnist", "test")
    x = x[first : first + 200]
    with torch.no_grad():
        labels = model(x).argmax(1)
    extra = part.setdefault("extra_runs", {})
    for key, (fn, kw) in EXTRA.items():
        if key in extra:
            continue
        r = ours(fn, model, x, labels, **kw)
        extra[key] = {"distance": r["distance"].tolist(), "seconds": r["seconds"]}
        print(f"{name} {key}: median {float(r['distance'].median()):.4f}, {r['seconds']:.0f} s", flush=True)
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
    part["enlarged"] = {
        "envelope_median": m_all,
        "ratios": {k: float(d.median()) / m_all for k, d in rows.items()},
    }
    path.write_text(json.dumps(part))


if __name__ == "__main__":
    main()

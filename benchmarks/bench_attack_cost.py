"""Attack cost at equal steps: each of our attacks against every peer that implements the same
algorithm (adv-lib 0.2.8, foolbox 3.3.4, pyautoattack 0.2.0), and against the floor (issue 17).

For each (attack, norm) the sides are: ours (the public call: validation, clean forward,
iterations, two verification forwards), each installed peer with the same algorithm and the
same number of steps, and, for the fixed-step attacks (DDN, FMN, ALMA), the **floor**: a bare
loop of ``steps`` forward + backward passes of the same model on the same batch (no attack
logic at all), which no implementation can beat. Repeats are interleaved, the order of the
sides rotating every repeat; seconds are medians over the repeats and each ratio is the median
of the per-repeat ratios (range in brackets). Model calls per sample and the median distance
come from one more run of each side, counted by the same wrapper (``CountingModel``) and
verified the same way (clip, re-forward).

Usage::

    .venv/bin/python benchmarks/bench_attack_cost.py                 # every pair, 300 steps
    .venv/bin/python benchmarks/bench_attack_cost.py --only "DDN L2,FMN L∞" --repeats 7
    .venv/bin/python benchmarks/bench_attack_cost.py --paired --repeats 21  # ours vs adv-lib, CI
    .venv/bin/python benchmarks/bench_attack_cost.py --paired --contract --only "DeepFool L2"  # + 3 forwards
    .venv/bin/python benchmarks/bench_attack_cost.py --kernels   # kernels and host reads per iteration
    python benchmarks/bench_attack_cost.py --paired --device cuda --n 500 --no-doc   # on a GPU

Writes docs/benchmarks/attacks-cost.md (then ``python benchmarks/run_all.py --assemble``
rebuilds docs/benchmarks.md); the GPU rows (cached apart, ``_cuda``) get their own section. adv-lib is not in requirements-lock.txt (its dependency visdom
builds from an sdist that needs setuptools < 70): ``make peers`` installs it, and ``make bench``
does first; missing peers are left out with a message.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import salign
from bench_attacks import AA_NORMS, current_commit, get_model, median, pname, run_peer
from salign._io import write_text_atomic
from salign.attacks import ALMA, APGD, DDN, FAB, FMN, CarliniWagner, DeepFool
from salign.attacks import _ops as attack_ops

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks" / "attacks-cost.md"
#: The measured rows of the page, one JSON file per kind of run (small, tracked by git; the
#: models and per-sample caches stay in benchmarks/.cache).
ROWS = ROOT / "benchmarks" / "results"

Run = Any  # (model, x, labels) -> adversarial points (Tensor) or AttackResult

#: APGD's radius per norm on the plain SmallNet: 25–55% of the 25 images broken (a fixed-ε
#: attack: its cost depends on how many samples it breaks early).
APGD_EPS = {math.inf: 0.1, 2.0: 1.5, 1.0: 5.0}


def floor_loop(steps: int) -> Run:
    """``steps`` forward + backward passes of the model on ``x + δ`` (cross-entropy, δ moved by a
    tiny gradient step so that each pass sees a new input): the cost of the model calls alone."""

    def run(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        delta = torch.zeros_like(x)
        for _ in range(steps):
            delta.requires_grad_(True)
            loss = F.cross_entropy(model(x + delta), labels, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            delta = (delta.detach() + 1e-4 * grad).clamp(-x, 1 - x)
        return x + delta

    return run


def linear_model() -> torch.nn.Module:
    """A seeded linear classifier of MNIST images (784 → 10): its forward and backward cost a few
    µs, so an attack's time on it is almost all the attack's own work per step."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10)).eval()


def own_work(side: list[float], floor: list[float], steps: int) -> float:
    """Median over the repeats of (side − floor) / steps, in µs: the side's work per step beyond
    the model's forward and backward."""
    return median(torch.tensor([(a - b) / steps * 1e6 for a, b in zip(side, floor, strict=True)]))


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """Distribution-free confidence interval of the median: the order statistics
    (k, n + 1 − k) with k the largest rank such that P(Binomial(n, ½) < k) ≤ (1 − level) / 2."""
    n, ordered = len(values), sorted(values)
    k, tail = 0, 0.0
    while k < n and tail + math.comb(n, k) / 2**n <= (1 - level) / 2:
        tail += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return ordered[0], ordered[-1]
    return ordered[k - 1], ordered[n - k]


#: Label suffix of the paired rows measured with glibc's heap trimming and mmap threshold off.
MALLOC_TUNED = " · glibc trim off"
#: Label suffix of the paired rows measured with each timed run in a process of its own.
ISOLATED = " · a process per run"
#: Label suffix of the paired rows whose adv-lib side also runs the forwards our contract adds.
CONTRACT = " · adv-lib + 3 forwards"
#: The forwards of the whole batch that our public call adds to the iterations: the clean
#: forward (labels, already misclassified samples) and the two verification forwards.
CONTRACT_FORWARDS = 3


def with_contract_forwards(run: Run) -> Run:
    """``run`` followed by :data:`CONTRACT_FORWARDS` forwards of the batch without gradients:
    a peer that paid for what our contract adds (its floor for us, when the iterations match)."""

    def wrapped(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> Any:
        out = run(model, x, labels)
        with torch.no_grad():
            for _ in range(CONTRACT_FORWARDS):
                model(x)
        return out

    return wrapped


def measure_isolated(label: str, args: argparse.Namespace, repeats: int) -> dict[str, list[float]]:
    """``--paired --isolated``: each timed run of each side in a fresh process (which loads the
    model and batch, runs the side once to warm up, then times one run), the sides alternating
    with the order rotating; fills :data:`FAULTS`. A side's heap then holds only its own
    history: in one process the other side's allocations decide when glibc trims the heap."""
    times: dict[str, list[float]] = {"ours": [], "adv-lib": []}
    names = list(times)
    base = [
        sys.executable,
        __file__,
        "--n",
        str(args.n),
        "--first",
        str(args.first),
        "--steps",
        str(args.steps),
    ]
    base += ["--threads", str(args.threads), "--model", args.model, "--device", args.device, "--only", label]
    base += ["--contract"] if args.contract else []
    for rep in range(repeats):
        for side in names[rep % 2 :] + names[: rep % 2]:
            out = subprocess.run([*base, "--one-side", side], capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            times[side].append(result["seconds"])
            FAULTS.setdefault(side, []).append(result["faults"])
    return times


def one_side(side: Run, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> None:
    """The child of :func:`measure_isolated`: warm up, time one run, print its JSON."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        side(model, x, labels)
        synchronize(x.device)
        faults, start = minor_faults(), time.perf_counter()
        side(model, x, labels)
        synchronize(x.device)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "faults": minor_faults() - faults}))


def paired_row(label: str, times: dict[str, list[float]], repeats: int, steps: int) -> str:
    """``| attack | repeats | ours s | adv-lib s | ours ÷ adv-lib: median [95% CI] | repeats
    where ours was faster | minor page faults per step: ours · adv-lib | measured |``."""

    ratios = [a / b for a, b in zip(times["ours"], times["adv-lib"], strict=True)]
    lo, hi = median_interval(ratios)
    faster = sum(r < 1 for r in ratios)
    faults = " · ".join(
        f"{median(torch.tensor(FAULTS[s], dtype=torch.float64)) / steps:.0f}" for s in ("ours", "adv-lib")
    )
    when = f"{datetime.datetime.now(datetime.timezone.utc):%m-%d %H:%M}, load {os.getloadavg()[0]:.1f}"
    return (
        f"| {label} | {repeats} | {median(torch.tensor(times['ours'])):.2f} | "
        f"{median(torch.tensor(times['adv-lib'])):.2f} | **{median(torch.tensor(ratios)):.3f}** "
        f"[{lo:.3f}, {hi:.3f}] | {faster} of {repeats} | {faults} | {when} |"
    )


def ours(attack: Any) -> Run:
    return lambda m, x, y: attack(m, x, y, warn=False)


def pairs(steps: int) -> dict[str, tuple[float, dict[str, Run]]]:
    """``label -> (norm, {side: run})`` for every attack of ours and the installed peers that run
    the same algorithm with the papers' defaults at ``steps`` steps (FAB: 100 iterations, one
    untargeted run; DeepFool: 50 steps; C&W: 5 constants × steps/5 Adam steps, early abort on;
    APGD: 100 iterations of the cross-entropy at :data:`APGD_EPS`, one random start)."""
    table: dict[str, tuple[float, dict[str, Run]]] = {}
    cw_steps = max(10, steps // 5)
    for norm in (2.0, math.inf, 1.0):
        p = pname(norm)
        table[f"FMN L{p}"] = (norm, {"ours": ours(FMN(norm=norm, steps=steps)), "floor": floor_loop(steps)})
        table[f"FAB L{p}"] = (norm, {"ours": ours(FAB(norm=norm, steps=100))})
        if norm != 1.0:
            table[f"DeepFool L{p}"] = (norm, {"ours": ours(DeepFool(norm=norm, steps=50))})
        table[f"APGD L{p}"] = (
            norm,
            {"ours": ours(APGD(norm=norm, eps=APGD_EPS[norm], steps=100)), "floor": floor_loop(100)},
        )
    table["DDN L2"] = (2.0, {"ours": ours(DDN(steps=steps)), "floor": floor_loop(steps)})
    for norm in (2.0, 1.0):
        table[f"ALMA L{pname(norm)}"] = (
            norm,
            {"ours": ours(ALMA(norm=norm, steps=steps)), "floor": floor_loop(steps)},
        )
    table["C&W L2"] = (2.0, {"ours": ours(CarliniWagner(steps=cw_steps, binary_search_steps=5))})
    try:
        from adv_lib.attacks import alma, apgd, carlini_wagner_l2, ddn, df, fab, fmn

        for norm in (2.0, math.inf, 1.0):
            p = pname(norm)
            table[f"FMN L{p}"][1]["adv-lib"] = lambda m, x, y, n=norm: fmn(m, x, y, norm=n, steps=steps)
            table[f"FAB L{p}"][1]["adv-lib"] = lambda m, x, y, n=norm: fab(m, x, y, norm=n, n_iter=100)
            if norm != 1.0:
                table[f"DeepFool L{p}"][1]["adv-lib"] = lambda m, x, y, n=norm: df(m, x, y, norm=n, steps=50)
            table[f"APGD L{p}"][1]["adv-lib"] = lambda m, x, y, n=norm: apgd(
                m, x, y, eps=APGD_EPS[n], norm=n, n_iter=100, loss_function="ce"
            )
        table["DDN L2"][1]["adv-lib"] = lambda m, x, y: ddn(m, x, y, steps=steps, levels=None)
        for norm in (2.0, 1.0):
            table[f"ALMA L{pname(norm)}"][1]["adv-lib"] = lambda m, x, y, n=norm: alma(
                m, x, y, num_steps=steps, distance=f"l{n:g}"
            )
        table["C&W L2"][1]["adv-lib"] = lambda m, x, y: carlini_wagner_l2(
            m, x, y, binary_search_steps=5, max_iterations=cw_steps
        )
    except ImportError:
        print("adv-lib not installed (`make peers` installs it): its columns are left out", file=sys.stderr)
    try:
        import foolbox as fb

        def fool(attack: Any) -> Run:
            return lambda m, x, y: attack(fb.PyTorchModel(m, bounds=(0, 1)), x, y, epsilons=None)[1]

        fmns = {2.0: fb.attacks.L2FMNAttack, math.inf: fb.attacks.LInfFMNAttack, 1.0: fb.attacks.L1FMNAttack}
        for norm, cls in fmns.items():
            table[f"FMN L{pname(norm)}"][1]["foolbox"] = fool(cls(steps=steps))
        table["DeepFool L2"][1]["foolbox"] = fool(fb.attacks.L2DeepFoolAttack(steps=50))
        table["DeepFool L∞"][1]["foolbox"] = fool(fb.attacks.LinfDeepFoolAttack(steps=50))
        table["DDN L2"][1]["foolbox"] = fool(fb.attacks.DDNAttack(steps=steps))
        table["C&W L2"][1]["foolbox"] = fool(
            fb.attacks.L2CarliniWagnerAttack(binary_search_steps=5, steps=cw_steps)
        )
    except ImportError:
        print("foolbox not installed: its columns are left out", file=sys.stderr)
    try:
        from pyautoattack.autopgd_base import APGDAttack
        from pyautoattack.fab_pt import FABAttack_PT

        def aa_fab(norm: float) -> Run:
            def run(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                fab = FABAttack_PT(m, norm=AA_NORMS[norm], n_restarts=1, n_iter=100, eps=1e3, seed=0)
                return fab.attack_single_run(x, y, use_rand_start=False, is_targeted=False)

            return run

        def aa_apgd(norm: float) -> Run:
            def run(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
                attack = APGDAttack(m, norm=AA_NORMS[norm], eps=APGD_EPS[norm], n_iter=100, loss="ce", seed=0)
                return attack.perturb(x, y)

            return run

        for norm in (2.0, math.inf, 1.0):
            table[f"FAB L{pname(norm)}"][1]["pyautoattack"] = aa_fab(norm)
            table[f"APGD L{pname(norm)}"][1]["pyautoattack"] = aa_apgd(norm)
    except ImportError:
        print("pyautoattack not installed: its columns are left out", file=sys.stderr)
    return table


def adv_of(result: Any) -> torch.Tensor:
    """The adversarial points of an AttackResult or of a peer's tensor."""
    return result if isinstance(result, torch.Tensor) else result.adv


def measure(
    sides: dict[str, Run],
    model: torch.nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    norm: float,
    repeats: int,
) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]]]:
    """Interleaved timings (side order rotating per repeat) and one counted, verified run per side."""
    counted = {
        side: run_peer(lambda cm, f=fn: adv_of(f(cm, x, labels)), model, x, labels, norm)
        for side, fn in sides.items()
    }
    names = list(sides)
    times: dict[str, list[float]] = {side: [] for side in names}
    for rep in range(repeats):
        for side in names[rep % len(names) :] + names[: rep % len(names)]:
            synchronize(x.device)
            faults = minor_faults()
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sides[side](model, x, labels)
            synchronize(x.device)
            times[side].append(time.perf_counter() - start)
            FAULTS.setdefault(side, []).append(minor_faults() - faults)
    return times, counted


def record(path: Path, rows: dict[str, Any]) -> None:
    """Write a record of rows (:func:`cost_cache`) atomically, one key per line for git's diffs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(rows, indent=1, ensure_ascii=False, sort_keys=True) + "\n")


def cost_cache(
    model: str, paired: bool, device: str, n: int, steps: int, first: int, kernels: bool = False
) -> Path:
    """The record of one kind of run: its rows by pair label (``model``: smallnet or linear;
    ``kernels``: the ``--kernels`` counts), in :data:`ROWS` (tracked by git, so that a fresh
    checkout rebuilds the whole page and a run replaces only the rows it measured)."""
    if kernels:
        return ROWS / f"attack_kernels_n{n}_s{steps}_from{first}.json"
    tag = ("" if model == "smallnet" else f"_{model}") + ("_paired" if paired else "")
    tag += "" if device == "cpu" else f"_{device}"
    return ROWS / f"attack_cost{tag}_n{n}_s{steps}_from{first}.json"


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's architecture."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels (CUDA), so that a timing covers the work it started."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: Minor page faults per timed run of each side (of the last :func:`measure`), where the OS
#: reports them: freshly mapped memory being touched, e.g. after glibc returned heap to the OS.
FAULTS: dict[str, list[int]] = {}


def minor_faults() -> int:
    try:
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
    except (ImportError, OSError):
        return 0


#: aten operations that compute nothing (views, metadata): not kernels.
METADATA_OPS = frozenset(
    {
        "view",
        "alias",
        "detach",
        "t",
        "unsqueeze",
        "squeeze",
        "expand",
        "slice",
        "select",
        "permute",
        "as_strided",
        "_reshape_alias",
        "_unsafe_view",
        "lift_fresh",
        "transpose",
        "unbind",
        "split",
    }
)
#: aten operations that read a tensor on the host: on a GPU, the CPU waits for the device.
HOST_READS = frozenset({"_local_scalar_dense", "nonzero", "item", "is_nonzero"})


def count_kernels(run: Run, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(kernels, host reads) of one run: the aten operations it dispatches that compute (one
    kernel launch each on a GPU; views and other metadata operations left out) and those that
    read a tensor on the host (``.item()``, ``bool()``, ``nonzero``: a device sync each)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"kernels": 0, "reads": 0}

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = func.overloadpacket.__name__
            counts["kernels"] += name not in METADATA_OPS
            counts["reads"] += name in HOST_READS
            return func(*args, **(kwargs or {}))

    with warnings.catch_warnings(), Counter():
        warnings.simplefilter("ignore")
        run(model, x, labels)
    return counts["kernels"], counts["reads"]


def iterations(label: str, steps: int) -> int:
    """The nominal iterations of a pair's runs (see :func:`pairs`)."""
    if label.startswith(("FAB", "APGD")):
        return 100
    if label.startswith("DeepFool"):
        return 50
    return steps


#: Header and rule of the ``--kernels`` table.
KERNELS_HEADER = [
    "| attack | kernels per iteration: ours · adv-lib · foolbox · pyautoattack | host reads per iteration: "
    "ours · adv-lib · foolbox · pyautoattack | ours ÷ adv-lib, kernels | measured |",
    "|---|---|---|---|---|",
]


def kernels_row(label: str, counted: dict[str, tuple[int, int]], steps: int) -> str:
    """One row of the ``--kernels`` table (a dash for a peer that lacks the pair)."""
    per = {side: (k / steps, r / steps) for side, (k, r) in counted.items()}
    sides = ("ours", "adv-lib", "foolbox", "pyautoattack")
    kernels = " · ".join(f"{per[s][0]:.1f}" if s in per else "–" for s in sides)
    reads = " · ".join(f"{per[s][1]:.2f}" if s in per else "–" for s in sides)
    versus = f"{per['ours'][0] / per['adv-lib'][0]:.2f}" if "adv-lib" in per else "–"
    when = f"{datetime.datetime.now(datetime.timezone.utc):%m-%d %H:%M}"
    return f"| {label} | {kernels} | {reads} | {versus} | {when} |"


def ratio(a: list[float], b: list[float]) -> str:
    r = sorted(x / y for x, y in zip(a, b, strict=True))
    return f"**{median(torch.tensor(r)):.3f}** ({r[0]:.3f}–{r[-1]:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=25)
    parser.add_argument("--first", type=int, default=200, help="index of the first MNIST test image")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", type=str, default="", help='e.g. "DDN L2,FMN L∞" (default: every pair)')
    parser.add_argument(
        "--model",
        choices=("smallnet", "linear"),
        default="smallnet",
        help="linear: a seeded 784 → 10 linear layer, nearly free, so the seconds are the attack's own work",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="ours and adv-lib only, alternating, with a 95%% confidence interval of the median ratio "
        "(for many repeats: the SmallNet's per-repeat noise is as large as the differences)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="cuda: the model and batch on the GPU, every timing synchronised (rows cached apart "
        "and shown in their own section)",
    )
    parser.add_argument(
        "--isolated",
        action="store_true",
        help="with --paired: each timed run in a process of its own (no shared heap between the sides)",
    )
    parser.add_argument(
        "--contract",
        action="store_true",
        help=f"with --paired: adv-lib's side also runs the {CONTRACT_FORWARDS} forwards of the batch that "
        "our contract adds (clean forward, two verification forwards)",
    )
    parser.add_argument("--one-side", default=None, help=argparse.SUPPRESS)  # a child of --isolated
    parser.add_argument(
        "--kernels",
        action="store_true",
        help="count the kernels and host reads per iteration of every side (one run each, no timing)",
    )
    parser.add_argument(
        "--no-doc", action="store_true", help="only measure and cache the rows (no page written)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    model = get_model(0.0, 1) if args.model == "smallnet" else linear_model()
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)  # every side gets a model that needs input gradients only
    x = salign.data.load("mnist", "test")[0][args.first : args.first + args.n].to(device)
    with torch.no_grad():
        labels = model(x).argmax(1)
    table = pairs(args.steps)
    only = [s.strip() for s in args.only.split(",")] if args.only else list(table)
    peers = ("adv-lib", "foolbox", "pyautoattack")

    if args.one_side is not None:
        side = table[only[0]][1][args.one_side]
        one_side(
            with_contract_forwards(side) if args.contract and args.one_side == "adv-lib" else side,
            model,
            x,
            labels,
        )
        return
    commit = current_commit()  # the code this process imported, whatever is committed while it runs
    cache_path = cost_cache(
        args.model, args.paired, device.type, args.n, args.steps, args.first, args.kernels
    )
    cache = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if args.kernels:
        attack_ops.CPU_FAST_PATHS = False  # count the calls a GPU makes (see the page)
    for label in only:
        norm, sides = table[label]
        if args.kernels:
            counted = {s: count_kernels(run, model, x, labels) for s, run in sides.items() if s != "floor"}
            if "floor" in sides:
                cache["floor"] = count_kernels(sides["floor"], model, x, labels)[0] / args.steps
            cache[label] = {
                "row": kernels_row(label, counted, iterations(label, args.steps)),
                "commit": commit,
            }
            print(cache[label]["row"], file=sys.stderr, flush=True)
            record(cache_path, cache)
            continue
        if args.paired:
            if "adv-lib" not in sides:
                continue
            sides = {"ours": sides["ours"], "adv-lib": sides["adv-lib"]}
            if args.contract:
                sides["adv-lib"] = with_contract_forwards(sides["adv-lib"])
            FAULTS.clear()
            if args.isolated:
                times = measure_isolated(label, args, args.repeats)
            else:
                times, _ = measure(sides, model, x, labels, norm, args.repeats)
            key = label + (MALLOC_TUNED if os.environ.get("MALLOC_TRIM_THRESHOLD_") else "")
            key += ISOLATED if args.isolated else ""
            key += CONTRACT if args.contract else ""
            steps = 50 if label.startswith("DeepFool") else args.steps
            cache[key] = {
                "row": paired_row(key, times, args.repeats, steps),
                "ratio": median(
                    torch.tensor([a / b for a, b in zip(times["ours"], times["adv-lib"], strict=True)])
                ),
                "commit": commit,
                "device": device_name(device),
            }
            print(cache[key]["row"], file=sys.stderr, flush=True)

            record(cache_path, cache)
            continue
        times, counted = measure(sides, model, x, labels, norm, args.repeats)
        sec = {side: median(torch.tensor(t)) for side, t in times.items()}
        cells = [label, f"{sec['ours']:.2f}"]
        for peer in peers:
            cells.append(f"{sec[peer]:.2f} · {ratio(times['ours'], times[peer])}" if peer in sides else "–")
        if "floor" in sides:
            steps = 100 if label.startswith("APGD") else args.steps
            cells.append(f"{sec['floor']:.2f} · {ratio(times['ours'], times['floor'])}")
            cells.append(ratio(times["adv-lib"], times["floor"]) if "adv-lib" in sides else "–")
            work = [
                f"{own_work(times[s], times['floor'], steps):.0f}" for s in ("ours", "adv-lib") if s in sides
            ]
            cells.append(" · ".join(work))
        else:
            cells += ["–", "–", "–"]
        calls = " · ".join(
            f"{counted[s]['forwards'] / len(x):.0f}/{counted[s]['backwards'] / len(x):.0f}"
            for s in ("ours", *peers)
            if s in sides
        )
        meds = " · ".join(
            f"{median(counted[s]['distance']):.4f} ({float(torch.isfinite(counted[s]['distance']).float().mean()):.0%})"
            for s in ("ours", *peers)
            if s in sides
        )
        load = os.getloadavg()[0]
        when = f"{datetime.datetime.now(datetime.timezone.utc):%m-%d %H:%M}, load {load:.1f}, {args.repeats}×"
        cells += [calls, meds, when]
        cache[label] = {"row": "| " + " | ".join(cells) + " |", "commit": commit}
        print(cache[label]["row"], file=sys.stderr, flush=True)

        record(cache_path, cache)
    if args.no_doc:
        print(f"rows cached in {cache_path}", file=sys.stderr)
        return
    text = page(args, list(table))
    print(text)

    write_text_atomic(DOC, text + "\n")


HEADER = (
    "| attack | ours s | adv-lib s · ours ÷ it | foolbox s · ours ÷ it | pyautoattack s · ours ÷ it "
    "| floor s · ours ÷ floor | adv-lib ÷ floor | own work µs/step: ours · adv-lib | calls fwd/bwd "
    "| median (success) | measured |"
)


def table_rows(path: Path, labels: list[str]) -> tuple[list[str], list[str]]:
    """The cached rows of ``labels`` (rows from before the own-work column get a dash there) and
    the commits they were measured at."""

    cache = json.loads(path.read_text()) if path.exists() else {}
    rows = []
    for label in labels:
        if label in cache:
            cells = cache[label]["row"].strip("| ").split(" | ")
            if len(cells) == 10:
                cells.insert(7, "–")
            rows.append("| " + " | ".join(cells) + " |")
    return rows, sorted({cache[label]["commit"] for label in labels if label in cache})


#: Header and rule of the ``--paired`` tables.
PAIRED_HEADER = [
    "| attack | repeats | ours s | adv-lib s | ours ÷ adv-lib: median [95% CI] | repeats where ours was faster "
    "| minor page faults per step: ours · adv-lib | measured |",
    "|---|---|---|---|---|---|---|---|",
]


def paired_rows(path: Path, labels: list[str]) -> tuple[list[str], list[str], list[str]]:
    """The cached ``--paired`` rows of ``labels`` in a file (each followed by its row measured
    with glibc's trimming off, if any), the commits and the devices they were measured at."""
    cache = json.loads(path.read_text()) if path.exists() else {}
    keys = [
        k
        for label in labels
        for k in (label, label + MALLOC_TUNED, label + ISOLATED, label + CONTRACT)
        if k in cache
    ]
    commits = sorted({cache[k]["commit"] for k in keys})
    devices = sorted({cache[k].get("device", "?") for k in keys})
    return [cache[k]["row"] for k in keys], commits, devices


def page(args: argparse.Namespace, labels: list[str]) -> str:
    """docs/benchmarks/attacks-cost.md from the cached rows of both models."""

    main_paired = cost_cache("smallnet", True, "cpu", args.n, args.steps, args.first)
    small, small_commits = table_rows(
        cost_cache("smallnet", False, "cpu", args.n, args.steps, args.first), labels
    )
    linear, linear_commits = table_rows(
        cost_cache("linear", False, "cpu", args.n, args.steps, args.first), labels
    )

    paired, paired_commits, _ = paired_rows(main_paired, labels)
    paired_section = [
        f"## SmallNet, ours against adv-lib alone, many alternating repeats (`--paired`); commit {', '.join(paired_commits)}",
        "",
        "The two sides alternate (order rotating), nothing else runs between them; the interval is "
        "the distribution-free 95% confidence interval of the median of the per-repeat ratios "
        "(order statistics). In one process the two sides share glibc's heap, so each side's page "
        "faults depend on the other's allocation history (under strace, fresh processes of the two "
        "FMN L∞ runs faulted 1219 (ours) and 1825 (adv-lib) times per step, the opposite order of "
        f"the shared process). The rows marked `{ISOLATED.strip(' ·')}` (`--isolated`) run each "
        "timed run in a fresh process that loads the model and batch, runs the side once to warm "
        "up and then times one run: each side with only its own heap history, as a user running "
        "one attack has it. The rows marked `adv-lib + 3 forwards` (`--contract`) add to adv-lib's "
        "side the 3 forwards of the batch that our public call makes beyond the iterations (the "
        "clean forward and the two verification forwards): where the iterations make the same "
        "model calls, that is our floor, and the ratio is the cost of our own logic.",
        "",
        *PAIRED_HEADER,
        *paired,
        "",
    ]
    other_sections = []
    for path in sorted(ROWS.glob(f"attack_cost_paired_n*_s*_from{args.first}.json")):
        if path == main_paired:
            continue
        rows, commits, _ = paired_rows(path, labels)
        n, steps = path.stem.split("_n")[1].split("_s")
        steps = steps.split("_")[0]
        other_sections += [
            f"## SmallNet, {n} images, {steps} steps, ours against adv-lib (`--paired --n {n} --steps "
            f"{steps}`); commit {', '.join(commits)}",
            "",
            f"The same paired measurement on a batch of {n} MNIST test images from {args.first} (the "
            "size of the quality benchmark's runs, docs/benchmarks/attacks.md): the activations are "
            f"{int(n) // args.n}× larger, and so is what glibc's trimming makes the next forward fault back in.",
            "",
            *PAIRED_HEADER,
            *rows,
            "",
        ]
    kernels_cache = cost_cache("smallnet", False, "cpu", args.n, args.steps, args.first, kernels=True)
    kernels = json.loads(kernels_cache.read_text()) if kernels_cache.exists() else {}
    kernel_rows = [kernels[label]["row"] for label in labels if label in kernels]
    kernels_section = [
        f"## Kernels and host reads per iteration (`--kernels`), SmallNet; commit "
        f"{', '.join(sorted({kernels[label]['commit'] for label in labels if label in kernels}))}",
        "",
        "What a GPU pays for where the model is small: every aten operation that computes is one "
        "kernel launch (microseconds of CPU each, whatever the batch), and every host read "
        "(`.item()`, `bool()`, `nonzero`) makes the CPU wait for the device before it can queue "
        "the next step. Counted with a `TorchDispatchMode` over one run of each side on the batch "
        "above, ours with `salign.attacks._ops.CPU_FAST_PATHS` off, so that every side makes the "
        "calls it makes on a GPU (on CPU, ours replaces the L1 and L∞ norms and the L∞ "
        "projection by two faster kernels each: FMN then runs 3 more per iteration in L∞, 2 more in L1); "
        "views and other metadata operations are left out. Per nominal iteration (FMN, DDN, ALMA, C&W: "
        f"{args.steps}; FAB, APGD: 100; DeepFool: 50), so early exits lower a count. The model's "
        f"forward and backward with a cross-entropy and a clamped step (the floor loop's step) take "
        f"{kernels.get('floor', float('nan')):.1f} kernels.",
        "",
        *KERNELS_HEADER,
        *kernel_rows,
        "",
    ]
    cuda_section = []
    for path in sorted(ROWS.glob(f"attack_cost_paired_cuda_n*_s*_from{args.first}.json")):
        rows, commits, devices = paired_rows(path, labels)
        n = path.stem.split("_n")[1].split("_")[0]
        cuda_section += [
            f"## On a GPU ({', '.join(devices)}), ours against adv-lib, {n} images (`--paired --device cuda "
            f"--n {n}`); commit {', '.join(commits)}",
            "",
            "Model and batch on the GPU, `torch.cuda.synchronize()` before and after every timed "
            "run; the page-fault column counts the host process's faults only.",
            "",
            *PAIRED_HEADER,
            *rows,
            "",
        ]
    return "\n".join(
        [
            "# Attacks: cost at equal steps against every peer, and against the floor (issue 17)",
            "",
            f"Command: `.venv/bin/python benchmarks/bench_attack_cost.py --steps {args.steps} --n {args.n} "
            '--repeats R [--model linear | --paired] [--only "PAIR,..."]` (each pair\'s row is recorded in '
            "benchmarks/results/ with when it was measured, the 1-minute load average then and the "
            "repeats; a run replaces the rows of its pairs).  ",
            f"MNIST test images {args.first}–{args.first + args.n - 1}, "
            f"{args.steps} steps (FAB: 100 iterations, DeepFool: 50 steps, C&W: 5 × {max(10, args.steps // 5)} "
            "steps, APGD: 100 iterations of the cross-entropy at ε = 0.1 / 1.5 / 5 in L∞ / L2 / L1, "
            "where a sample stops once broken in ours, the floor being 100 passes on the whole batch), "
            f"repeats interleaved with the order rotating, {args.threads} thread(s); torch "
            f"{torch.__version__}, {platform.processor() or platform.machine()} (2 shared cores).  ",
            "Models: the SmallNets committed in benchmarks/models (commit 98bcba5). Rows measured "
            "before that commit ran on an earlier training of the same recipe, lost with its cache "
            "(a retrained net differs in its weights: DeepFool-L2's median on these 25 images is "
            "1.7089 on that net, 1.7781 on the committed one), so their medians column is that net's; "
            "the kernel counts of 12-07 15:06 and later are the committed nets'.",
            "",
            "Each peer cell is `seconds · ours ÷ peer`; the floor cell is `seconds · ours ÷ floor`, the "
            "floor being a bare loop of the same number of forward + backward passes of the model on "
            "the same batch, with no attack logic (what no implementation can beat). Ratios are medians "
            "of the per-repeat ratios, range in brackets. `own work` is the median over the repeats of "
            "(side − floor) / steps: what an implementation spends per step beyond the model's forward "
            "and backward. Calls are forwards/backwards per sample (ours "
            "first, then the peers in column order), from one counted run each, like the median "
            "distances (success rate in brackets). Both sides run the paper's algorithm with its "
            "defaults (ours without line search or polish, and FMN with its default guarded ε search, "
            "which changes no model call; adv-lib's DDN without its 256-level quantisation). Ours includes what its contract adds to the iterations: input validation, "
            "the clean forward and the two verification forwards (3 forwards per sample), per-sample "
            "early-exit bookkeeping, the NaN/Inf and zero-gradient guards and the call counting. "
            "adv-lib's FMN "
            "in L2 is not quite the paper's: its `l2_projection_` multiplies δ by ε/‖δ‖ and then clamps "
            "δ's entries at 1 (not the factor), so δ is rescaled onto the ε-sphere even inside the "
            "ball, as in DDN; with the paper's ε update it ends adversarial on a few more samples than "
            "the paper's projection, and in L∞ and L1 the two agree sample by sample. Ours runs its "
            "default guarded ε search, which ends adversarial on every sample here (the medians "
            "column) at the same model calls.",
            "",
            f"## SmallNet plain (1 epoch); commit {', '.join(small_commits)}",
            "",
            "On this model a step (forward + backward of 25 images) takes about 17 ms, so the "
            "implementations' own work is a few percent of the time, and the spread of the "
            "per-repeat ratios (the shared host's noise) is as large as the differences. The "
            "`own work` here is also larger than on the linear model below, for every "
            "implementation: after each backward glibc returns the freed activations to the OS and "
            "the next forward faults the pages back in (minor page faults, counted in the paired "
            "table below). How often that happens depends on the order of allocations, which "
            "differs between implementations; it is the allocator's behaviour, not work an "
            "attack does. With glibc's trimming and mmap threshold off (`MALLOC_TRIM_THRESHOLD_="
            "4000000000 MALLOC_MMAP_THRESHOLD_=4000000000`, or with jemalloc/tcmalloc) the faults "
            "vanish and ours and adv-lib both run faster on this host (the paired rows marked "
            f"`{MALLOC_TUNED.strip(' ·')}`, measured with those variables set): a setting for CPU "
            "users, not a change in the library (on GPUs the CUDA caching allocator keeps its memory).",
            "",
            HEADER,
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *small,
            "",
            *(paired_section if paired else []),
            *other_sections,
            *cuda_section,
            *(kernels_section if kernel_rows else []),
            f"## A linear model (784 → 10, `--model linear`); commit {', '.join(linear_commits)}",
            "",
            "The same attacks on a model whose forward and backward cost a few µs: the seconds are "
            "the implementations' own work per step, measured with a spread far below the "
            "differences. (The distances are the linear model's, not comparable with the SmallNet's.)",
            "",
            HEADER,
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *linear,
            "",
        ]
    )


if __name__ == "__main__":
    main()

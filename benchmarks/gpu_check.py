"""GPU check, prepared (issue 16): what a CUDA machine must show, in under 8 minutes.

    python benchmarks/gpu_check.py                 # on a CUDA machine; writes docs/benchmarks/gpu.md
    python benchmarks/gpu_check.py --allow-cpu     # dry run of the same code on CPU at tiny size

1. The CUDA-marked tests (``pytest -m cuda``: tests/test_cuda.py compares GPU results with the CPU's).
2. A few fine-tuning steps of torchvision ResNet-50 with double backprop (λ = 0.01) under
   ``torchrun --nproc_per_node=1`` (nccl on CUDA, gloo on CPU): ``salign train`` on a generated
   ImageFolder of real photos (:func:`salign.data.phototree.write_photo_tree`), streamed with the
   paper's augmentation, starting from a weights file (pretrained weights are a local file; here
   the saved initialisation stands in for them), ``channels_last``, ``precision`` fp32 (our
   default; ``--precision bf16`` to try bf16).
3. ``salign.analyze`` (K = 1000, ``candidates=10``) and ``salign.robustness`` on a batch at 224,
   and the penalised step under bf16 autocast vs fp32 on the GPU
   (:func:`salign.training.precision.autocast_agreement`, ResNet-50 and EfficientNet-Lite0).
4. The ratios of ``benchmarks/bench_imagenet.py`` on the GPU (``torch.cuda.synchronize`` inside
   every timing): analyze ÷ its floor, double-backprop step ÷ plain step, the loader's stall.
5. Our attacks against adv-lib's at equal steps on the GPU (issue 17's cost goal where users run
   them): ``bench_attack_cost.py --paired --device cuda`` on 500 MNIST test images, 300 steps,
   7 alternating repeats (needs adv-lib: ``make peers``; skipped with a message without it).

Prints a compact summary and writes ``gpu_check.json`` and ``gpu_check.md`` to ``--out`` (default
``$OUT`` when set, else a temporary folder); on CUDA (or with ``--write-doc``) the markdown block
also becomes docs/benchmarks/gpu.md, which ``benchmarks/run_all.py`` assembles into
docs/benchmarks.md. Without CUDA and without ``--allow-cpu`` it says "no CUDA" and exits 0.
Prerequisite on the GPU machine: the project's venv (``make venv``: torch 2.14.1 + torchvision
0.29.1, scikit-image, pytest); nothing is downloaded at run time. Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
DOC = ROOT / "docs" / "benchmarks" / "gpu.md"


class Checks:
    """Runs named checks, each timed and caught, and collects their results."""

    def __init__(self, deadline_s: float, only: set[str] | None = None) -> None:
        self.only = only
        self.start = time.perf_counter()
        self.deadline_s = deadline_s
        self.results: dict[str, dict[str, Any]] = {}

    def skip(self, key: str) -> bool:
        """True when ``--only`` leaves the check ``key`` out."""
        return self.only is not None and key not in self.only

    def run(self, name: str, key: str, fn: Callable[[], dict[str, Any]]) -> None:
        if self.skip(key):
            return
        left = self.deadline_s - (time.perf_counter() - self.start)
        if left <= 0:
            self.results[name] = {"ok": False, "error": "skipped: out of time"}
            print(f"[skip] {name}: out of time", flush=True)
            return
        print(f"[....] {name}", flush=True)
        t0 = time.perf_counter()
        try:
            res = {"ok": True, **fn()}
        except Exception as exc:  # a failing check is reported, the others still run
            res = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        self.results[name] = res
        status = "ok" if res["ok"] else "FAIL"
        print(
            f"[{status:>4}] {name} ({res['seconds']} s) {first_line(res)}",
            flush=True,
        )


def first_line(result: dict[str, Any]) -> str:
    """A check's summary, or the first line of its error (the whole error is in the JSON)."""
    text = str(result.get("summary", result.get("error", "")))
    return (text.splitlines() or [""])[0]


def env_with_src() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("SALIGN_QUIET", "1")
    return env


def check_tests(timeout: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env_with_src(), capture_output=True, text=True, timeout=timeout)
    last = (proc.stdout.strip().splitlines() or [""])[-1]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        raise RuntimeError(f"pytest -m cuda exit {proc.returncode}: {last}\n{proc.stdout[-3000:]}")
    return {"summary": last, "command": " ".join(cmd[1:])}


def check_torchrun(
    device: str, size: int, batch: int, steps: int, precision: str, timeout: int
) -> dict[str, Any]:
    import yaml

    from salign.data.phototree import write_photo_tree
    from salign.models import build

    with tempfile.TemporaryDirectory() as tmp:
        root = write_photo_tree(Path(tmp) / "tree", train_per_class=-(-batch * steps // 10), test_per_class=1,
                                classes=10, long_side=(max(size + 40, 96), max(size + 140, 128)))  # fmt: skip
        weights = Path(tmp) / "resnet50_init.pth"
        torch.manual_seed(0)
        # a stand-in for pretrained weights: torchvision's init with zero_init_residual (every block
        # starts as the identity), whose input gradients are moderate, unlike the default init's
        stand_in = build("torchvision/resnet50", normalization=None, zero_init_residual=True)[1]
        torch.save(stand_in.state_dict(), weights)
        cfg = {
            "model": {"name": "torchvision/resnet50", "kwargs": {"weights": str(weights)}},
            "data": {
                "name": "imagefolder", "data_dir": str(root), "train_subset": batch * steps, "val_subset": 10,
                "stream": {"augment": "paper", "crop": size, "rescale": [size + 2, 2 * size], "eval_resize": size,
                           "eval_crop": size, "workers": 2},
            },
            "optimizer": {"name": "sgd", "lr": 1e-5, "momentum": 0.9, "weight_decay": 1e-4},
            "regularizer": {"lambda": 0.01},
            "epochs": 1, "batch_size": batch, "precision": precision, "channels_last": device == "cuda",
            "device": device, "tensorboard": False, "quiet": True,
        }  # fmt: skip
        cfg_path = Path(tmp) / "finetune.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
               "salign.cli", "train", str(cfg_path), "--out", str(out), "--quiet"]  # fmt: skip
        t0 = time.perf_counter()
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env_with_src(), capture_output=True, text=True, timeout=timeout
        )
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"torchrun exit {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}")
        import csv

        with open(out / "train_log.csv", encoding="utf-8") as fh:
            row = list(csv.DictReader(fh))[-1]
    backend = "nccl" if device == "cuda" else "gloo"
    ips = float(row.get("images_per_second", "nan"))
    return {
        "summary": f"{steps} steps of batch {batch} at {size}², {backend}, {precision}: {ips:.1f} img/s, "
        f"CE {float(row['cross_entropy']):.3f}, penalty {float(row['penalty']):.3g}, "
        f"val accuracy {float(row['val_accuracy']):.2f}",
        "images_per_second": ips,
        "log": row,
        "wall_seconds": round(seconds, 1),
        "backend": backend,
    }


def check_analyze_robustness(
    device: torch.device, size: int, batch: int, attack_steps: int
) -> dict[str, Any]:
    import salign

    model = salign.models.build("torchvision/resnet50").to(device).eval()
    x, _ = salign.data.load("photos", size=size)
    x = x[:batch].to(device)
    t0 = time.perf_counter()
    a = salign.analyze(model, x, candidates=10)
    t_analyze = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = salign.robustness(model, x, attacks=("deepfool", "ddn", "fmn"), budget="fast", steps=attack_steps)
    t_rob = time.perf_counter() - t0
    if a.pred.device.type != device.type or r.distance.device.type != device.type:
        raise RuntimeError("results left the device")
    if not bool(r.success.all()):
        raise RuntimeError(f"robustness found no adversarial for {int((~r.success).sum())} of {batch} images")
    ratio = float((a.linearized_robustness / r.distance).median())
    return {
        "summary": f"analyze {t_analyze:.2f} s, robustness {t_rob:.1f} s on {batch}×{size}²; median ρ̃/ρ {ratio:.2f}",
        "analyze_s": t_analyze,
        "robustness_s": t_rob,
        "median_rho": float(r.distance.median()),
        "median_rho_tilde": float(a.linearized_robustness.median()),
    }


def check_bf16(device: torch.device, size: int, batch: int) -> dict[str, Any]:
    """The penalised step under bf16 autocast vs fp32 on this device (CPU numbers: imagenet.md)."""
    import bench_imagenet as bi
    import salign
    from salign.training.precision import autocast_agreement

    out: dict[str, Any] = {}
    models = {"resnet50 (random init)": bi.resnet50}
    if salign.models.efficientnet_lite0_available():
        models["efficientnet_lite0 (ImageNet weights)"] = lambda: salign.models.build("efficientnet_lite0")
    for name, make in models.items():
        torch.manual_seed(0)
        model = make().to(device)
        x = bi.photos(batch, size).to(device)
        with torch.no_grad():
            y = model.eval()(x).argmax(1)
        for mode in ("train", "eval"):
            out[f"{name}, {mode} mode"] = autocast_agreement(model, x, y, train_mode=mode == "train")
    parts = [f"{k}: penalty rel {v['penalty_rel']:.1e}, ∇θ cos {v['grad_penalty_cos']:.3f} (CE {v['grad_ce_cos']:.3f})"
             for k, v in out.items()]  # fmt: skip
    return {"summary": "; ".join(parts), "agreement": out}


def check_ratios(
    device: torch.device, size: int, batch: int, repeats: int, loader_steps: int
) -> dict[str, Any]:
    import bench_imagenet as bi
    from salign.data.phototree import write_photo_tree

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    model = bi.resnet50().to(device)
    x = bi.photos(batch, size).to(device)
    y = (torch.arange(batch) * 7).to(device)
    a_lines, a_med = bi.bench_analyze(model, x, repeats, sync)
    s_lines, s_med = bi.bench_steps(model, x, y, repeats, sync)
    loader: dict[str, Any] = {}
    l_lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_photo_tree(Path(tmp), train_per_class=-(-batch * (loader_steps + 1) // 10), classes=10)
        for workers in sorted({2, min(8, os.cpu_count() or 2)}):
            lines, med = bi.bench_loader(model, root, batch, loader_steps, workers, device, crop=size)
            loader[f"workers_{workers}"] = med
            l_lines += [f"**{workers} workers**", "", *lines, ""]
    return {
        "summary": f"analyze(c=1)÷(fwd+2bwd) {a_med['analyze(candidates=1)']:.2f}, "
        f"analyze(c=10)÷(fwd+11bwd) {a_med['analyze(candidates=10)']:.2f}, "
        f"double backprop÷plain {s_med['double backprop step (ours)']:.2f}, loader wait÷step "
        + ", ".join(f"{k.split('_')[1]} workers {v:.3f}" for k, v in loader.items()),
        "analyze": a_med,
        "steps": s_med,
        "loader_wait_over_step": loader,
        "markdown": [*a_lines, "", *s_lines, "", *l_lines],
    }


#: The attack pairs whose cost the issue compares with adv-lib (issue 17), timed on the GPU.
COST_PAIRS = "FMN L2,DDN L2,ALMA L2,DeepFool L2,FMN L∞,DeepFool L∞,FMN L1,ALMA L1"


def check_attack_cost(
    device: torch.device, n: int, steps: int, repeats: int, out_dir: Path, timeout: int
) -> dict[str, Any]:
    """Ours against adv-lib at equal steps on the device (``bench_attack_cost.py --paired``): the
    cost goal of issue 17 where users run the attacks. Needs adv-lib (``make peers``; on a machine
    without network, carried as wheels) and the plain SmallNet (committed in benchmarks/models,
    so it travels with the working tree). The recorded rows are copied to ``out_dir``: put the file into
    benchmarks/results and run ``bench_attack_cost.py`` to add them to the cost page."""
    import bench_attack_cost as bc

    try:
        import adv_lib  # noqa: F401
    except ImportError:
        return {"summary": "not run: adv-lib is not installed (`make peers`, or carry its wheels)"}
    cmd = [sys.executable, "benchmarks/bench_attack_cost.py", "--paired", "--no-doc", "--device", device.type,
           "--n", str(n), "--steps", str(steps), "--repeats", str(repeats), "--only", COST_PAIRS]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env_with_src(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode:
        raise RuntimeError(f"bench_attack_cost exit {proc.returncode}\n{proc.stderr[-3000:]}")
    path = bc.cost_cache("smallnet", True, device.type, n, steps, first=200)
    shutil.copy(path, out_dir / path.name)
    labels = COST_PAIRS.split(",")
    rows, _, _ = bc.paired_rows(path, labels)
    cached = json.loads(path.read_text())
    return {
        "summary": f"ours ÷ adv-lib ({n} images, {steps} steps): "
        + ", ".join(f"{k} {cached[k]['ratio']:.3f}" for k in labels if k in cached),
        "command": " ".join(cmd[1:]),
        "markdown": [*bc.PAIRED_HEADER, *rows],
    }


def markdown(results: dict[str, dict[str, Any]], header: str) -> str:
    lines = [header, "", "| check | ok | seconds | result |", "|---|---|---:|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {'yes' if r['ok'] else '**no**'} | {r['seconds']} | "
                     f"{first_line(r).replace('|', '/')} |")  # fmt: skip
    for key in ("ratios", "attack cost vs adv-lib"):
        if results.get(key, {}).get("ok") and "markdown" in results[key]:
            lines += ["", *results[key]["markdown"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--allow-cpu", action="store_true", help="without CUDA: dry-run everything on CPU, tiny")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="folder for gpu_check.json/.md")
    ap.add_argument("--write-doc", action="store_true", help="write docs/benchmarks/gpu.md even on CPU")
    ap.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "bf16"),
        help="of the torchrun fine-tune (default: ours)",
    )
    ap.add_argument(
        "--budget-s", type=float, default=450, help="stop starting checks after this many seconds"
    )
    ap.add_argument(
        "--only", default=None, help="comma list of checks: tests,torchrun,analyze,bf16,ratios,cost"
    )
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: no CUDA device; nothing checked (use --allow-cpu for a CPU dry run)")
        return 0
    device = torch.device("cuda" if cuda else "cpu")
    # full size on a GPU; the same code at a tiny size on CPU
    size, batch, steps, repeats, attack_steps = (224, 16, 6, 7, 100) if cuda else (32, 2, 2, 2, 5)
    if not cuda:
        torch.set_num_threads(1)
    checks = Checks(args.budget_s, None if args.only is None else set(args.only.split(",")))
    if checks.skip("tests"):
        pass
    elif cuda:
        checks.run("pytest -m cuda", "tests", lambda: check_tests(timeout=180))
    else:
        checks.results["pytest -m cuda"] = {"ok": True, "seconds": 0.0,
                                            "summary": "not run: no CUDA (the tests skip themselves)"}  # fmt: skip
    checks.run("torchrun fine-tune", "torchrun", lambda: check_torchrun(device.type, size, batch, steps,
                                                            args.precision if cuda else "fp32", timeout=300 if cuda else 1200))  # fmt: skip
    checks.run("analyze + robustness", "analyze",
               lambda: check_analyze_robustness(device, size, min(batch, 8), attack_steps))  # fmt: skip
    checks.run("bf16 vs fp32", "bf16", lambda: check_bf16(device, size, min(batch, 8)))
    checks.run("ratios", "ratios", lambda: check_ratios(device, size, batch, repeats, loader_steps=steps))
    out_dir = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    cost = (500, 300, 7) if cuda else (5, 10, 2)  # images, steps, repeats
    checks.run("attack cost vs adv-lib", "cost",
               lambda: check_attack_cost(device, *cost, out_dir, timeout=240 if cuda else 600))  # fmt: skip
    name = torch.cuda.get_device_name(0) if cuda else f"CPU dry run ({platform.machine()})"
    header = (
        f"## GPU check ({'CUDA' if cuda else 'CPU dry run, tiny sizes'})\n\n"
        f"Command: `python benchmarks/gpu_check.py{' ' + ' '.join(argv) if argv else ''}` — "
        f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {name}, torch "
        f"{torch.__version__}; ResNet-50 at {size}², batch {batch}; {repeats} interleaved repeats per ratio "
        "(median and IQR; `torch.cuda.synchronize()` closes every timed call on CUDA)."
    )
    text = markdown(checks.results, header)
    payload = {k: {kk: vv for kk, vv in v.items() if kk != "markdown"} for k, v in checks.results.items()}
    (out_dir / "gpu_check.json").write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    (out_dir / "gpu_check.md").write_text(text, encoding="utf-8")
    if cuda or args.write_doc:
        DOC.write_text(text, encoding="utf-8")
    total = time.perf_counter() - checks.start
    print("\n== summary ==")
    for k, v in checks.results.items():
        print(f"{'ok  ' if v['ok'] else 'FAIL'} {k}: {first_line(v)}")
    print(f"total {total:.0f} s; wrote {out_dir / 'gpu_check.json'} and {out_dir / 'gpu_check.md'}"
          f"{' and ' + str(DOC) if cuda or args.write_doc else ''}")  # fmt: skip
    return 0 if all(v["ok"] for v in checks.results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

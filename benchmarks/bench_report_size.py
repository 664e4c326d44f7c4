"""Benchmark: the size of report.html with the interactive section, N = 1000 samples per model.

Writes synthetic run directories of the shape a real study writes (tests/_report_helpers.py:
per-sample tables of N rows per model, and ``eval/<tag>.views.npz`` of the first
``report.interactive_samples`` = 200 samples, 1×28×28, with white-noise saliency maps and
perturbations, which PNG cannot compress: an upper bound for MNIST), renders each with the
default settings (figures on, ``report.interactive_mb`` = 2) and reports the page's size split
into plotly.js, the static figures, the points and the sample images. With ``--run DIR`` it
also splits an existing run's report.html. Writes docs/benchmarks/report_size.md.

    .venv/bin/python benchmarks/bench_report_size.py [--models 4,8] [--n 1000] [--run runs/demo]
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

LIMIT_MB = 10.0


def split_page(page: str) -> dict[str, float]:
    """Megabytes of report.html by part: plotly.js, static figures, points, sample images, rest."""
    scripts = re.findall(r"<script[^>]*>(.*?)</script>", page, flags=re.S)
    plotly_js = max((len(s) for s in scripts), default=0)
    views = re.search(r"<script type='application/json' id='salign-views'>(.*?)</script>", page, flags=re.S)
    images = len(views.group(1)) if views else 0
    points = sum(len(s) for s in scripts if "Plotly.newPlot" in s and len(s) < plotly_js)
    markup = re.sub(r"<script[^>]*>.*?</script>", "", page, flags=re.S)
    figures = sum(len(m) for m in re.findall(r"data:image/png;base64,[A-Za-z0-9+/=]+", markup))
    total = len(page.encode("utf-8"))
    parts = {"plotly.js": plotly_js, "static figures": figures, "points": points, "sample images": images}
    parts["rest"] = total - sum(parts.values())
    return {"total": total / 1e6, **{k: v / 1e6 for k, v in parts.items()}}


def measure(models: int, n: int, workdir: Path) -> tuple[dict[str, float], dict[str, int]]:
    from _report_helpers import write_synthetic_run
    from salign.report import render

    lambdas = tuple(float(f"{0.1 * 3**k:g}") if k else 0.0 for k in range(models))
    run_dir = write_synthetic_run(workdir / f"m{models}", lambdas=lambdas, n=n, views=200)
    report = render(run_dir, n_bootstrap=200)
    page = report.html.read_text(encoding="utf-8")
    payload = re.search(r"id='salign-views'>(.*?)</script>", page, flags=re.S)
    counts = json.loads(payload.group(1))["count"] if payload else {}
    return split_page(page), counts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="4,8", help="numbers of models, comma separated")
    parser.add_argument("--n", type=int, default=1000, help="samples per model")
    parser.add_argument(
        "--run", type=Path, action="append", default=[], help="also split this run's report.html"
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (int(v) for v in args.models.split(",")):
            sizes, counts = measure(k, args.n, Path(tmp))
            with_images = sorted(set(counts.values()))
            label = f"synthetic, {k} models × N = {args.n} (views of 200, noise)"
            rows.append((label, sizes, "/".join(map(str, with_images))))
            print(label, json.dumps(sizes), with_images, flush=True)
    for run_dir in args.run:
        page = (run_dir / "report.html").read_text(encoding="utf-8")
        payload = re.search(r"id='salign-views'>(.*?)</script>", page, flags=re.S)
        counts = json.loads(payload.group(1))["count"] if payload else {}
        rows.append(
            (f"run {run_dir.name}", split_page(page), "/".join(map(str, sorted(set(counts.values())))))
        )
    cols = ["total", "plotly.js", "static figures", "points", "sample images", "rest"]
    lines = [
        "## Interactive report size (issue 19)",
        "",
        f"Command: `python benchmarks/bench_report_size.py --models {args.models} --n {args.n}"
        + "".join(f" --run {r}" for r in args.run)
        + f"` — {datetime.date.today()}. Megabytes of report.html (limit {LIMIT_MB:g} MB), split by part. "
        "How it stays small: plotly.js (about 4.8 MB) is inlined once; the points are float32 arrays "
        "(plotly's base64 typed arrays, about 30 bytes per point and plot); the sample images are small "
        "PNG data URIs (at most 64 px a side, saved by the evaluation as uint8/float16 views of the first "
        "`report.interactive_samples` = 200 samples) embedded in sample order, every model's views of a "
        "sample together, until `report.interactive_mb` = 2 MB; the clean image of a sample is embedded "
        "once for all models. Every sample is a point; the rest of the samples have no images.",
        "",
        "| report | " + " | ".join(f"{c} (MB)" for c in cols) + " | samples with images per model |",
        "|---|" + "---:|" * len(cols) + "---:|",
    ]
    for label, sizes, with_images in rows:
        lines.append(f"| {label} | " + " | ".join(f"{sizes[c]:.2f}" for c in cols) + f" | {with_images} |")
    out = ROOT / "docs" / "benchmarks" / "report_size.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    worst = max(sizes["total"] for _, sizes, _ in rows)
    return 0 if worst < LIMIT_MB else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

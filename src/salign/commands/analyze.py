"""CLI: ``salign analyze --model SPEC [--weights FILE] --data mnist --n 1000 --out results.csv``.

Loads a model (any spec of :func:`salign.models.load_spec`), draws a seeded subset of a dataset, runs :func:`salign.analyze` and writes
the per-sample table (α, α_bin, α/‖x‖, ρ̃, β, ...) as CSV, atomically, then prints medians.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import typer

from salign.commands._inputs import (
    CHECKPOINT_ARG,
    DATA_OPT,
    MODEL_OPT,
    WEIGHTS_OPT,
    resolve_data,
    resolve_model,
)
from salign.errors import ConfigError

#: Columns whose medians the command prints.
SUMMARY_COLUMNS = (
    "alignment",
    "alignment_binarized",
    "alignment_normalized",
    "linearized_robustness",
    "bias_distance",
    "grad_norm",
)


def select_subset(n_total: int, n: int | None, seed: int) -> Any:
    """Indices of a seeded random subset of size ``n`` (all, in order, when n is None or ≥ total)."""
    import torch

    if n is None or n >= n_total:
        return torch.arange(n_total)
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(n_total, generator=gen)[:n].sort().values


def write_analysis_csv(path: Path, ids: list[int], table: dict[str, list[Any]]) -> None:
    """Write ``table`` (column → values) with a leading ``id`` column to ``path`` atomically."""
    from salign._io import atomic_open

    names = list(table)
    with atomic_open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", *names])
        for row, sample_id in enumerate(ids):
            writer.writerow([sample_id, *(_cell(table[name][row]) for name in names)])


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return value


def _median(values: list[float]) -> float:
    finite = sorted(v for v in values if not math.isnan(v))
    if not finite:
        return math.nan
    mid = len(finite) // 2
    return finite[mid] if len(finite) % 2 else 0.5 * (finite[mid - 1] + finite[mid])


def analyze_command(
    checkpoint: str | None = CHECKPOINT_ARG,
    model_spec: str | None = MODEL_OPT,
    weights: Path | None = WEIGHTS_OPT,
    data: str = DATA_OPT,
    split: str = typer.Option("test", "--split", help="Dataset split: train or test."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder for user-supplied datasets."),
    n: int | None = typer.Option(1000, "--n", help="Number of samples (a seeded random subset); 0 = all."),
    out: Path = typer.Option(Path("results.csv"), "--out", help="Per-sample CSV to write."),
    batch_size: int = typer.Option(256, "--batch-size", help="Samples per forward pass."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample subset."),
    rival: str = typer.Option(
        "nearest", "--rival", help="Rival class of the binarized columns: nearest (paper's j*) or runner_up."
    ),
    candidates: int | None = typer.Option(
        None, "--candidates", help="Search the nearest rival among the top-k logits only (large K)."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Per-sample alignment α, α_bin, ρ̃, effective bias β, ... of a model, written as CSV."""
    import torch

    from salign.quantities import analyze

    if rival not in ("nearest", "runner_up"):
        raise ConfigError(f"--rival must be 'nearest' or 'runner_up', got {rival!r}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if n is not None and n < 0:
        raise ConfigError(f"--n must be ≥ 0, got {n}")
    from salign._validation import resolve_device

    device = str(resolve_device(device, name="--device"))
    model = resolve_model(checkpoint, model_spec, weights, device)
    x, y = resolve_data(data, split, data_dir)
    idx = select_subset(x.shape[0], n or None, seed)
    xs, ys = x[idx].to(device), None if y is None else y[idx].to(device)
    result = analyze(
        model,
        xs,
        ys,
        rival=rival,  # type: ignore[arg-type]
        candidates=candidates,
        batch_size=batch_size,
        quiet=quiet or None,
    )
    table = result.to_dict()
    write_analysis_csv(out, [int(i) for i in idx.tolist()], table)
    if ys is None:
        accuracy = "n/a (no labels)"
    else:
        accuracy = f"{float(torch.as_tensor(table['correct'], dtype=torch.float64).mean()):.4f}"
    typer.echo(f"{len(idx)} samples of {data}/{split}, accuracy {accuracy}, rival {rival}; wrote {out}")
    typer.echo("medians: " + ", ".join(f"{c} {_median(table[c]):.4g}" for c in SUMMARY_COLUMNS))


def register(app: typer.Typer) -> None:
    """Add ``salign analyze`` to ``app``."""
    app.command("analyze")(analyze_command)

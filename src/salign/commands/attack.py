"""CLI: ``salign attack`` — ρ(x) per sample by the verified attack ensemble, written to a CSV."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from salign.commands._inputs import (
    CHECKPOINT_ARG,
    DATA_OPT,
    MODEL_OPT,
    WEIGHTS_OPT,
    resolve_data,
    resolve_model,
)
from salign.errors import InputError

if TYPE_CHECKING:
    from torch import Tensor, nn


def register(app: typer.Typer) -> None:
    """Add this module's commands to ``app``."""

    @app.command("attack")
    def attack(
        checkpoint: str | None = CHECKPOINT_ARG,
        model_spec: str | None = MODEL_OPT,
        weights: Path | None = WEIGHTS_OPT,
        data: str = DATA_OPT,
        split: str = typer.Option("test", "--split", help="Dataset split: train or test."),
        data_dir: Path | None = typer.Option(None, "--data-dir", help="Directory with user-supplied data."),
        n: int = typer.Option(1000, "--n", help="Attack the first N samples of the split."),
        attacks: str | None = typer.Option(
            None,
            "--attacks",
            help="Comma-separated: deepfool, ddn, fmn, alma, fab, carlini_wagner (L2); deepfool, fab, fmn, "
            "alma (L1 only), apgd (L1, inf; apgd runs last, probing just below each sample's best point). "
            "Default: all of the norm's but carlini_wagner.",
        ),
        norm: str = typer.Option("2", "--norm", help="The norm of ρ: 2 (the paper's), inf or 1."),
        budget: str = typer.Option(
            "standard",
            "--budget",
            help="fast (100 steps), standard (1000, + a 100-step restart chain), thorough (+ a cold FMN and a margin DDN).",
        ),
        steps: int | None = typer.Option(None, "--steps", help="Steps per attack (overrides the budget)."),
        batch_size: int | None = typer.Option(
            None, "--batch-size", help="Attack this many samples at a time."
        ),
        true_labels: bool = typer.Option(
            False,
            "--true-labels",
            help="Attack the true label (misclassified samples get ρ = 0) "
            "instead of the predicted class (the paper's ρ).",
        ),
        levels: int | None = typer.Option(None, "--levels", help="Quantise adversarial points (e.g. 256)."),
        seed: int = typer.Option(
            0,
            "--seed",
            help="Seed of torch's global random generator (for a model that draws random numbers).",
        ),
        device: str = typer.Option("cpu", "--device", help="Torch device, e.g. cpu or cuda."),
        exact: bool = typer.Option(
            False,
            "--exact",
            help="Solve ρ exactly, as a mixed-integer program, instead of attacking: for small "
            "ReLU nets (salign's linear and relu_mlp, or an nn.Sequential of Linear, Conv, AvgPool, "
            "BatchNorm, Flatten and ReLU layers); "
            "pip install 'saliency-alignment[exact]'. The CSV gets the proven lower bound, the gap "
            "and the solver's status per sample.",
        ),
        time_limit: float = typer.Option(
            30.0, "--time-limit", help="With --exact: seconds per sample over all its rival classes."
        ),
        gap: float = typer.Option(
            1e-4, "--gap", help="With --exact: relative optimality gap at which a solve stops."
        ),
        out: Path = typer.Option(Path("robustness.csv"), "--out", help="Per-sample CSV to write."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    ) -> None:
        """Estimate ρ(x), the L2 (or L∞, L1) distance to the nearest decision boundary, per sample."""
        import torch

        from salign._norms import norm_label
        from salign.attacks import robustness

        if n < 1:
            raise InputError(f"--n must be a positive integer, got {n}")
        if exact:
            given = {"--attacks": attacks, "--steps": steps, "--batch-size": batch_size, "--levels": levels}
            clash = [name for name, value in given.items() if value is not None]
            if budget != "standard":
                clash.append("--budget")
            if clash:
                raise InputError(
                    f"{', '.join(clash)} {'does' if len(clash) == 1 else 'do'} not apply with --exact "
                    "(the mixed-integer program runs no attack; --time-limit and --gap bound it)"
                )
        elif time_limit != 30.0 or gap != 1e-4:
            raise InputError("--time-limit and --gap apply only with --exact")
        torch.manual_seed(seed)
        from salign._validation import resolve_device

        device = str(resolve_device(device, name="--device"))
        model = resolve_model(checkpoint, model_spec, weights, device)
        x, y = resolve_data(data, split, data_dir)
        if y is None and true_labels:
            raise InputError(f"--true-labels needs labels, but {data} holds no 'y'")
        x = x[:n].to(device)
        y = torch.full((x.shape[0],), -1, dtype=torch.long) if y is None else y[:n].to(device)
        if exact:
            _write_exact(model, x, y, true_labels, norm, time_limit, gap, quiet, out)
            return
        result = robustness(
            model,
            x,
            y if true_labels else None,
            attacks=None if attacks is None else [a.strip() for a in attacks.split(",") if a.strip()],
            norm=norm,
            budget=budget,
            steps=steps,
            batch_size=batch_size,
            quiet=quiet or None,
            levels=levels,
        )
        columns = _write_rows(out, y, result.to_dict())
        finite = [d for d in columns["distance"] if math.isfinite(d)]
        typer.echo(
            f"{len(result)} samples: median ρ ({norm_label(result.norm)}) = {result.median():.4g}, success {result.success_rate:.1%} "
            f"({len(finite)} found), {result.forwards / len(result):.0f} forwards and "
            f"{result.backwards / len(result):.0f} backwards per sample, {result.seconds:.1f} s; "
            f"flags {result.flags}; wrote {out}"
        )


def _write_rows(out: Path, y: Tensor, columns: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Write the per-sample ``columns`` atomically to the CSV ``out``, after an ``index`` and a
    ``true_label`` column (``y``); returns all the columns written."""
    from salign._io import atomic_open

    columns = {"index": list(range(len(y))), "true_label": y.cpu().tolist(), **columns}
    names = list(columns)
    with atomic_open(out, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(names)
        for row in zip(*(columns[k] for k in names), strict=True):
            writer.writerow(row)
    return columns


def _write_exact(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    true_labels: bool,
    norm: str,
    time_limit: float,
    gap: float,
    quiet: bool,
    out: Path,
) -> None:
    """``salign attack --exact``: :func:`salign.exact.exact_robustness` per sample, as a CSV."""
    from salign._norms import norm_label
    from salign.exact import exact_robustness

    result = exact_robustness(
        model,
        x,
        y if true_labels else None,
        norm=norm,
        time_limit=time_limit,
        gap=gap,
        quiet=quiet or None,
    )
    _write_rows(out, y, result.to_dict())
    counts = {s: result.status.count(s) for s in dict.fromkeys(result.status)}
    proven = counts.get("optimal", 0) + counts.get("misclassified", 0) + counts.get("infeasible", 0)
    typer.echo(
        f"{len(result)} samples: exact ρ ({norm_label(result.norm)}, {result.solver}) median = {result.median():.4g}, "
        f"proven within the gap {gap:g} on {proven} of {len(result)} (statuses {counts}), "
        f"{float(result.seconds.sum()):.1f} s; wrote {out}"
    )

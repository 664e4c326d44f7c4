"""CLI: ``salign train CONFIG.yaml --lambda 0.01 --out DIR`` (one model; torchrun-ready)."""

from __future__ import annotations

from pathlib import Path

import typer


def train_command(
    config: Path = typer.Argument(..., help="Training config YAML (e.g. configs/mnist-paper.yaml)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory for checkpoints and logs."),
    lam: float | None = typer.Option(
        None, "--lambda", help="Penalty weight λ (overrides regularizer.lambda)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Number of epochs (overrides the config)."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (overrides the config)."),
    method: str | None = typer.Option(
        None, "--method", help="Penalty method: double_backprop or finite_difference (overrides the config)."
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config)."),
    resume: bool = typer.Option(
        True,
        "--resume/--no-resume",
        help="Continue from OUT/state.safetensors if present (default) or start afresh.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train one model with the input-gradient penalty (or adversarial training) of CONFIG.

    Runs unchanged under ``torchrun --nproc_per_node=N -m salign.cli train ...`` (DDP).
    """
    from salign.training import load_config, train

    cfg = load_config(config)
    overrides: dict[str, object] = {}
    if lam is not None:
        overrides["regularizer.lambda"] = lam
    if epochs is not None:
        overrides["epochs"] = epochs
    if seed is not None:
        overrides["seed"] = seed
    if method is not None:
        overrides["regularizer.method"] = method
    if device is not None:
        overrides["device"] = device
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    path = train(cfg, run_dir=out, resume=resume, quiet=True if quiet else None)
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        typer.echo(f"checkpoint: {path}")


def register(app: typer.Typer) -> None:
    """Add ``salign train`` to ``app``."""
    app.command("train")(train_command)

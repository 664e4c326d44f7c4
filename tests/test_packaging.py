"""One version, from pyproject.toml through the installed metadata to ``salign --version``.

The wheel itself (contents, a clean install, the CLI from outside the repository) is checked by
scripts/wheel_check.sh, which .ci/run runs.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest

import salign
from salign.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_version_comes_from_the_package_metadata() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r'^version = "([^"]+)"$', pyproject, re.M).group(1)  # type: ignore[union-attr]
    assert salign.__version__ == importlib.metadata.version("saliency-alignment") == declared


def test_cli_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code in (0, None)
    assert capsys.readouterr().out == f"salign {salign.__version__}\n"

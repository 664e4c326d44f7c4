"""One version, from pyproject.toml through the installed metadata to ``salign --version``.

The wheel itself (contents, a clean install, the CLI from outside the repository) is checked by
scripts/wheel_check.sh, which .ci/run runs.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
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


def test_study_without_the_report_extra_fails_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
    config = tmp_path / "study.yaml"
    config.write_text("name: s\ndataset: {name: synthetic-gaussian}\nmodel: {name: linear}\n")
    with pytest.raises(SystemExit) as exc:
        main(["run", str(config), "--out", str(tmp_path / "run"), "--quiet"])
    assert exc.value.code == 2
    assert (
        capsys.readouterr().err
        == "error: the report needs pandas: pip install 'saliency-alignment[report]'\n"
    )
    assert not (tmp_path / "run").exists()

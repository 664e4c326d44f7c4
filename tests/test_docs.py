"""Every ```python block in README.md and docs/*.md runs, so the documentation cannot rot.

Blocks in one file run in order in one namespace (later blocks may use earlier names). A block
whose first line is ``# doctest: skip`` is not run (for GPU- or network-only examples).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    return [b for b in BLOCK.findall(path.read_text(encoding="utf-8")) if not b.startswith("# doctest: skip")]


DOC_FILES = [p for p in DOCS if python_blocks(p)]


@pytest.mark.parametrize("path", DOC_FILES, ids=[p.name for p in DOC_FILES])
def test_doc_code_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SALIGN_QUIET", "1")
    namespace: dict[str, object] = {"__name__": f"doc_{path.stem}"}
    for i, block in enumerate(python_blocks(path)):
        code = compile(block, f"{path.name}[block {i}]", "exec")
        exec(code, namespace)


def test_docs_exist() -> None:
    assert (ROOT / "README.md").read_text().startswith("# salign")
    assert os.path.exists(ROOT / "docs" / "architecture.md")

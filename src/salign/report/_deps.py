"""Lazy imports of the ``report`` extra (matplotlib, pandas) with a clear install hint."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from salign.errors import MissingDependencyError

INSTALL_HINT = "pip install 'saliency-alignment[report]'"


def require_pandas() -> ModuleType:
    """Import pandas or raise :class:`MissingDependencyError` naming the extra."""
    try:
        import pandas
    except ImportError as exc:
        raise MissingDependencyError(f"the report needs pandas: {INSTALL_HINT}") from exc
    return pandas


def require_pyplot() -> Any:
    """Import ``matplotlib.pyplot`` on the non-interactive Agg backend (no display needed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise MissingDependencyError(f"the report figures need matplotlib: {INSTALL_HINT}") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def require_plotly() -> ModuleType:
    """Import plotly (the interactive scatter of report.html) or raise with the install hint."""
    try:
        import plotly
    except ImportError as exc:
        raise MissingDependencyError(f"the interactive report needs plotly: {INSTALL_HINT}") from exc
    return plotly

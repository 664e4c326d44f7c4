"""Where salign keeps downloaded and rebuilt datasets (never inside the repository)."""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that overrides the data cache directory.
DATA_ENV = "SALIGN_DATA"


def cache_dir() -> Path:
    """The dataset cache directory.

    ``$SALIGN_DATA`` when set, else ``$XDG_CACHE_HOME/salign`` (``~/.cache/salign`` by default).
    The directory is not created here; fetchers create what they write.
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "salign"

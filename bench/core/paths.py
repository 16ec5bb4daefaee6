"""Where data and caches live.

The data directory may be read-only (it is in CI), so decoded arrays never go there:
they go to a cache directory of their own.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "METABENCH_DATA_DIR"
CACHE_DIR_ENV = "METABENCH_CACHE_DIR"


def _user_cache_root() -> Path:
    root = os.environ.get("XDG_CACHE_HOME")
    return Path(root) if root else Path.home() / ".cache"


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-dir``, else ``$METABENCH_DATA_DIR``, else ``~/.cache/metabench/data``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser()
    return _user_cache_root() / "metabench" / "data"


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """``--cache-dir``, else ``$METABENCH_CACHE_DIR``, else ``~/.cache/metabench/cache``."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    return _user_cache_root() / "metabench" / "cache"

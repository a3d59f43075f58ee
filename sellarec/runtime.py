"""Process-level runtime settings: the cache folder and torch threads. The only place that reads the environment."""

from __future__ import annotations

import os
from pathlib import Path

from sellarec.config import RuntimeConfig

__all__ = ["cache_root", "CACHE_ENV"]

CACHE_ENV = "SELLAREC_CACHE"


def cache_root(runtime: RuntimeConfig) -> Path:
    """Cache folder: ``runtime.cache_dir``, else ``$SELLAREC_CACHE``, else ``$XDG_CACHE_HOME/sellarec`` (~/.cache)."""
    if runtime.cache_dir:
        return Path(runtime.cache_dir).expanduser().resolve()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().resolve()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return (base / "sellarec").resolve()

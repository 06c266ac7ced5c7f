"""Where the engine keeps what it derives from model files and its C sources: one directory,
``$LLMTOP_ENGINE_CACHE`` or the user cache dir.

A module of its own that imports nothing of the engine, so the kernels' loader (native.py) and
the model loader (loader.py), which sit at opposite ends of the engine's imports, both use it
without an import cycle.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

ENV_CACHE = "LLMTOP_ENGINE_CACHE"


def default_cache_dir() -> Path:
    """$LLMTOP_ENGINE_CACHE, else the user cache dir (platformdirs)."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    return Path(platformdirs.user_cache_dir("llmtop")) / "engine"

"""The engine's name and version, as it tells clients (``/api/version`` and the ``Server``
header, by which llmtop knows it is measuring its own engine rather than a real Ollama)."""

from __future__ import annotations

import functools
from importlib import metadata

SERVER_NAME = "llmtop-engine"
DISTRIBUTIONS = ("llmtop-monitor",)
"""The installed distribution that carries the engine (its metadata holds the version)."""


@functools.cache
def engine_version() -> str:
    """llmtop's version from its installed metadata, not from ``llmtop.__version__``: the
    engine imports nothing of llmtop outside ``llmtop.engine`` (it is a program of its own)."""
    for name in DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"  # a source tree that was never installed


def server_header() -> str:
    """``llmtop-engine/0.1.0``: the ``Server`` header of every response."""
    return f"{SERVER_NAME}/{engine_version()}"

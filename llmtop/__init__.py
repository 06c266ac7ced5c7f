"""llmtop: htop for LLM inference.

The package maps the repository's folders into one namespace: ``llmtop.app`` is ``app/``,
``llmtop.collectors`` is ``collectors/``, and so on (see pyproject.toml). This root package
holds only what every area shares: the version and the error hierarchy.
"""

from __future__ import annotations

__version__ = "0.1.0"

"""llmtop: htop for LLM inference.

The package maps the repository's folders into one namespace: ``llmtop.app`` is ``app/``,
``llmtop.collectors`` is ``collectors/``, and so on (see pyproject.toml). This root package
holds only the version; the shared vocabulary (errors included) is ``llmtop.core``.
"""

from __future__ import annotations

__version__ = "0.1.0"

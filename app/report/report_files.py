"""Report files (``--svg``, ``--png``, ``--html``): check the path, render, write, say why not.

The renderers need matplotlib and are imported only here, when a file is asked for: the
terminal report and every other command start without it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from llmtop.app.report.data import ReportData
from llmtop.core.errors import LlmtopError, UsageError

FileKind = Literal["svg", "png", "html"]
KINDS: tuple[FileKind, ...] = ("svg", "png", "html")
MATPLOTLIB = "matplotlib>=3.8,<4"


def check_writable(path: str | Path) -> None:
    """Fail before any rendering when ``path`` cannot be written.

    Raises:
        UsageError: the folder is missing or read-only, or the path is a folder.
    """
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise UsageError(f"cannot write {path}: it is a directory")
    if not folder.is_dir():
        raise UsageError(f"cannot write {path}: no directory {folder}")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied")


def render(data: ReportData, kind: FileKind, title: str) -> str | bytes:
    """The report as an SVG or HTML document (text), or a PNG image (bytes).

    Raises:
        LlmtopError: matplotlib is not installed.
    """
    try:
        import matplotlib  # noqa: F401  (only to say clearly what is missing)
    except ImportError:
        raise LlmtopError(
            f"--{kind} needs matplotlib, which is not installed: pip install '{MATPLOTLIB}'"
        ) from None
    if kind == "html":
        from llmtop.app.report.html_page import report_html

        return report_html(data, title)
    from llmtop.app.report.report_image import report_png, report_svg

    return report_png(data, title) if kind == "png" else report_svg(data, title)


def write_file(path: str | Path, content: str | bytes) -> None:
    """Write a report file, or say in one line why it cannot be written.

    Raises:
        UsageError: the path cannot be written (missing folder, no permission, disk full).
    """
    try:
        if isinstance(content, bytes):
            Path(path).write_bytes(content)
        else:
            Path(path).write_text(content, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None

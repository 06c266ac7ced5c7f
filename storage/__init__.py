"""Storage: the SQLite schema, the batched writer, read-only queries and export.

The only area that imports sqlite-utils (tests/unit/test_boundaries.py): this package loads it
first, without numpy and pandas, so that every other module gets that import.
"""

import sys


def _import_sqlite_utils() -> None:
    """sqlite-utils imports numpy and pandas when they are installed, only to map their scalar
    types to column types. llmtop stores no numpy values, and numpy (installed for the engine's
    torch) is 30-90 ms of every command's start, a tenth of a short ``llmtop record``'s CPU.
    Hidden while sqlite-utils loads, they import normally afterwards."""
    if "sqlite_utils" in sys.modules:
        return
    hidden = [name for name in ("numpy", "pandas") if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # import of it raises ImportError
    try:
        import sqlite_utils  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]


_import_sqlite_utils()

"""The few exceptions llmtop raises on purpose, each with a message a user can act on.

    LlmtopError                 anything llmtop reports as one clear line, never a traceback
    ├── UsageError              bad arguments or a bad scenario file (exit code 2)
    ├── SourceError             a server or sampler that cannot be reached or understood
    └── StorageError            the database: unreadable, not SQLite, newer schema, disk full

The engine (``llmtop.engine``) is a separate program and keeps its own ``ModelLoadError``.
"""

from __future__ import annotations


class LlmtopError(Exception):
    """An expected failure: the CLI prints its message on one line and exits non-zero."""

    exit_code = 1


class UsageError(LlmtopError):
    """The user asked for something that cannot work as given."""

    exit_code = 2


class SourceError(LlmtopError):
    """A model server or a sampler could not be used."""


class StorageError(LlmtopError):
    """The database could not be opened, read or written."""

"""The engine's own exceptions: it is a separate program and imports nothing else of llmtop.

EngineError            anything the engine reports as one clear line
├── ModelLoadError     the model file is missing, not GGUF, or not a llama model we can run
└── RequestError       a request that cannot be served as given (prompt too long, no template)
"""

from __future__ import annotations


class EngineError(Exception):
    """An expected failure with a message a user can act on."""


class ModelLoadError(EngineError):
    """The model could not be located, read or understood."""


class RequestError(EngineError):
    """A generation request that cannot run as given."""

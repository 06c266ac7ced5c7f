"""What the user asks a run to be: the backend and run flags of ``llmtop record``, as given on
the command line and edited in the launcher, and the plan they make."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from llmtop.scenarios.recording import RecordPlan

BACKENDS: tuple[str, ...] = ("auto", "ollama", "openai", "engine")


@dataclass(frozen=True)
class LaunchSettings:
    """The flags of app/commands/run_options.py by their keyword names (``backend``, ``url``,
    ``model``, ``scenario``, ``requests``, ``concurrency``, ``rate``, ``duration``,
    ``max_tokens``, ``temperature``, ``name``...); a missing or ``None`` flag is not given."""

    flags: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "flags", MappingProxyType(dict(self.flags)))

    def get(self, key: str, default: Any = None) -> Any:
        value = self.flags.get(key)
        return default if value is None else value

    def replace(self, **changes: Any) -> LaunchSettings:
        """A copy with some flags changed (``None`` removes one)."""
        merged = {**self.flags, **changes}
        return LaunchSettings({k: v for k, v in merged.items() if v is not None})

    @property
    def backend(self) -> str:
        return str(self.get("backend", "auto"))

    @property
    def url(self) -> str | None:
        return self.get("url")

    @property
    def model(self) -> str | None:
        return self.get("model")

    @property
    def scenario(self) -> str | None:
        return self.get("scenario")

    def plan(self) -> RecordPlan:
        """The run these flags describe, exactly as ``llmtop record`` would make it.

        Raises:
            UsageError: an unknown scenario, a bad scenario file, flags that cannot combine.
        """
        from llmtop.app.commands.run_options import plan_from

        return plan_from(**self.flags)

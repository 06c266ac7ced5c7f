"""The run flags of ``llmtop record`` (and of the dashboard's launcher) as one typed object, and
the plan they make.

The click layer (app/commands/run_options.py) fills a ``RunFlags`` from the command line; the
launcher fills one from its form; both turn it into a ``RecordPlan`` with :func:`plan_from_flags`,
so a flag means the same thing wherever it is given. A flag that cannot work raises
``FlagError`` naming the flag, so a form can mark the field without reading the message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from llmtop.core.errors import UsageError
from llmtop.core.requests import Api, Timeouts
from llmtop.recorder.plan import RecordPlan
from llmtop.recorder.workers import auto_workers
from llmtop.scenarios.loader import load_scenario
from llmtop.scenarios.model import Arrival, Overrides, Scenario, apply_overrides, single_step

BACKENDS: tuple[str, ...] = ("auto", "ollama", "openai", "engine")


class FlagError(UsageError):
    """A run flag that cannot work as given; ``flag`` names it (``rate``, ``scenario``...)."""

    def __init__(self, message: str, flag: str | None = None) -> None:
        super().__init__(message)
        self.flag = flag


@dataclass(frozen=True, slots=True)
class RunFlags:
    """The backend and run flags, by their keyword names; ``None`` means not given."""

    backend: str = "auto"
    url: str | None = None
    model: str | None = None
    api_key_env: str | None = None
    server_pid: int | None = None
    scenario: str | None = None
    """A built-in scenario's name or a TOML file; ``None``: one step of ``prompt``."""
    requests: int | None = None
    concurrency: int | None = None
    duration: float | None = None
    """Seconds per step, instead of a number of requests."""
    rate: float | None = None
    """Requests per second, open loop."""
    arrival: Arrival | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    name: str = ""
    prompt: str | None = None
    warmup: int | None = None
    unique_prompts: bool | None = None
    api: Api | None = None
    no_tokens: bool = False
    sample_hz: float | None = None
    timeout: float | None = None
    """Seconds a request may stay silent (before its first token, and between chunks)."""
    workers: str | None = None
    """Processes that send the requests: a number, or ``auto`` (from the concurrency and the
    cores); ``None``: one."""

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> RunFlags:
        """The flags among a command's keyword arguments (other options are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        given = {k: v for k, v in options.items() if k in names and v is not None}
        return cls(**given)

    def replace(self, **changes: Any) -> RunFlags:
        """A copy with some flags changed (``None`` clears one)."""
        defaults = RunFlags()
        fixed = {k: (getattr(defaults, k) if v is None else v) for k, v in changes.items()}
        return dataclasses.replace(self, **fixed)

    def given(self) -> dict[str, Any]:
        """The flags given, for ``params_json`` (defaults and empty values left out)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v not in (None, "", False) and not (f.name == "backend" and v == "auto"):
                out[f.name] = v
        return out


def plan_warnings(plan: RecordPlan) -> list[str]:
    """What the plan does that the user may not mean (it still runs): a closed step with fewer
    requests than workers never has ``concurrency`` in flight (``--requests 2`` on the
    ``concurrency`` scenario makes c4 and c8 measure 2 at a time)."""
    out = []
    for step in plan.scenario.steps:
        c, n = step.concurrency, step.requests
        if not step.open_loop and c is not None and n is not None and n < c:
            out.append(
                f"step {step.name!r} sends {n} request{'s' if n != 1 else ''} with concurrency "
                f"{c}: never more than {n} in flight (give --requests {c} or more)"
            )
    return out


def plan_from_flags(flags: RunFlags) -> RecordPlan:
    """The run that the flags describe.

    Raises:
        FlagError: an unknown scenario, a bad scenario file, or flags that cannot combine.
    """
    ov = Overrides(
        requests=flags.requests,
        duration_s=flags.duration,
        concurrency=flags.concurrency,
        rate=flags.rate,
        arrival=flags.arrival,
        max_tokens=flags.max_tokens,
        temperature=flags.temperature,
        seed=flags.seed,
        api=flags.api,
        prompt=flags.prompt,
        warmup=flags.warmup,
        unique_prompts=flags.unique_prompts,
    )
    if flags.backend not in BACKENDS:
        raise FlagError(f"unknown backend {flags.backend!r}: choose one of {', '.join(BACKENDS)}", "backend")  # fmt: skip
    if ov.arrival in ("constant", "poisson") and ov.rate is None and not flags.scenario:
        raise FlagError(f"--arrival {ov.arrival} needs --rate REQ_PER_S", "rate")
    if ov.arrival == "closed" and ov.rate is not None:
        raise FlagError("--rate needs --arrival constant or poisson, not closed", "rate")
    if ov.prompt is not None and not ov.prompt.strip():
        raise FlagError("--prompt must not be empty", "prompt")
    try:
        if flags.scenario:
            scenario = apply_overrides(load_scenario(flags.scenario), ov)
        else:
            scenario = single_step(ov)
    except UsageError as e:
        raise FlagError(str(e), "scenario") from None
    except ValueError as e:  # apply_overrides: an arrival that needs a rate
        raise FlagError(str(e), "rate") from None
    workers = parse_workers(flags.workers, scenario)
    timeouts = Timeouts()
    if flags.timeout:
        t = flags.timeout
        timeouts = dataclasses.replace(timeouts, first_token_s=t, between_chunks_s=t)
    return RecordPlan(
        scenario=scenario,
        backend=flags.backend,
        url=flags.url,
        model=flags.model,
        api_key_env=flags.api_key_env,
        name=flags.name,
        store_tokens=not flags.no_tokens,
        sample_hz=flags.sample_hz,
        timeouts=timeouts,
        server_pid=flags.server_pid,
        flags=flags.given(),
        workers=workers,
    )


MAX_WORKERS = 64


def parse_workers(value: str | None, scenario: Scenario) -> int:
    """``--workers``: a number of processes (1..64), or ``auto``.

    Raises:
        FlagError: anything else.
    """
    if value is None:
        return 1
    text = str(value).strip().lower()
    if text == "auto":
        return auto_workers(scenario)
    if not text.isdigit() or not 1 <= int(text) <= MAX_WORKERS:
        raise FlagError(
            f"--workers {value!r}: give a number of processes from 1 to {MAX_WORKERS}, or auto",
            "workers",
        )
    return int(text)

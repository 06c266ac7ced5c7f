"""The run flags of ``llmtop record`` (and of the dashboard's launcher) as one typed object, and
the plan they make.

The click layer (app/commands/run_options.py) fills a ``RunFlags`` from the command line; the
launcher fills one from its form; both turn it into a ``RecordPlan`` with :func:`plan_from_flags`,
so a flag means the same thing wherever it is given. A flag that cannot work raises
``FlagError`` naming the flag, so a form can mark the field without reading the message.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmtop.core.errors import UsageError
from llmtop.core.requests import Api, Timeouts
from llmtop.recorder.plan import RecordPlan
from llmtop.recorder.workers import auto_workers
from llmtop.scenarios.loader import load_scenario
from llmtop.scenarios.model import Arrival, Overrides, Scenario, apply_overrides, single_step
from llmtop.scenarios.replay import replay_scenario, run_items, trace_items
from llmtop.storage import queries
from llmtop.storage.db import open_readonly

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
    replay: int | None = None
    """A stored run whose requests are sent again at their offsets."""
    replay_speed: float | None = None
    """Offsets divided by this (2: twice as fast)."""
    trace: str | None = None
    """A Mooncake-format JSONL trace to send."""
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


def plan_from_flags(flags: RunFlags, db_path: str | Path | None = None) -> RecordPlan:
    """The run that the flags describe (``db_path``: where ``--replay`` finds its run).

    Raises:
        FlagError: an unknown scenario, a bad scenario file, or flags that cannot combine.
    """
    if flags.replay is not None or flags.trace is not None or flags.replay_speed is not None:
        return _replay_plan(flags, db_path)
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


REPLAY_EXCLUDES = ("scenario", "requests", "concurrency", "duration", "rate", "arrival",
                   "max_tokens", "temperature", "seed", "prompt", "warmup", "unique_prompts")  # fmt: skip
"""Flags that say what to send: a replay sends what it replays."""


def _replay_plan(flags: RunFlags, db_path: str | Path | None) -> RecordPlan:
    """``--replay RUN`` or ``--trace FILE``, at ``--replay-speed``."""
    if flags.replay is not None and flags.trace is not None:
        raise FlagError("choose one of --replay RUN and --trace FILE", "replay")
    if flags.replay is None and flags.trace is None:
        raise FlagError("--replay-speed goes with --replay RUN or --trace FILE", "replay_speed")
    given = [name for name in REPLAY_EXCLUDES if getattr(flags, name) not in (None, False)]
    if given:
        what = "--replay" if flags.replay is not None else "--trace"
        flag = "--" + given[0].replace("_", "-")
        raise FlagError(f"{flag} does not go with {what}: it sends the requests it replays", given[0])  # fmt: skip
    if flags.workers is not None and str(flags.workers).strip() != "1":
        raise FlagError("--workers does not go with --replay or --trace yet: a replay is sent by one process", "workers")  # fmt: skip
    speed = 1.0 if flags.replay_speed is None else flags.replay_speed
    if flags.trace is not None:
        items = trace_items(flags.trace, api=flags.api or "chat")
        scenario = replay_scenario(items, name=f"trace {Path(flags.trace).name}",
                                   source=str(flags.trace), speed=speed)  # fmt: skip
    else:
        run_id = flags.replay
        assert run_id is not None
        db = open_readonly(db_path)
        try:
            run = queries.get_run(db, run_id)
            if run is None:
                raise FlagError(f"--replay {run_id}: no such run in {db_path or 'the database'} (see 'llmtop runs')", "replay")  # fmt: skip
            items = run_items(queries.request_rows(db, run_id))
        finally:
            db.conn.close()
        if flags.api is not None:
            items = [dataclasses.replace(it, api=flags.api) for it in items]
        scenario = replay_scenario(items, name=f"replay of run {run_id}", source=f"run {run_id}",
                                   speed=speed)  # fmt: skip
    models = Counter(it.model for it in scenario.steps[0].replay if it.model)
    model = flags.model or (models.most_common(1)[0][0] if models else None)
    if flags.model is not None:  # one model for every request
        step = scenario.steps[0]
        step = dataclasses.replace(
            step, replay=tuple(dataclasses.replace(it, model=None) for it in step.replay)
        )
        scenario = dataclasses.replace(scenario, steps=(step,))
    timeouts = Timeouts()
    if flags.timeout:
        timeouts = dataclasses.replace(timeouts, first_token_s=flags.timeout, between_chunks_s=flags.timeout)  # fmt: skip
    return RecordPlan(
        scenario=scenario, backend=flags.backend, url=flags.url, model=model,
        api_key_env=flags.api_key_env, name=flags.name, store_tokens=not flags.no_tokens,
        sample_hz=flags.sample_hz, timeouts=timeouts, server_pid=flags.server_pid,
        flags=flags.given(),
    )  # fmt: skip


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

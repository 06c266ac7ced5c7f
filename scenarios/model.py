"""The scenario model: what a run asks of a server, step by step, as frozen dataclasses.

A scenario is data only (loaded from TOML by scenarios/loader.py, never executed). The runner
reads it; the recording stores :meth:`Scenario.params` in ``runs.params_json`` so reports can
say how a run was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from llmtop.core.metrics import Slo
from llmtop.core.requests import Api

Arrival = Literal["closed", "constant", "poisson"]
"""How requests arrive in a step.

``closed``: ``concurrency`` workers, each sending its next request when the last one ended
(concurrency 1 is sequential). ``constant``: one request every ``1 / rate`` seconds.
``poisson``: exponential gaps with mean ``1 / rate`` (seeded, so reproducible). The open-loop
kinds send on schedule whatever the server's state, which is how overload shows up.
"""

ARRIVALS: tuple[str, ...] = ("closed", "constant", "poisson")
APIS: tuple[str, ...] = ("chat", "generate")
DEFAULT_REQUESTS = 10
DEFAULT_PROMPT = "What is AI?"
DEFAULT_MAX_TOKENS = 128


@dataclass(frozen=True, slots=True)
class Prompt:
    """One prompt of a scenario, by label."""

    label: str
    text: str
    tokens: int | None = None
    """The length asked for when the text was generated (``{ tokens = N }``), else ``None``."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step: a set of prompts sent a number of times (or for a while) at some load."""

    name: str
    prompts: tuple[Prompt, ...]
    requests: int | None = DEFAULT_REQUESTS
    duration_s: float | None = None
    concurrency: int | None = 1
    """Closed loop: the number of workers. Open loop: the most requests in flight (``None``:
    no cap); a capped arrival waits for a free slot."""
    rate: float | None = None
    """Requests per second, for the open-loop arrivals."""
    arrival: Arrival = "closed"
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    seed: int | None = None
    """Seeds the arrival times and each request's sampler (seed + request number)."""
    api: Api = "chat"
    system: str | None = None
    unique_prompts: bool = False
    """Prefix each prompt with its request number, so no server-side prefix cache can reuse
    an earlier request's prefill and TTFT shows the full prompt's cost."""

    @property
    def open_loop(self) -> bool:
        return self.arrival != "closed"

    def params(self) -> dict[str, Any]:
        """The step as stored in ``runs.params_json`` (the keys the reports read)."""
        return {
            "name": self.name,
            "requests": self.requests,
            "duration_s": self.duration_s,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "arrival": self.arrival,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "prompts": [p.label for p in self.prompts],
            "seed": self.seed,
            "api": self.api,
            "unique_prompts": self.unique_prompts,
        }

    def describe(self) -> str:
        """One line for humans: how much, at what load."""
        if self.requests is not None and self.duration_s is not None:
            amount = f"{self.requests} requests or {self.duration_s:g} s"
        elif self.requests is not None:
            amount = f"{self.requests} request{'s' * (self.requests != 1)}"
        else:
            amount = f"{self.duration_s:g} s"
        if self.open_loop:
            load = f"{self.arrival} arrivals at {self.rate:g} req/s"
            if self.concurrency is not None:
                load += f" (at most {self.concurrency} in flight)"
        elif self.concurrency == 1:
            load = "sequential"
        else:
            load = f"{self.concurrency} concurrent workers"
        extra = []
        if self.temperature is not None:
            extra.append(f"temperature {self.temperature:g}")
        if self.max_tokens is not None:
            extra.append(f"max {self.max_tokens} tokens")
        labels = ", ".join(p.label for p in self.prompts)
        return f"{amount}, {load}; prompts: {labels}" + (f"; {', '.join(extra)}" if extra else "")


@dataclass(frozen=True, slots=True)
class Scenario:
    """A named sequence of steps, with warm-up and service-level objectives."""

    name: str
    steps: tuple[Step, ...]
    description: str = ""
    warmup: int | None = None
    """Requests sent before the first step (its first prompt); recorded with ``warmup`` set
    and left out of every statistic. ``None``: one per worker of the busiest step (see
    ``warmup_requests``)."""
    slo: Slo = field(default_factory=Slo)
    stop_below_goodput: float | None = None
    """Stop before the next step once a step's goodput (share meeting the SLOs) falls below
    this: how ``rate-sweep`` finds where the SLOs break."""
    sample_hz: float | None = None
    """Resource sampling rate this scenario asks for (``--sample-hz`` overrides)."""
    prompts: tuple[Prompt, ...] = ()
    """Every prompt the scenario defines, in file order."""
    source: str = ""
    """``builtin`` or the file it was loaded from."""

    @property
    def workers(self) -> int:
        """The most requests any step keeps in flight by its workers (open-loop steps without a
        cap count as 1)."""
        return max((s.concurrency or 1 for s in self.steps), default=1)

    @property
    def warmup_requests(self) -> int:
        """Warm-up requests to send: ``warmup`` when set, else one per worker, so every batch
        slot and connection a step will use is warm before the first timed request (a cold
        start at concurrency 4 put the first four requests' model load into TTFT p95)."""
        return self.workers if self.warmup is None else self.warmup

    def params(self) -> dict[str, Any]:
        """What ``runs.params_json`` keeps of the scenario (flags are added by the recording)."""
        all_prompts = {p.label: p for p in self.prompts}
        for s in self.steps:
            for p in s.prompts:
                all_prompts.setdefault(p.label, p)
        return {
            "scenario": self.name,
            "description": self.description,
            "source": self.source,
            "warmup": self.warmup_requests,
            "steps": [s.params() for s in self.steps],
            "slo": {
                "ttft_ms": self.slo.ttft_ms,
                "tpot_ms": self.slo.tpot_ms,
                "e2e_ms": self.slo.e2e_ms,
            },
            "stop_below_goodput": self.stop_below_goodput,
            "prompts": {
                p.label: {"chars": len(p.text), "tokens": p.tokens} for p in all_prompts.values()
            },
        }


@dataclass(frozen=True, slots=True)
class Overrides:
    """Run flags given on the command line; each one that is set overrides every step."""

    requests: int | None = None
    duration_s: float | None = None
    concurrency: int | None = None
    rate: float | None = None
    arrival: Arrival | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    api: Api | None = None
    prompt: str | None = None
    warmup: int | None = None
    unique_prompts: bool | None = None

    def given(self) -> dict[str, Any]:
        """The flags that were set, for ``params_json``."""
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if getattr(self, f.name) is not None
        }


def _override_step(step: Step, ov: Overrides) -> Step:
    changes: dict[str, Any] = {}
    if ov.requests is not None:
        changes["requests"] = ov.requests
        if ov.duration_s is None:
            changes["duration_s"] = None
    if ov.duration_s is not None:
        changes["duration_s"] = ov.duration_s
        if ov.requests is None:
            changes["requests"] = None
    if ov.arrival == "closed":
        changes.update(arrival="closed", rate=None)
        if step.concurrency is None and ov.concurrency is None:
            changes["concurrency"] = 1
    elif ov.rate is not None:
        changes["rate"] = ov.rate
        changes["arrival"] = ov.arrival or (step.arrival if step.open_loop else "poisson")
        if not step.open_loop and ov.concurrency is None:
            changes["concurrency"] = None  # workers do not carry over as a cap
    elif ov.arrival is not None:
        if not step.open_loop:
            raise ValueError(f"--arrival {ov.arrival} needs --rate (step {step.name!r} has none)")
        changes["arrival"] = ov.arrival
    for name in ("concurrency", "max_tokens", "temperature", "seed", "api", "unique_prompts"):
        value = getattr(ov, name)
        if value is not None:
            changes[name] = value
    if ov.prompt is not None:
        changes["prompts"] = (Prompt("custom", ov.prompt),)
    return dataclasses.replace(step, **changes)


def apply_overrides(scenario: Scenario, ov: Overrides) -> Scenario:
    """The scenario with every flag of ``ov`` applied to every step.

    ``--requests`` alone drops a step's duration and ``--duration`` alone its request count, so
    the flag given is the one that ends the step; ``--rate`` turns a closed step into Poisson
    arrivals. Raises ``ValueError`` for a combination that cannot work.
    """
    steps = tuple(_override_step(s, ov) for s in scenario.steps)
    prompts = scenario.prompts
    if ov.prompt is not None:
        prompts = (Prompt("custom", ov.prompt),)
    return dataclasses.replace(
        scenario,
        steps=steps,
        prompts=prompts,
        warmup=scenario.warmup if ov.warmup is None else ov.warmup,
    )


def single_step(ov: Overrides) -> Scenario:
    """The run of ``record`` without ``--scenario``: one step of ``--prompt`` (DESIGN.md)."""
    prompt = (
        Prompt("custom", ov.prompt) if ov.prompt is not None else Prompt("short", DEFAULT_PROMPT)
    )
    base = Step(name="default", prompts=(prompt,))
    scenario = Scenario(
        name="custom",
        description="one step from the command line",
        steps=(base,),
        prompts=(prompt,),
        source="command line",
    )
    return apply_overrides(scenario, dataclasses.replace(ov, prompt=None))

"""Fixed runs shaped like each built-in scenario, written through the real writer.

Every number is chosen so the tests can work the answers out by hand: request k of a group
starts when the previous one ends (or in waves of ``concurrency``), its first chunk comes
``ttft_ms`` later and then one token every ``itl_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.runs import FakeRequest, write_run

from llmtop.core.events import ServerTimings
from llmtop.storage.writer import RunInfo

SCENARIOS: tuple[str, ...] = (
    "basic",
    "prompt-length",
    "temperature",
    "concurrency",
    "soak",
    "rate-sweep",
)
SLO = {"ttft_ms": 300.0, "tpot_ms": 50.0, "e2e_ms": None}


@dataclass
class Shape:
    """One group of requests: how many, and their timings."""

    step: str
    n: int
    ttft_ms: float
    itl_ms: float
    tokens: int
    prompt_label: str = ""
    prompt_tokens: int | None = None
    concurrency: int = 1
    temperature: float = 0.0
    rate: float | None = None


def requests_for(
    shapes: list[Shape], *, jitter_ms: float = 0.0, phase: int = 0
) -> list[FakeRequest]:
    """Requests of each shape in waves of ``concurrency``, groups one after another.

    ``jitter_ms`` adds a fixed pattern (0, +j, -j, ...) to TTFT and ITL so percentiles spread;
    ``phase`` shifts the pattern, for a second run of the same server that is not a copy.
    """
    out: list[FakeRequest] = []
    t = 0.0
    for sh in shapes:
        done = 0
        while done < sh.n:
            wave = min(sh.concurrency, sh.n - done)
            wave_end = t
            for w in range(wave):
                k = done + w
                j = (0.0, jitter_ms, -jitter_ms)[(k + phase) % 3]
                labels = (sh.prompt_label or sh.step).split(",")
                # open loop at a rate: one arrival every 1/rate s; else a wave of workers
                start = t + k * 1000 / sh.rate if sh.rate else t + w * 0.5
                first = start + sh.ttft_ms + j
                itl = sh.itl_ms + j / 10
                chunks = [first + i * itl for i in range(sh.tokens)]
                end = chunks[-1] + 1.0
                out.append(
                    FakeRequest(
                        start,
                        chunks,
                        end_ms=end,
                        step=sh.step,
                        prompt_label=labels[k % len(labels)],
                        server=ServerTimings(prompt_tokens=sh.prompt_tokens),
                        concurrency=sh.concurrency,
                        temperature=sh.temperature,
                    )
                )
                wave_end = max(wave_end, end)
            done += wave
            if not sh.rate:
                t = wave_end + 5.0
        if sh.rate:
            t = wave_end
        t += 100.0
    return out


def plan(name: str, shapes: list[Shape], **extra: Any) -> dict[str, Any]:
    """``runs.params_json`` as the scenario runner stores it."""
    steps = []
    for sh in shapes:
        if any(s["name"] == sh.step for s in steps):
            continue
        steps.append(
            {
                "name": sh.step,
                "requests": sh.n,
                "duration_s": None,
                "concurrency": sh.concurrency,
                "rate": sh.rate,
                "arrival": "poisson" if sh.rate else None,
                "max_tokens": sh.tokens,
                "temperature": sh.temperature,
                "prompts": (sh.prompt_label or sh.step).split(","),
            }
        )
    return {"scenario": name, "steps": steps, "slo": SLO, "flags": {}, **extra}


def shapes_of(name: str) -> list[Shape]:
    if name == "basic":
        return [
            Shape("short", 5, 100, 20, 20, prompt_tokens=6),
            Shape("medium", 5, 180, 20, 20, prompt_tokens=40),
            Shape("long", 5, 420, 21, 20, prompt_tokens=160),
        ]
    if name == "prompt-length":
        sizes = [
            ("tiny", 3, 80),
            ("short", 12, 100),
            ("medium", 60, 150),
            ("long", 250, 300),
            ("very-long", 1000, 900),
        ]
        return [Shape(label, 4, ttft, 20, 16, prompt_tokens=toks) for label, toks, ttft in sizes]
    if name == "temperature":
        return [
            Shape(f"temp-{t}", 4, 150, 20, tokens, prompt_label="medium", temperature=t)
            for t, tokens in [(0.0, 16), (0.7, 20), (1.5, 26)]
        ]
    if name == "concurrency":
        return [
            Shape(f"c{c}", 2 * c, 100 + 40 * c, 20 + 2 * c, 16, prompt_label="short", concurrency=c)
            for c in (1, 2, 4, 8)
        ]
    if name == "soak":
        return [Shape("steady", 30, 120, 20, 16, prompt_label="short,medium", concurrency=2)]
    if name == "rate-sweep":
        return [
            Shape(f"r{r:g}", 6, ttft, 20, 12, prompt_label="short,medium", rate=r)
            for r, ttft in [(0.5, 100), (1, 150), (2, 280), (4, 600)]
        ]
    raise ValueError(name)


def write_scenario_run(
    path: Path,
    name: str,
    *,
    itl_scale: float = 1.0,
    jitter_ms: float = 6.0,
    label: str = "",
    phase: int = 0,
) -> int:
    """Record one run of scenario ``name`` into ``path``; returns its id."""
    shapes = shapes_of(name)
    for sh in shapes:
        sh.itl_ms *= itl_scale
    reqs = requests_for(shapes, jitter_ms=jitter_ms, phase=phase)
    if name == "basic":
        reqs.insert(0, FakeRequest(0, [50, 60], step="short", prompt_label="short", warmup=True))
    if name == "concurrency":
        reqs.append(
            FakeRequest(
                reqs[-1].end_ms + 10,
                [],
                end_ms=reqs[-1].end_ms + 20,
                step="c8",
                prompt_label="short",
                concurrency=8,
                fail="timeout",
            )
        )
    samples: list[tuple[float, float, int]] = []
    if name in ("soak", "concurrency"):
        last = max(r.end_ms or 0 for r in reqs)
        samples = [
            (t, 40.0 + (t // 1000) % 5 * 5, (4 << 30) + int(t) * 1000)
            for t in range(0, int(last) + 1, 500)
        ]
    info = RunInfo(
        name=label or f"{name} run",
        scenario=name,
        backend="ollama",
        base_url="http://127.0.0.1:11434",
        model="llama3.1:8b",
        params=plan(name, shapes),
    )
    return write_run(path, reqs, info=info, samples=samples)

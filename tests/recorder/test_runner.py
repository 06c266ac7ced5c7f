"""The runner: closed and open loops, counts and durations, arrivals on schedule, labels, warm-up."""

from __future__ import annotations

import dataclasses
import itertools
import random
import statistics

import pytest
from support.scripted_backend import ScriptedBackend
from support.virtual_time import now_ns, run_virtual

from llmtop.core.events import RequestStarted
from llmtop.recorder.runner import Runner, arrival_offsets, step_rng
from llmtop.scenarios.model import Prompt, Scenario, Step

P = (Prompt("a", "alpha"),)


def make_runner(backend: ScriptedBackend) -> tuple[Runner, list]:
    events: list = []
    return Runner(backend, run_id=1, model="m", emit=events.append), events


def rel_starts_ms(backend: ScriptedBackend) -> list[float]:
    return [(t - backend.starts_ns[0]) / 1e6 for t in backend.starts_ns]


async def test_sequential_step_sends_one_at_a_time_in_order():
    be = ScriptedBackend(ttft_ms=1, tokens=2)
    runner, events = make_runner(be)
    out = await runner.run_step(Step("s", P, requests=5, concurrency=1), 0)
    assert out.sent == 5 and be.max_in_flight == 1
    assert [r.request_id for r in be.requests] == [1, 2, 3, 4, 5]
    starts = [e for e in events if isinstance(e, RequestStarted)]
    assert [e.request_id for e in starts] == [1, 2, 3, 4, 5]


async def test_closed_loop_keeps_exactly_n_in_flight():
    be = ScriptedBackend(ttft_ms=15, tokens=2)
    runner, _ = make_runner(be)
    out = await runner.run_step(Step("c4", P, requests=12, concurrency=4), 0)
    assert out.sent == 12 and len(be.requests) == 12
    assert be.max_in_flight == 4


async def test_labels_prompts_in_turn_seed_per_request_and_unique_prefix():
    be = ScriptedBackend(ttft_ms=0, tokens=1)
    runner, _ = make_runner(be)
    prompts = (Prompt("a", "alpha"), Prompt("b", "beta"), Prompt("c", "gamma", tokens=3))
    step = Step("mix", prompts, requests=6, concurrency=1, temperature=0.7, max_tokens=33,
                seed=100, unique_prompts=True, api="generate", system="be brief")  # fmt: skip
    await runner.run_step(step, 0)
    reqs = be.requests
    assert [r.prompt_label for r in reqs] == ["a", "b", "c", "a", "b", "c"]
    assert reqs[0].prompt == "Request 1. alpha" and reqs[5].prompt == "Request 6. gamma"
    assert {r.step for r in reqs} == {"mix"} and {r.temperature for r in reqs} == {0.7}
    assert [r.seed for r in reqs] == [101, 102, 103, 104, 105, 106]
    assert {(r.max_tokens, r.api, r.system, r.concurrency, r.warmup) for r in reqs} == {
        (33, "generate", "be brief", 1, False)
    }


async def test_warmup_uses_the_first_step_and_is_flagged():
    be = ScriptedBackend(ttft_ms=0, tokens=1)
    runner, _ = make_runner(be)
    first = Step("first", (Prompt("x", "ex"), Prompt("y", "why")), requests=2)
    scenario = Scenario("s", (first, Step("second", P, requests=1)), warmup=2)
    assert await runner.warmup(scenario) == 2
    await runner.run_step(first, 0)
    assert [(r.request_id, r.warmup, r.step, r.prompt_label) for r in be.requests] == [
        (1, True, "first", "x"), (2, True, "first", "x"), (3, False, "first", "x"),
        (4, False, "first", "y"),
    ]  # fmt: skip


async def test_default_warmup_is_one_per_worker_sent_together():
    """Without ``warmup``, the busiest step's workers each get one warm-up request, in flight at
    once, so a batching server has every slot warm before the first timed request."""
    be = ScriptedBackend(ttft_ms=5, tokens=2)
    runner, _ = make_runner(be)
    scenario = Scenario("s", (Step("c1", P, requests=1), Step("c3", P, requests=3, concurrency=3)))
    assert scenario.warmup is None and scenario.warmup_requests == 3
    assert await runner.warmup(scenario) == 3
    assert [r.warmup for r in be.requests] == [True, True, True]
    assert be.max_in_flight == 3
    zero = dataclasses.replace(scenario, warmup=0)
    assert await runner.warmup(zero) == 0 and len(be.requests) == 3


def test_constant_offsets_are_exact():
    offs = arrival_offsets("constant", 4.0, random.Random(0))
    assert [next(offs) for _ in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_poisson_offsets_are_reproducible_with_a_seed_and_have_the_rate():
    def draw(seed: int | None, step: int, n: int = 4000) -> list[float]:
        offs = arrival_offsets("poisson", 8.0, step_rng(seed, step))
        return [next(offs) for _ in range(n)]

    a, b = draw(42, 0), draw(42, 0)
    assert a == b
    assert draw(43, 0)[:50] != a[:50] and draw(42, 1)[:50] != a[:50]
    assert draw(None, 0)[:50] != draw(None, 0)[:50]
    gaps = [y - x for x, y in itertools.pairwise(a)]
    assert statistics.fmean(gaps) == pytest.approx(1 / 8, rel=0.05)
    # exponential: the standard deviation equals the mean
    assert statistics.pstdev(gaps) == pytest.approx(1 / 8, rel=0.1)


def test_closed_loop_has_no_schedule():
    with pytest.raises(ValueError):
        next(arrival_offsets("closed", 1.0, random.Random()))


def test_constant_rate_step_keeps_its_rate_to_the_nanosecond():
    """On the virtual clock (support/virtual_time.py) the schedule is exact. Every wake-up there
    comes 3 ms late, as on a busy machine: the first request leaves at once, request i after it at
    i x 20 ms + 3 ms. A runner that slept 1/rate after each send would drift by 3 ms a request;
    deadlines from the step's start do not."""

    async def main() -> list[int]:
        be = ScriptedBackend(ttft_ms=1, tokens=1, clock=now_ns)
        runner, _ = make_runner(be)
        out = await runner.run_step(Step("r50", P, requests=30, rate=50.0, arrival="constant",
                                         concurrency=None), 0)  # fmt: skip
        assert out.sent == 30
        return rel_starts_ms(be)

    starts = run_virtual(main(), late_s=0.003)
    assert starts == [0.0] + [pytest.approx(i * 20.0 + 3.0, abs=1e-6) for i in range(1, 30)]


def test_poisson_step_follows_its_seeded_schedule_every_time():
    """Twice the same seeded step: both runs send on the planned Poisson offsets exactly (the
    virtual clock), so they are the same run; a step with another seed is not."""
    planned_iter = arrival_offsets("poisson", 40.0, step_rng(7, 3))
    planned = [next(planned_iter) * 1e3 for _ in range(25)]

    async def main(seed: int) -> list[float]:
        be = ScriptedBackend(ttft_ms=1, tokens=1, clock=now_ns)
        runner, _ = make_runner(be)
        step = Step("p", P, requests=25, rate=40.0, arrival="poisson", concurrency=None,
                    seed=seed)  # fmt: skip
        await runner.run_step(step, 3)
        return rel_starts_ms(be)

    first, again, other = run_virtual(main(7)), run_virtual(main(7)), run_virtual(main(8))
    assert first == again == [pytest.approx(p, abs=1e-6) for p in planned]
    assert other != first


def test_duration_ends_a_closed_step_and_requests_in_flight_finish():
    """0.21 s of two closed-loop workers, 20 ms a request: each sends at 0, 20, ..., 200 ms and
    none after the deadline; the step ends when the last one in flight does, at 220 ms."""

    async def main() -> None:
        be = ScriptedBackend(ttft_ms=10, itl_ms=5, tokens=3, clock=now_ns)  # 20 ms a request
        runner, events = make_runner(be)
        out = await runner.run_step(Step("d", P, requests=None, duration_s=0.21, concurrency=2), 0)
        assert out.sent == 22 and be.max_in_flight == 2
        assert sorted(rel_starts_ms(be)) == [pytest.approx(20.0 * (i // 2)) for i in range(22)]
        assert out.elapsed_s == pytest.approx(0.22)
        finished = [e for e in events if type(e).__name__ == "RequestFinished"]
        assert len(finished) == out.sent  # nothing cut off at the deadline

    run_virtual(main())


def test_duration_ends_an_open_step_on_schedule():
    async def main() -> None:
        be = ScriptedBackend(ttft_ms=1, tokens=1, clock=now_ns)
        runner, _ = make_runner(be)
        out = await runner.run_step(
            Step("r", P, requests=None, duration_s=0.5, rate=20.0, arrival="constant",
                 concurrency=None), 0)  # fmt: skip
        assert out.sent == 10  # due at 0, 50, ..., 450 ms
        assert rel_starts_ms(be) == [pytest.approx(50.0 * i) for i in range(10)]

    run_virtual(main())


async def test_open_loop_cap_limits_requests_in_flight():
    be = ScriptedBackend(ttft_ms=20, tokens=1)
    runner, _ = make_runner(be)
    out = await runner.run_step(Step("cap", P, requests=8, rate=1000.0, arrival="constant",
                                     concurrency=2), 0)  # fmt: skip
    assert out.sent == 8 and be.max_in_flight == 2

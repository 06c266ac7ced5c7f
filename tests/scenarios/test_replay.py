"""Replay plans (scenarios/replay.py): Mooncake traces with their shared prefixes, stored runs
with their offsets, prompts and lengths, and the flags that make them (recorder/flags.py)."""

from __future__ import annotations

import json

import pytest

from llmtop.core.errors import UsageError
from llmtop.recorder.flags import FlagError, RunFlags, plan_from_flags
from llmtop.scenarios.replay import (
    BLOCK_TOKENS,
    block_text,
    filler,
    replay_scenario,
    run_items,
    trace_items,
)


def _write(tmp_path, lines: list[object]) -> str:
    p = tmp_path / "trace.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return str(p)


def _words(text: str) -> list[str]:
    return text.split(" ")[1:]


def test_a_trace_gives_offsets_lengths_and_prefixes_shared_as_its_hash_ids_say(tmp_path):
    path = _write(tmp_path, [
        {"timestamp": 1000, "input_length": 1100, "output_length": 10, "hash_ids": [7, 8, 9]},
        {"timestamp": 1250, "input_length": 600, "output_length": 3, "hash_ids": [7, 5]},
        {"timestamp": 1250.5, "input_length": 40, "output_length": 0},
    ])  # fmt: skip
    a, b, c = trace_items(path)
    assert [x.offset_s for x in (a, b, c)] == [0.0, 0.25, 0.2505]
    assert (a.max_tokens, b.max_tokens, c.max_tokens) == (10, 3, 1)  # at least one token
    assert [len(_words(x.prompt)) for x in (a, b, c)] == [1100, 600, 40]
    wa, wb = _words(a.prompt), _words(b.prompt)
    assert wa[:BLOCK_TOKENS] == wb[:BLOCK_TOKENS] == _words(block_text(7))  # id 7 shared
    assert wa[BLOCK_TOKENS : 2 * BLOCK_TOKENS] != wb[BLOCK_TOKENS:]  # 8 and 5 differ
    assert wa[2 * BLOCK_TOKENS :] == _words(block_text(9))[: 1100 - 2 * BLOCK_TOKENS]
    assert a.label == "trace" and a.api == "chat"


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("not json", "trace.jsonl:1: not JSON"),
        ("[1, 2]", "trace.jsonl:1: expected a JSON object"),
        ({"input_length": 5, "output_length": 5}, "'timestamp' must be a number"),
        ({"timestamp": 0, "input_length": -1, "output_length": 5}, "'input_length' must be"),
        ({"timestamp": 0, "input_length": 5, "output_length": "x"}, "'output_length' must be"),
        ({"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1.5]}, "'hash_ids'"),
    ],
    ids=["json", "object", "timestamp", "negative", "type", "hash-ids"],
)
def test_a_bad_trace_line_is_named(tmp_path, line, says):
    with pytest.raises(UsageError, match=says.replace("(", r"\(").replace("[", r"\[")):
        trace_items(_write(tmp_path, [line]))


def test_an_empty_or_missing_trace_is_one_error(tmp_path):
    with pytest.raises(UsageError, match="no trace records"):
        trace_items(_write(tmp_path, []))
    with pytest.raises(UsageError, match="cannot read trace"):
        trace_items(tmp_path / "missing.jsonl")


def _row(i: int, start_ms: float, **kw: object) -> dict[str, object]:
    base: dict[str, object] = {
        "run_id": 4, "id": i, "t_start_ns": int(start_ms * 1e6), "warmup": 0, "status": "ok",
        "api": "chat", "model": "m", "prompt": None, "prompt_chars": 30, "output_tokens": 7,
        "max_tokens": 64, "temperature": 0.5, "params_json": json.dumps({"options": {"seed": 3}}),
    }  # fmt: skip
    base.update(kw)
    return base


def test_a_stored_run_replays_offsets_prompts_and_lengths():
    stored = json.dumps({"messages": [{"role": "system", "content": "s"},
                                      {"role": "user", "content": "hello"}]})  # fmt: skip
    rows = [
        _row(2, 5250.0, prompt=stored),
        _row(1, 5000.0, api="generate", prompt=json.dumps({"prompt": "p", "system": "y"})),
        _row(3, 5600.0, status="error", output_tokens=2),
        _row(4, 4000.0, warmup=1),
    ]
    first, second, third = run_items(rows)
    assert [x.offset_s for x in (first, second, third)] == [0.0, 0.25, 0.6]
    assert (first.api, first.prompt, first.system, first.label) == ("generate", "p", "y", "stored")
    assert second.messages == (("system", "s"), ("user", "hello")) and second.label == "stored"
    assert (second.max_tokens, third.max_tokens) == (7, 64)  # what it got; what a failure asked
    assert third.label == "generated" and len(third.prompt) == 30
    assert (second.temperature, second.seed, second.model) == (0.5, 3, "m")


def test_filler_is_exactly_as_long_and_seeded():
    assert len(filler(1, "a")) == 1 and len(filler(5000, "a")) == 5000
    assert filler(100, "a") == filler(100, "a") != filler(100, "b")


def test_speed_divides_the_offsets_and_a_replay_needs_requests():
    rows = [_row(1, 0.0), _row(2, 1000.0)]
    s = replay_scenario(run_items(rows), name="r", source="run 4", speed=4)
    assert [x.offset_s for x in s.steps[0].replay] == [0.0, 0.25]
    assert s.steps[0].arrival == "replay" and s.steps[0].requests == 2
    with pytest.raises(UsageError, match="nothing to replay"):
        replay_scenario([], name="r", source="run 4")


def test_flags_that_cannot_go_with_a_replay(tmp_path):
    path = _write(tmp_path, [{"timestamp": 0, "input_length": 5, "output_length": 5}])
    with pytest.raises(FlagError, match="--requests does not go with --trace"):
        plan_from_flags(RunFlags(trace=path, requests=3))
    with pytest.raises(FlagError, match="choose one of --replay RUN and --trace FILE"):
        plan_from_flags(RunFlags(trace=path, replay=1))
    with pytest.raises(FlagError, match="--replay-speed goes with"):
        plan_from_flags(RunFlags(replay_speed=2.0))
    with pytest.raises(FlagError, match="--workers does not go with --replay or --trace"):
        plan_from_flags(RunFlags(trace=path, workers="2"))
    assert plan_from_flags(RunFlags(trace=path, workers="1")).scenario.steps[0].replay
    plan = plan_from_flags(RunFlags(trace=path, replay_speed=2.0, model="x", api="generate"))
    assert plan.model == "x" and plan.scenario.steps[0].replay[0].api == "generate"

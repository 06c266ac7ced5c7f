"""Replaying traffic: a stored run (``record --replay RUN``) or a Mooncake-format trace
(``record --trace FILE.jsonl``) as a plan of requests at fixed offsets, sent open loop.

Each ``ReplayItem`` is one request at its offset from the first one (the idle time before a
proxy's first client is not replayed), with the API, model, sampling settings and output length
it had, and its prompt: the one stored (a proxy run with ``--store-prompts``), else text of the
stored length. A trace line gives ``timestamp`` (ms), ``input_length`` and ``output_length`` in
tokens, and optionally ``hash_ids``: in the Mooncake format each id stands for a block of 512
prompt tokens, and requests that share leading ids share that prefix, which is what a prefix
cache sees. Here each id becomes one seeded block of 512 one-token words, so equal ids give equal
text and different ids different text, and a prompt is its blocks in order (the last one cut to
``input_length``).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llmtop.core.errors import UsageError
from llmtop.core.requests import Api
from llmtop.scenarios.model import Prompt, ReplayItem, Scenario, Step
from llmtop.scenarios.prompts import WORDS

BLOCK_TOKENS = 512
"""Tokens per hash id in the Mooncake trace format."""
MAX_TRACE_TOKENS = 1 << 20
"""The longest prompt or answer a trace line may ask for (a typo guard, beyond any context)."""


def block_text(seed: object, tokens: int = BLOCK_TOKENS) -> str:
    """``tokens`` seeded one-token words, each with its leading space (so blocks concatenate
    without merging tokens); the same seed always gives the same text."""
    rng = random.Random(f"llmtop-block:{seed}")
    return "".join(" " + rng.choice(WORDS) for _ in range(tokens))


def filler(chars: int, seed: object) -> str:
    """Text of exactly ``chars`` characters (the length a stored run kept of a prompt)."""
    text = ""
    block = 0
    while len(text) <= chars:
        text += block_text(f"{seed}:{block}")
        block += 1
    return text[1 : chars + 1]  # without the first word's leading space


def trace_prompt(hash_ids: list[int], input_length: int, index: int) -> str:
    """The prompt of a trace line: its blocks in order, the last cut to ``input_length``
    tokens (no ids: text of its own, shared with nobody)."""
    if not hash_ids:
        return block_text(f"line:{index}", input_length)
    parts = []
    left = input_length
    for h in hash_ids:
        if left <= 0:
            break
        n = min(BLOCK_TOKENS, left)
        parts.append(_cut(block_text(h), n))
        left -= n
    if left > 0:  # more tokens than the ids cover: text of its own after them
        parts.append(block_text(f"line:{index}", left))
    return "".join(parts)


def _cut(block: str, tokens: int) -> str:
    """The first ``tokens`` words of a block."""
    if tokens >= BLOCK_TOKENS:
        return block
    words = block.split(" ")[1 : tokens + 1]
    return "".join(" " + w for w in words)


# --- a trace file --------------------------------------------------------------------------------


def _positive_int(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> int:
    v = obj.get(key)
    if v is None and not required:
        return 0
    if type(v) is not int or not 0 <= v <= MAX_TRACE_TOKENS:
        raise UsageError(f"{where}: {key!r} must be an integer 0..{MAX_TRACE_TOKENS:,}, got {v!r}")
    return v


def trace_items(path: str | Path, *, api: Api = "chat") -> list[ReplayItem]:
    """The requests of a Mooncake-format JSONL trace, in file order.

    Raises:
        UsageError: the file cannot be read, or a line is not a trace record (named by line).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"cannot read trace {p}: {getattr(e, 'strerror', None) or e}") from None
    items: list[ReplayItem] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{p}:{n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UsageError(f"{where}: not JSON ({e.msg})") from None
        except (ValueError, RecursionError):
            raise UsageError(f"{where}: not JSON") from None
        if not isinstance(obj, dict):
            raise UsageError(f"{where}: expected a JSON object per line")
        ts = obj.get("timestamp")
        if not isinstance(ts, int | float) or isinstance(ts, bool) or not 0 <= ts < float("inf"):
            raise UsageError(f"{where}: 'timestamp' must be a number of ms >= 0, got {ts!r}")
        length = _positive_int(obj, "input_length", where)
        out = _positive_int(obj, "output_length", where)
        ids = obj.get("hash_ids", [])
        if not isinstance(ids, list) or not all(type(h) is int for h in ids):
            raise UsageError(f"{where}: 'hash_ids' must be a list of integers")
        items.append(
            ReplayItem(
                offset_s=float(ts), api=api, prompt=trace_prompt(ids, max(1, length), n),
                max_tokens=max(1, out), label="trace",
            )
        )  # fmt: skip
    if not items:
        raise UsageError(f"{p}: no trace records (one JSON object per line)")
    items.sort(key=lambda it: it.offset_s)  # stable: lines of one timestamp keep their order
    t0 = items[0].offset_s  # (in ms until here)
    return [dataclasses.replace(it, offset_s=(it.offset_s - t0) / 1000) for it in items]


# --- a stored run --------------------------------------------------------------------------------


def _prompt_of(row: dict[str, Any]) -> tuple[str, str | None, tuple[tuple[str, str], ...], str]:
    """The prompt of a stored request: as sent when it was kept, else filler of its length."""
    stored = row.get("prompt")
    if stored:
        try:
            asked = json.loads(stored)
        except ValueError:
            asked = None
        if isinstance(asked, dict) and isinstance(asked.get("messages"), list):
            msgs = tuple(
                (str(m.get("role", "user")), str(m.get("content", "")))
                for m in asked["messages"]
                if isinstance(m, dict)
            )
            return "", None, msgs, "stored"
        if isinstance(asked, dict) and isinstance(asked.get("prompt"), str):
            system = asked.get("system")
            return asked["prompt"], system if isinstance(system, str) else None, (), "stored"
    chars = max(1, int(row.get("prompt_chars") or 1))
    return filler(chars, f"run:{row.get('run_id')}:{row.get('id')}"), None, (), "generated"


def run_items(rows: Iterable[dict[str, Any]]) -> list[ReplayItem]:
    """The requests of a stored run (its ``requests`` rows, warm-up left out), in start order.

    Output lengths: a request that finished asks for as many tokens as it got (``max_tokens``
    of its output count), one that failed for what it asked for.
    """
    measured = sorted(
        (r for r in rows if not r.get("warmup") and r.get("t_start_ns") is not None),
        key=lambda r: (r["t_start_ns"], r["id"]),
    )
    if not measured:
        return []
    t0 = measured[0]["t_start_ns"]
    items = []
    for r in measured:
        params = json.loads(r.get("params_json") or "{}")
        options = params.get("options") if isinstance(params.get("options"), dict) else {}
        prompt, system, messages, label = _prompt_of(r)
        out = r.get("output_tokens") if r.get("status") == "ok" else None
        api = r.get("api") or params.get("api") or "chat"
        items.append(
            ReplayItem(
                offset_s=(r["t_start_ns"] - t0) / 1e9, api="generate" if api == "generate" else "chat",
                model=r.get("model") or None, prompt=prompt, system=system, messages=messages,
                max_tokens=out or r.get("max_tokens") or None, temperature=r.get("temperature"),
                top_p=_num(params.get("top_p", options.get("top_p"))),
                top_k=_whole(params.get("top_k", options.get("top_k"))),
                seed=_whole(params.get("seed", options.get("seed"))), label=label,
            )
        )  # fmt: skip
    return items


def _num(v: Any) -> float | None:
    return float(v) if type(v) in (int, float) else None


def _whole(v: Any) -> int | None:
    return v if type(v) is int else None


# --- the plan ------------------------------------------------------------------------------------


def replay_scenario(
    items: list[ReplayItem], *, name: str, source: str, speed: float = 1.0
) -> Scenario:
    """One open-loop step sending ``items`` at their offsets divided by ``speed``.

    Raises:
        UsageError: no requests to replay, or a speed that is not positive.
    """
    if not items:
        raise UsageError(f"{source}: nothing to replay (no requests)")
    if not speed > 0:
        raise UsageError(f"--replay-speed must be > 0, got {speed:g}")
    scaled = tuple(dataclasses.replace(it, offset_s=it.offset_s / speed) for it in items)
    step = Step(
        name="replay", prompts=(Prompt(items[0].label, ""),), requests=len(scaled),
        concurrency=None, arrival="replay", max_tokens=None, replay=scaled,
    )  # fmt: skip
    return Scenario(
        name=name, steps=(step,), source=source, prompts=step.prompts, warmup=0,  # exactly the traffic
        description=f"{len(scaled)} requests replayed at their offsets"
        + (f" x{speed:g}" if speed != 1 else ""),
    )  # fmt: skip

"""The stream parsers fuzzed with hypothesis: whatever bytes a server sends, in whatever pieces.

The unit under test is ``collectors.streaming.read_stream`` (the byte-level read loop: incremental
UTF-8 decoding, line splitting on LF, CRLF and CR, the line bound) driving the real parsers,
``NdjsonParser`` (Ollama) and ``SseParser`` (OpenAI). ``read_stream`` takes a ``readany`` callable,
as aiohttp's ``resp.content.readany``; here it hands out the drawn byte chunks, one per "socket
read", and never suspends, so each example runs without an event loop and in microseconds.

Every property checks the same contract (:func:`outcome`): nothing escapes but ``StreamError``
of kind ``protocol``, with a one-line message; the request ends exactly once (finished or failed);
chunk indexes run 0, 1, 2, ... and agree with the state's counters; no count or duration is
negative; and the outcome is the same however the body is cut into reads.

Bugs these found, fixed in the parsers and pinned with ``@example``: a reported duration written
as a 400-digit JSON integer raised ``OverflowError`` out of the stream (``reported_ms_as_ns``);
a non-streamed answer whose content was a number raised ``TypeError`` (``feed_document``); a
streamed chunk whose content was a number was counted before its ``TypeError``, so the failed
request claimed a chunk that was never stored (both parsers).
"""

from __future__ import annotations

import inspect
import itertools
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from unittest.mock import patch

from faults_table import check_rows
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from llmtop.collectors import openai_compat, streaming
from llmtop.collectors.ollama import NdjsonParser
from llmtop.collectors.openai_compat import SseParser
from llmtop.collectors.streaming import (
    MAX_REPORTED_NS,
    MAX_REPORTED_TOKENS,
    RequestState,
    StreamError,
    StreamParser,
    read_stream,
)
from llmtop.core.events import (
    Event,
    RequestFailed,
    RequestFinished,
    RequestStarted,
    TokenReceived,
)
from llmtop.core.requests import GenerationRequest

FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Deterministic in CI (``derandomize``); about 1 s per property on this machine."""

PARSERS: dict[str, Callable[[RequestState, bool], StreamParser]] = {
    "ollama": NdjsonParser,
    "openai": SseParser,
}


# --- running one body ---------------------------------------------------------------------------


def _drive(coro: Any) -> None:
    """Run a coroutine that never suspends (its ``readany`` answers at once) to its end."""
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise AssertionError("read_stream waited on something other than readany")


@dataclass(frozen=True)
class Outcome:
    """What one body came to, without the clock: comparable between two ways of splitting it."""

    events: tuple[tuple[Any, ...], ...]
    error: tuple[str, str] | None


def _shape(e: Event) -> tuple[Any, ...]:
    if isinstance(e, TokenReceived):
        return ("token", e.index, e.n_tokens, e.text_len)
    if isinstance(e, RequestFinished):
        return ("finished", e.chunks, e.tokens_counted, e.t_first_ns is None, e.server)
    if isinstance(e, RequestFailed):
        return ("failed", e.error_kind, e.message, e.chunks, e.tokens_counted)
    return (type(e).__name__,)


def outcome(
    api: str, chunks: list[bytes], chat: bool = True, fed: list[str] | None = None
) -> Outcome:
    """Feed ``chunks`` as successive socket reads, as ``stream_request`` does, and check the
    contract that must hold for any input; return what came of it (``fed``: collects every
    line the parser was given)."""
    events: list[Event] = []
    state = RequestState(GenerationRequest(1, 7, "m", "p"), events.append, {})
    state.written(0)
    parser = PARSERS[api](state, chat)
    if fed is not None:
        feed = parser.feed

        def spy(lines: list[str], t_ns: int) -> None:
            fed.extend(lines)
            feed(lines, t_ns)

        parser.feed = spy  # type: ignore[method-assign]
    reads = iter(chunks)

    async def readany() -> bytes:
        return next(reads, b"")

    error: StreamError | None = None
    try:
        _drive(read_stream(readany, parser, state))
    except StreamError as e:  # anything else escapes and fails the test
        error = e
        state.fail(e.kind, e.message, e.http_status)
    _check_consistent(state, events, error)
    shaped = tuple(_shape(e) for e in events)
    return Outcome(shaped, None if error is None else (error.kind, error.message))


def _check_consistent(state: RequestState, events: list[Event], error: StreamError | None) -> None:
    assert isinstance(events[0], RequestStarted)
    tokens = [e for e in events if isinstance(e, TokenReceived)]
    ends = [e for e in events if isinstance(e, (RequestFinished, RequestFailed))]
    assert len(ends) == 1 and events[-1] is ends[0] and state.done, events
    assert [t.index for t in tokens] == list(range(len(tokens)))
    assert all(t.n_tokens == 1 and t.text_len >= 1 and t.request_id == 7 for t in tokens)
    assert state.chunks == state.tokens == len(tokens)
    assert (state.t_first_ns is None) == (not tokens) == (state.t_last_ns is None)
    end = ends[0]
    assert end.chunks == end.tokens_counted == len(tokens)
    if error is None:
        assert isinstance(end, RequestFinished)
        s = end.server
        for count in (s.prompt_tokens, s.output_tokens):
            assert count is None or 0 <= count <= MAX_REPORTED_TOKENS
        for ns in (s.load_ns, s.prompt_eval_ns, s.eval_ns, s.total_ns):
            assert ns is None or 0 <= ns <= MAX_REPORTED_NS
        assert s.done_reason is None or isinstance(s.done_reason, str)
        assert end.output_tokens >= 0
    else:
        assert isinstance(end, RequestFailed)
        assert error.kind == "protocol" and error.http_status is None, error.kind
        assert error.message and "\n" not in end.message and len(end.message) <= 400


def split_at(body: bytes, cuts: list[int]) -> list[bytes]:
    """``body`` cut at the given offsets (duplicates give empty reads, which aiohttp never
    returns before the end, so they are dropped)."""
    edges = [0, *sorted({c for c in cuts if 0 < c < len(body)}), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(edges) if b > a]


def check_split_invariant(api: str, body: bytes, cuts: list[int], chat: bool) -> Outcome:
    """The same outcome whole, in the drawn pieces, and one byte per read."""
    whole = outcome(api, [body] if body else [], chat)
    assert outcome(api, split_at(body, cuts), chat) == whole
    if len(body) <= 400:
        assert outcome(api, split_at(body, list(range(len(body)))), chat) == whole
    return whole


# --- strategies ---------------------------------------------------------------------------------

HUGE = (2**63, 2**70, 10**400, -(10**400))
"""Integers past int64, past float, past both: JSON has no limit on digits."""

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(HUGE),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)


json_values = st.recursive(scalars, _containers, max_leaves=6)
numbers = st.one_of(st.integers(), st.sampled_from(HUGE), st.floats(), json_values)
"""A field meant to hold a count or duration: usually a number, sometimes anything at all."""
TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from("é🙂中\u2028"),
    max_size=6,
)
"""Token text, weighted towards multi-byte characters (2, 3 and 4 bytes in UTF-8)."""


def _maybe(value: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(value, json_values)


ollama_objects = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values,
        "message": _maybe(
            st.fixed_dictionaries(
                {},
                optional={"role": json_values, "content": _maybe(TEXT), "thinking": _maybe(TEXT)},
            )
        ),
        "response": _maybe(TEXT),
        "thinking": _maybe(TEXT),
        "done": json_values,
        "done_reason": json_values,
        "eval_count": numbers,
        "eval_duration": numbers,
        "prompt_eval_count": numbers,
        "prompt_eval_duration": numbers,
        "load_duration": numbers,
        "total_duration": numbers,
        "error": json_values,
    },
)
_choice = st.fixed_dictionaries(
    {},
    optional={
        "index": json_values,
        "delta": _maybe(
            st.fixed_dictionaries(
                {},
                optional={
                    "role": json_values,
                    "content": _maybe(TEXT),
                    "reasoning_content": _maybe(TEXT),
                    "reasoning": _maybe(TEXT),
                },
            )
        ),
        "text": _maybe(TEXT),
        "message": _maybe(st.fixed_dictionaries({}, optional={"content": _maybe(TEXT)})),
        "finish_reason": json_values,
    },
)
openai_objects = st.fixed_dictionaries(
    {},
    optional={
        "choices": _maybe(st.lists(_maybe(_choice), max_size=2)),
        "usage": _maybe(
            st.fixed_dictionaries(
                {}, optional={"prompt_tokens": numbers, "completion_tokens": numbers}
            )
        ),
        "timings": _maybe(
            st.fixed_dictionaries({}, optional={"prompt_ms": numbers, "predicted_ms": numbers})
        ),
        "error": json_values,
    },
)


def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


ollama_lines = st.lists(
    st.one_of(ollama_objects.map(_dumps), json_values.map(_dumps), st.text(max_size=20)),
    max_size=8,
)
_sse_field = st.one_of(
    openai_objects.map(lambda o: "data: " + _dumps(o)),
    json_values.map(lambda v: "data:" + _dumps(v)),
    st.sampled_from(
        (
            "data: [DONE]",
            ": ping",
            "data",
            "data:",
            "event: error",
            "event:message",
            "id: 3",
            "retry: 10",
            "event",
            "",
        )
    ),
    st.text(max_size=20),
)
sse_lines = st.builds(
    lambda events, done: [line for ev in events for line in (*ev, "")] + done,
    st.lists(st.lists(_sse_field, min_size=1, max_size=3), max_size=5),
    st.sampled_from(([], ["data: [DONE]", ""], ["data: [DONE]"])),
)
"""Events (field lines, then a blank line), often ending in ``[DONE]``."""


@st.composite
def mangled(draw: st.DrawFn, lines: st.SearchStrategy[list[str]]) -> bytes:
    """Lines of a stream, some cut short or sent twice, joined by a drawn line end."""
    out: list[str] = []
    for line in draw(lines):
        how = draw(st.sampled_from(("keep", "keep", "keep", "keep", "truncate", "twice")))
        if how == "truncate" and line:
            line = line[: draw(st.integers(0, len(line) - 1))]
        out += [line, line] if how == "twice" else [line]
    end = draw(st.sampled_from(("\n", "\r\n", "\r")))
    body = end.join(out) + draw(st.sampled_from((end, "")))
    return body.encode("utf-8", "surrogatepass")


def cuts_for(body: bytes) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, max(len(body), 1)), max_size=8)


@st.composite
def bodies_and_cuts(draw: st.DrawFn, bodies: st.SearchStrategy[bytes]) -> tuple[bytes, list[int]]:
    body = draw(bodies)
    return body, draw(cuts_for(body))


raw_bytes = st.lists(st.binary(max_size=40), max_size=6).map(b"".join)
"""Anything at all, including bytes that are not UTF-8."""


# --- the properties -----------------------------------------------------------------------------


@FUZZ
@given(bodies_and_cuts(raw_bytes | st.binary(max_size=10).map(lambda b: b'{"done":true' + b)),
       st.booleans())  # fmt: skip
@example((b'{"message":{"content":"a"}}\n\xff\xfe', [27]), True)
def test_ndjson_any_bytes(case: tuple[bytes, list[int]], chat: bool) -> None:
    check_split_invariant("ollama", *case, chat)


@FUZZ
@given(bodies_and_cuts(raw_bytes | st.binary(max_size=10).map(lambda b: b"data: " + b)),
       st.booleans())  # fmt: skip
@example((b'data: {"choices":[{"delta":{"content":"a"}}]}\r\n\r\n\xc3(', [3, 47]), True)
def test_sse_any_bytes(case: tuple[bytes, list[int]], chat: bool) -> None:
    check_split_invariant("openai", *case, chat)


@FUZZ
@given(bodies_and_cuts(mangled(ollama_lines)), st.booleans())
@example((b'{"done":true,"eval_count":' + b"9" * 400 + b"}\n", [5]), True)
@example((b'{"response": 1}\n', []), False)  # found: counted as a chunk, then TypeError
def test_ndjson_any_values(case: tuple[bytes, list[int]], chat: bool) -> None:
    check_split_invariant("ollama", *case, chat)


@FUZZ
@given(bodies_and_cuts(mangled(sse_lines)), st.booleans())
@example(  # found: a 400-digit duration raised OverflowError out of the stream
    (b'data: {"choices":[{"finish_reason":"stop"}],"timings":{"prompt_ms":1' + b"0" * 400
     + b"}}\n\ndata: [DONE]\n\n", [10]),
    True,
)  # fmt: skip
@example((b'data: {"choices":[{"text":1}]}\n\n', []), False)  # found: as in NDJSON
def test_sse_any_values(case: tuple[bytes, list[int]], chat: bool) -> None:
    check_split_invariant("openai", *case, chat)


@FUZZ
@given(st.one_of(openai_objects, json_values,
                 st.builds(lambda c: {"choices": [c]}, _choice)).map(_dumps), st.booleans())  # fmt: skip
@example('{"choices":[{"message":{"content":5}}]}', True)  # found: TypeError from len(5)
@example('{"choices":[{"text":5}]}', False)
def test_sse_any_document(text: str, chat: bool) -> None:
    """A server that ignores ``stream`` and answers one JSON document (``feed_document``)."""
    events: list[Event] = []
    state = RequestState(GenerationRequest(1, 7, "m", "p"), events.append, {})
    state.written(0)
    error: StreamError | None = None
    try:
        SseParser(state, chat).feed_document(text, 1)
    except StreamError as e:
        error = e
        state.fail(e.kind, e.message)
    _check_consistent(state, events, error)
    assert state.chunks <= 1


@st.composite
def ollama_streams(draw: st.DrawFn) -> tuple[bytes, list[str], bool]:
    """A valid Ollama stream of drawn token texts, as Ollama writes it (LF or CRLF ends)."""
    texts = draw(st.lists(TEXT, max_size=6))
    chat = draw(st.booleans())
    end = draw(st.sampled_from(("\n", "\r\n")))
    lines = []
    for t in texts:
        obj = {"model": "m", "message": {"role": "assistant", "content": t}} if chat else {
            "model": "m", "response": t}  # fmt: skip
        lines.append(_dumps({**obj, "done": False}))
    final = {"model": "m", "done": True, "done_reason": "stop", "eval_count": len(texts),
             "eval_duration": 5_000_000, "prompt_eval_count": 3}  # fmt: skip
    lines.append(_dumps(final))
    return (end.join(lines) + end).encode(), texts, chat


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[str], bool]:
    """A valid OpenAI stream: a role chunk, the texts, finish, usage, ``[DONE]``; LF, CRLF or
    CR line ends, keep-alive comments between events."""
    texts = draw(st.lists(TEXT, max_size=6))
    chat = draw(st.booleans())
    end = draw(st.sampled_from(("\n", "\r\n", "\r")))

    def choice(t: str | None, reason: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"delta": {"content": t}} if chat else {"text": t}
        return {"choices": [{"index": 0, **body, "finish_reason": reason}]}

    payloads = [choice("")] if chat else []
    payloads += [choice(t) for t in texts]
    payloads += [choice(None, "stop"),
                 {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": len(texts)}}]  # fmt: skip
    out = []
    for p in payloads:
        if draw(st.booleans()):
            out.append(": ping" + end)
        out.append("data: " + _dumps(p) + end + end)
    out.append("data: [DONE]" + end + end)
    return "".join(out).encode(), texts, chat


def _check_valid(api: str, stream: tuple[bytes, list[str], bool], cuts: list[int]) -> None:
    body, texts, chat = stream
    got = check_split_invariant(api, body, cuts, chat)
    assert got.error is None
    sent = [t for t in texts if t]
    tokens = [e for e in got.events if e[0] == "token"]
    assert [e[3] for e in tokens] == [len(t) for t in sent]  # text lengths in characters
    finished = got.events[-1]
    assert finished[:3] == ("finished", len(sent), len(sent))
    assert finished[4].output_tokens == len(texts)  # the server's count, believed


@FUZZ
@given(st.data())
def test_ndjson_split_anywhere(data: st.DataObject) -> None:
    stream = data.draw(ollama_streams())
    _check_valid("ollama", stream, data.draw(cuts_for(stream[0])))


@FUZZ
@given(st.data())
def test_sse_split_anywhere(data: st.DataObject) -> None:
    stream = data.draw(sse_streams())
    _check_valid("openai", stream, data.draw(cuts_for(stream[0])))


BOUND = 24
"""The line bound, lowered from 1 Mi characters for the ``line-bound`` property."""
long_lines = st.lists(
    st.one_of(
        st.text(st.sampled_from('ab{}":é🙂'), min_size=BOUND - 1, max_size=BOUND + 2),
        st.text(st.sampled_from('ab{}":é🙂'), max_size=2 * BOUND),
        st.sampled_from(('{"done":true}', 'data: {"choices":[]}', "data: [DONE]", "", "data: x")),
    ),
    max_size=8,
)
"""Lines around the bound (one under, at, just over) and well over it."""
bounded_bodies = st.builds(
    bytes.__add__, mangled(long_lines), st.sampled_from((b"", b"", b"\xff", b"\xc3", b"\xff\n{}"))
)
"""...sometimes followed by bytes that are not UTF-8."""


@FUZZ
@given(st.sampled_from(sorted(PARSERS)), bodies_and_cuts(bounded_bodies), st.booleans())
@example("ollama", (b'{"done":true           }\r\n', [25]), True)  # found: the held CR counted
@example("ollama", (b"x" * 40 + b"\n\xff", []), True)  # found: a long line fed unbounded
def test_line_bound(api: str, case: tuple[bytes, list[int]], chat: bool) -> None:
    """With the bound at 24 characters: no longer line (or SSE event) reaches the parser, the
    stream fails instead, and where it fails does not depend on how the body was cut."""
    with (
        patch.object(streaming, "MAX_LINE_CHARS", BOUND),
        patch.object(openai_compat, "MAX_LINE_CHARS", BOUND),
    ):
        body, cuts = case
        whole = check_split_invariant(api, body, cuts, chat)
        fed: list[str] = []
        assert outcome(api, split_at(body, cuts), chat, fed) == whole
    assert all(len(line) <= BOUND for line in fed), max(fed, key=len)


CASES: dict[str, Callable[..., None]] = {
    "ndjson-any-bytes": test_ndjson_any_bytes,
    "sse-any-bytes": test_sse_any_bytes,
    "ndjson-any-values": test_ndjson_any_values,
    "sse-any-values": test_sse_any_values,
    "sse-any-document": test_sse_any_document,
    "ndjson-split-anywhere": test_ndjson_split_anywhere,
    "sse-split-anywhere": test_sse_split_anywhere,
    "line-bound": test_line_bound,
}


def test_the_readme_lists_exactly_these_properties():
    check_rows("test_faults_fuzz.py", CASES)
    module = sys.modules[__name__]
    properties = [f for name, f in inspect.getmembers(module, inspect.isfunction)
                  if name.startswith("test_") and hasattr(f, "hypothesis")]  # fmt: skip
    assert sorted(f.__name__ for f in properties) == sorted(f.__name__ for f in CASES.values())

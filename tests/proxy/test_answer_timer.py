"""The proxy's ``AnswerTimer``, fed by hand: each read is timed with the time it is pushed with
(the relay stamps it as the bytes come off the socket), and every answer ends in exactly one
recorded end, whatever shape it takes."""

from __future__ import annotations

import json

from llmtop.collectors.proxy_timing import AnswerTimer, ObservedState, observe
from llmtop.core.events import Event, RequestFailed, RequestFinished, RequestStarted, TokenReceived

NDJSON = "application/x-ndjson"


def _timer(path: str = "/api/chat", body: object = None) -> tuple[AnswerTimer, list[Event]]:
    body = body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    obs = observe("POST", path, json.dumps(body).encode())
    assert obs is not None
    events: list[Event] = []
    st = ObservedState(1, 7, obs, "127.0.0.1:5000", events.append)
    st.written(1_000)
    return AnswerTimer(st), events


def _line(text: str, done: bool = False) -> bytes:
    obj: dict[str, object] = {"message": {"role": "assistant", "content": text}, "done": done}
    return json.dumps(obj).encode() + b"\n"


def _ends(events: list[Event]) -> list[Event]:
    return [e for e in events if isinstance(e, RequestFinished | RequestFailed)]


def test_tokens_carry_the_time_their_read_was_pushed_with():
    timer, events = _timer()
    timer.head(200, "OK", NDJSON)
    timer.body(_line("a"), 5_000)
    timer.body(_line("b")[:7], 6_000)  # a line split across reads is timed by its end
    timer.body(_line("b")[7:] + _line("", done=True), 7_000)
    timer.end(False, 8_000)
    assert isinstance(events[0], RequestStarted)
    assert [e.t_ns for e in events if isinstance(e, TokenReceived)] == [5_000, 7_000]
    (end,) = _ends(events)
    assert isinstance(end, RequestFinished)
    assert (end.t_start_ns, end.t_first_ns, end.t_ns, end.chunks) == (1_000, 5_000, 7_000, 2)


def test_a_cut_before_the_final_chunk_is_a_protocol_failure():
    timer, events = _timer()
    timer.head(200, "OK", NDJSON)
    timer.body(_line("a"), 5_000)
    timer.end(True, 6_000)
    (end,) = _ends(events)
    assert isinstance(end, RequestFailed) and end.error_kind == "protocol"
    assert end.message.startswith("stream cut after 1 chunks")


def test_an_end_without_the_final_chunk_is_a_protocol_failure():
    timer, events = _timer()
    timer.head(200, "OK", NDJSON)
    timer.body(_line("a"), 5_000)
    timer.end(False, 6_000)
    (end,) = _ends(events)
    assert isinstance(end, RequestFailed) and end.error_kind == "protocol"


def test_an_error_status_keeps_the_servers_message_even_when_cut():
    timer, events = _timer()
    timer.head(500, "Internal Server Error", "application/json")
    timer.body(b'{"error": "out of ', 5_000)
    timer.body(b'memory"}', 6_000)
    timer.end(True, 7_000)
    (end,) = _ends(events)
    assert isinstance(end, RequestFailed)
    assert (end.error_kind, end.http_status) == ("http_status", 500)
    assert "out of memory" in end.message


def test_an_unexpected_content_type_is_recorded_once_and_the_rest_ignored():
    timer, events = _timer()
    timer.head(200, "OK", "text/html")
    timer.body(b"<html>", 5_000)
    timer.end(False, 6_000)
    (end,) = _ends(events)
    assert isinstance(end, RequestFailed) and "text/html" in end.message


def test_a_document_is_one_chunk_timed_when_it_has_all_arrived():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    timer, events = _timer("/v1/chat/completions", body)
    doc = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hey"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }  # fmt: skip
    raw = json.dumps(doc).encode()
    timer.head(200, "OK", "application/json")
    timer.body(raw[:10], 5_000)
    timer.body(raw[10:], 6_000)
    timer.end(False, 9_000)
    (end,) = _ends(events)
    assert isinstance(end, RequestFinished)
    assert (end.t_first_ns, end.t_ns) == (6_000, 6_000)


def test_no_answer_no_end_the_relay_records_that_itself():
    timer, events = _timer()
    timer.end(True, 5_000)
    assert _ends(events) == []

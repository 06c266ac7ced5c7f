"""Reads stamped when their bytes arrived (recorder/loop_probe.py's ``StampingLoop``, read through
core/arrival.py by the stream reader), not when the coroutine waiting for them got its turn.

The check needs no clock bound: a callback queued before the read spins for 20 ms; the bytes were
reported by the select that ran before it, so their stamp must come before the spin began, and a
stamp taken at the coroutine's resume would come after it ended."""

from __future__ import annotations

import asyncio
import socket
import time

from llmtop.collectors.openai_compat import SseParser
from llmtop.collectors.streaming import RequestState, read_stream
from llmtop.core.arrival import arrival_clock
from llmtop.core.events import TokenReceived
from llmtop.core.requests import GenerationRequest
from llmtop.recorder.loop_probe import new_event_loop

SPIN_NS = 20_000_000


def spin(marks: dict[str, int]) -> None:
    marks["spin_start"] = time.perf_counter_ns()
    while time.perf_counter_ns() - marks["spin_start"] < SPIN_NS:
        pass
    marks["spin_end"] = time.perf_counter_ns()


async def busy_read(payload: bytes, read) -> dict[str, int]:
    """Send ``payload`` to a socket ``read`` waits on, with a 20 ms callback queued ahead of the
    read's resume; returns the spin's marks and whatever ``read`` stamped."""
    a, b = socket.socketpair()
    reader, writer = await asyncio.open_connection(sock=a)
    marks: dict[str, int] = {}
    task = asyncio.create_task(read(reader, marks))
    await asyncio.sleep(0)  # the reader now waits on the socket
    await asyncio.sleep(0)
    b.sendall(payload)
    asyncio.get_running_loop().call_soon(spin, marks)
    try:
        await asyncio.wait_for(task, 10)
    finally:
        writer.close()
        b.close()
    return marks


def test_a_read_is_stamped_before_the_work_queued_ahead_of_its_coroutine():
    async def read(reader: asyncio.StreamReader, marks: dict[str, int]) -> None:
        await reader.read(100)
        marks["stamp"] = arrival_clock()()
        marks["resumed"] = time.perf_counter_ns()

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        marks = runner.run(busy_read(b"token", read))
    assert marks["resumed"] >= marks["spin_end"]  # the coroutine did wait behind the spin
    assert marks["stamp"] <= marks["spin_start"]


def test_tokens_read_by_the_stream_reader_carry_the_arrival_stamp():
    events: list[object] = []

    async def read(reader: asyncio.StreamReader, marks: dict[str, int]) -> None:
        state = RequestState(GenerationRequest(1, 7, "m", "p"), events.append, {})
        state.written(0)
        await read_stream(lambda: reader.read(65536), SseParser(state, True), state)

    body = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        marks = runner.run(busy_read(body, read))
    (token,) = [e for e in events if isinstance(e, TokenReceived)]
    assert 0 < token.t_ns <= marks["spin_start"]


def test_other_loops_and_no_loop_stamp_with_perf_counter():
    assert arrival_clock() is time.perf_counter_ns

    async def on_a_plain_loop() -> object:
        return arrival_clock()

    assert asyncio.run(on_a_plain_loop()) is time.perf_counter_ns

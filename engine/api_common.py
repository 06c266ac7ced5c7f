"""What both APIs share: the 4xx error, reading and checking a JSON body, streaming responses.

Field checks are strict about types (a string where a number belongs is a 400 naming the field)
and lenient about unknown fields, as Ollama and vLLM are.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from llmtop.engine.jobs import Event, JobHandle
from llmtop.engine.serve_options import DEFAULT_MAX_BODY_BYTES


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` with a message the client can act on."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers
        """Extra response headers, e.g. ``Retry-After`` on a 503."""


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``max_bytes``.

    A ``Content-Length`` over the limit is refused before a byte of the body is read; a chunked
    body is read chunk by chunk and refused the moment it passes the limit, so an oversized
    body is never held whole (uvicorn discards what the client still sends).
    """
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise _too_large(int(length), max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(None, max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(length: int | None, max_bytes: int) -> ApiError:
    got = f"{length:,} bytes" if length is not None else "more than that"
    return ApiError(
        413,
        f"the request body is too large: {got}, the limit is {max_bytes:,} bytes "
        "(llmtop serve --max-body-bytes)",
        code="request_too_large",
    )


async def read_json(request: Request, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or a 4xx that says what is wrong with it (413: too large;
    400: empty, not UTF-8, not JSON, nested too deeply, unpaired surrogate escapes, not an
    object). Nothing a client sends reaches the 500 handler from here."""
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        text = raw.decode("utf-8-sig")  # JSON is UTF-8 (RFC 8259); a BOM is tolerated
    except UnicodeDecodeError as e:
        raise ApiError(
            400,
            f"the request body is not valid UTF-8: byte 0x{raw[e.start]:02x} at offset {e.start}",
        ) from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON: nested too deeply") from None
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if "\\u" in text:
        _refuse_lone_surrogates(body)
    return body


def _refuse_lone_surrogates(body: dict[str, Any]) -> None:
    """A ``\\ud800`` escape without its pair decodes to a string no UTF-8 can hold; it would
    fail later, in the tokenizer or in writing an answer that echoes it, as a 500."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end].encode("utf-8", "backslashreplace").decode()
        raise ApiError(
            400, f"the request body holds an unpaired UTF-16 surrogate escape ({bad})"
        ) from None


def _bad(key: str, what: str, value: Any) -> ApiError:
    return ApiError(400, f"invalid '{key}': expected {what}, got {json.dumps(value)}", param=key)


def opt_int(
    d: dict[str, Any], key: str, *, lo: int | None = None, hi: int | None = None
) -> int | None:
    """An integer field (a whole float like 64.0 is accepted, as Go's JSON decoding does)."""
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(key, "an integer", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _bad(key, _range("an integer", lo, hi), v)
    return v


def opt_float(
    d: dict[str, Any], key: str, *, lo: float | None = None, hi: float | None = None
) -> float | None:
    v = d.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _bad(key, "a number", v)
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise _bad(key, _range("a number", lo, hi), v)
    return float(v)


SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""What a torch generator takes as a seed; a larger one would fail in the engine thread, after
the request was accepted (and take the jobs sharing its batch step down with it)."""
GREEDY_EPS = 1e-5
"""A temperature below this is greedy (as vLLM does): dividing logits by 1e-300 overflows to
inf, and sampling from inf fails."""
PENALTY_MIN = 1e-3


def greedy_below_eps(temperature: float | None) -> float | None:
    """``temperature``, with a positive value too small to sample with made 0 (greedy)."""
    if temperature is not None and temperature < GREEDY_EPS:
        return 0.0
    return temperature


def opt_penalty(d: dict[str, Any], key: str) -> float | None:
    """A repetition penalty: 0 (off) or from 0.001 up; a tinier divisor overflows the logits
    to inf, which sampling cannot take."""
    v = opt_float(d, key, lo=0.0)
    if v is not None and 0.0 < v < PENALTY_MIN:
        raise _bad(key, f"0 (off) or a number >= {PENALTY_MIN}", v)
    return v


def _range(what: str, lo: float | None, hi: float | None) -> str:
    if lo is not None and hi is not None:
        return f"{what} from {lo} to {hi}"
    return f"{what} >= {lo}" if lo is not None else f"{what} <= {hi}"


def opt_bool(d: dict[str, Any], key: str) -> bool | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, bool):
        raise _bad(key, "true or false", v)
    return v


def opt_str(d: dict[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise _bad(key, "a string", v)
    return v


def opt_obj(d: dict[str, Any], key: str) -> dict[str, Any]:
    v = d.get(key)
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise _bad(key, "an object", v)
    return v


def stop_list(d: dict[str, Any], key: str, *, max_items: int | None = None) -> tuple[str, ...]:
    """A stop field: one string or a list of strings (empty strings are dropped)."""
    v = d.get(key)
    if v is None:
        return ()
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise _bad(key, "a string or a list of strings", v)
    if max_items is not None and len(items) > max_items:
        raise ApiError(400, f"invalid '{key}': at most {max_items} stop strings", param=key)
    return tuple(s for s in items if s)


def require_str(d: dict[str, Any], key: str) -> str:
    v = opt_str(d, key)
    if not v:
        raise ApiError(400, f"'{key}' is required", param=key)
    return v


_SECOND: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text: every streamed token carries a timestamp, and
strftime per token was ~5% of the event loop's time at 8 streams."""


def now_rfc3339() -> str:
    """UTC now as Ollama writes ``created_at`` (RFC 3339, microseconds, ``Z``)."""
    global _SECOND
    sec, us = divmod(time.time_ns() // 1000, 1_000_000)
    if sec != _SECOND[0]:
        _SECOND = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{_SECOND[1]}.{us:06d}Z"


async def until_done(request: Request, handle: JobHandle) -> list[Event]:
    """Every event of a job answered in one piece (``stream: false``), cancelling the job as
    soon as the client goes away: a request abandoned while it waits frees its slot too."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        handle.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return [event async for event in handle.events()]
    finally:
        watcher.cancel()


def stream_response(
    chunks: AsyncIterator[bytes], media_type: str, on_disconnect: Callable[[], None]
) -> StreamingResponse:
    """A streamed body that calls ``on_disconnect`` as soon as the client goes away.

    Starlette (ASGI spec < 2.4, which uvicorn's h11 protocol reports) cancels the body iterator
    when it receives ``http.disconnect``; the ``finally`` below turns that into a cancelled job
    at once instead of at the next token write.
    """

    async def body() -> AsyncIterator[bytes]:
        finished = False
        try:
            async for chunk in chunks:
                yield chunk
            finished = True
        finally:
            if not finished:
                on_disconnect()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body(), media_type=media_type, headers=headers)

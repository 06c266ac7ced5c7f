"""What both APIs share: the 4xx error, reading and checking a JSON body, streaming responses.

Field checks are strict about types (a string where a number belongs is a 400 naming the field)
and lenient about unknown fields, as Ollama and vLLM are.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import StreamingResponse

from llmtop.engine.jobs import Event, JobHandle


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` with a message the client can act on."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    raw = await request.body()
    if not raw.strip():
        raise ApiError(400, "the request body is empty: send a JSON object")
    try:
        body = json.loads(raw)
    except ValueError as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


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


def now_rfc3339() -> str:
    """UTC now as Ollama writes ``created_at`` (RFC 3339, microseconds, ``Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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

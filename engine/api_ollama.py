"""Ollama's native API over the engine: /api/generate, /api/chat, /api/tags, /api/ps, /api/show,
/api/version, with the shapes, defaults and errors of a real Ollama server.

Streams are NDJSON, one object per token; the final object carries ``done_reason`` and the
engine's own clocks in ns (``load_duration`` is the wait for a batch slot: the model is loaded
once, before the server listens).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmtop.engine.api_common import (
    SEED_MAX,
    SEED_MIN,
    ApiError,
    greedy_below_eps,
    now_rfc3339,
    opt_bool,
    opt_float,
    opt_int,
    opt_obj,
    opt_penalty,
    opt_str,
    read_json,
    require_str,
    stop_list,
    stream_response,
    until_done,
)
from llmtop.engine.jobs import Done, JobHandle, Piece, SamplingParams
from llmtop.engine.model_service import ModelService
from llmtop.engine.version import engine_version

NDJSON = "application/x-ndjson"

# Ollama's defaults when a request leaves an option out.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.9

Handler = Callable[[Request], Awaitable[Response]]


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """Ollama's error shape: ``{"error": "..."}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        request.state.arrival_ns = time.perf_counter_ns()  # the engine's clock starts here
        try:
            return await handler(request)
        except ApiError as e:
            return error_response(e.status, e.message, e.headers)

    return wrapped


def sampling_params(options: dict[str, Any]) -> SamplingParams:
    """Ollama ``options`` to sampling parameters; unknown options are ignored, as Ollama does."""
    num_predict = opt_int(options, "num_predict")
    seed = opt_int(options, "seed", lo=SEED_MIN, hi=SEED_MAX)
    temperature = greedy_below_eps(opt_float(options, "temperature", lo=0.0))
    top_k = opt_int(options, "top_k", lo=0)
    top_p = opt_float(options, "top_p", lo=0.0, hi=1.0)
    repeat_penalty = opt_penalty(options, "repeat_penalty")
    opt_int(options, "num_ctx", lo=1)  # accepted and checked; the engine's context is fixed
    return SamplingParams(
        # -1 (forever) and -2 (fill the context) both end at the context here; Ollama's runner
        # also treats 0 as "no limit".
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        temperature=DEFAULT_TEMPERATURE if temperature is None else temperature,
        top_k=DEFAULT_TOP_K if top_k is None else top_k,
        top_p=DEFAULT_TOP_P if top_p is None or top_p == 0.0 else top_p,
        seed=seed if seed is not None and seed >= 0 else None,
        stop=stop_list(options, "stop"),
        # Off unless asked for (Ollama's own default is 1.1), so greedy text is the model's own.
        repetition_penalty=repeat_penalty if repeat_penalty else 1.0,
    )


def timings(done: Done) -> dict[str, Any]:
    """The final line's counts and durations (ns), from the engine's clocks."""
    return {
        "done_reason": done.reason,
        "total_duration": done.total_ns,
        "load_duration": done.queue_ns,
        "prompt_eval_count": done.prompt_tokens,
        "prompt_eval_duration": done.prefill_ns,
        "eval_count": done.output_tokens,
        "eval_duration": done.decode_ns,
    }


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


class OllamaApi:
    """The /api/* routes of one served model."""

    def __init__(self, service: ModelService) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/api/generate", _guard(self.generate), methods=["POST"]),
            Route("/api/chat", _guard(self.chat), methods=["POST"]),
            Route("/api/tags", _guard(self.tags), methods=["GET"]),
            Route("/api/ps", _guard(self.ps), methods=["GET"]),
            Route("/api/show", _guard(self.show), methods=["POST"]),
            Route("/api/version", _guard(self.version), methods=["GET"]),
        ]

    # --- generation ----------------------------------------------------------------------------

    def _common(self, body: dict[str, Any]) -> tuple[str, bool, SamplingParams]:
        model = require_str(body, "model")
        if not self.service.matches(model):
            raise ApiError(404, f"model '{model}' not found")
        if body.get("format"):
            raise ApiError(400, f"'format' is not supported by the model '{model}'")
        if body.get("think"):
            raise ApiError(400, f'"{model}" does not support thinking')
        if body.get("images"):
            raise ApiError(400, f'"{model}" does not support images')
        if body.get("tools"):
            raise ApiError(400, f'"{model}" does not support tools')
        stream = opt_bool(body, "stream")
        params = sampling_params(opt_obj(body, "options"))
        top = opt_int(body, "top_logprobs", lo=0, hi=20)
        if opt_bool(body, "logprobs") or top:
            params = replace(params, logprobs=top or 0)
        return model, True if stream is None else stream, params

    async def generate(self, request: Request) -> Response:
        body = await read_json(request, self.service.limits.max_body_bytes)
        model, stream, params = self._common(body)
        prompt = opt_str(body, "prompt") or ""
        system = opt_str(body, "system")
        raw = bool(opt_bool(body, "raw"))
        if opt_str(body, "suffix") or opt_str(body, "template"):
            raise ApiError(400, f"'suffix' and 'template' are not supported by the model '{model}'")
        context = _context_ids(body, self.service.vocab_size)
        if not prompt and not context:
            # Ollama answers an empty prompt by loading the model; ours is always loaded.
            return JSONResponse(self._load_reply(model, {"response": ""}))
        if raw:
            ids = context + self.service.encode(prompt)
        else:
            messages = [{"role": "system", "content": system}] if system else []
            ids = context + self.service.chat_ids([*messages, {"role": "user", "content": prompt}])
        handle = self.service.submit(ids, params, request.state.arrival_ns)
        if not stream:
            out, logprobs, done = await self._collect(request, handle)
            return JSONResponse(
                {"model": model, "created_at": now_rfc3339(), "response": out, "done": True}
                | self._final(done, ids)
                | logprobs
            )
        return stream_response(
            self._stream(handle, model, lambda t: {"response": t}, ids), NDJSON, handle.cancel
        )

    async def chat(self, request: Request) -> Response:
        body = await read_json(request, self.service.limits.max_body_bytes)
        model, stream, params = self._common(body)
        messages = _messages(body)
        if not messages:
            return JSONResponse(
                self._load_reply(model, {"message": {"role": "assistant", "content": ""}})
            )
        ids = self.service.chat_ids(messages)
        handle = self.service.submit(ids, params, request.state.arrival_ns)

        def piece(text: str) -> dict[str, Any]:
            return {"message": {"role": "assistant", "content": text}}

        if not stream:
            out, logprobs, done = await self._collect(request, handle)
            return JSONResponse(
                {"model": model, "created_at": now_rfc3339(), **piece(out), "done": True}
                | self._final(done, None)
                | logprobs
            )
        return stream_response(self._stream(handle, model, piece, None), NDJSON, handle.cancel)

    def _final(self, done: Done, context: list[int] | None) -> dict[str, Any]:
        if done.reason in ("error", "cancelled"):
            # A stream that cannot finish ends with Ollama's in-band error object.
            return {"error": done.message or f"generation {done.reason}"}
        extra = {"context": context + list(done.output_ids)} if context is not None else {}
        return extra | timings(done)

    async def _stream(
        self,
        handle: JobHandle,
        model: str,
        piece: Callable[[str], dict[str, Any]],
        context: list[int] | None,
    ) -> AsyncIterator[bytes]:
        want_logprobs = handle.job.params.logprobs is not None
        pending: list[dict[str, Any]] = []  # logprobs of tokens whose text is not out yet
        async for event in handle.events():
            if isinstance(event, Piece):
                if want_logprobs and event.logprob is not None:
                    pending.append(self.service.logprob_entry(event))
                if event.text:
                    head = {"model": model, "created_at": now_rfc3339()}
                    extra = {"logprobs": pending} if want_logprobs else {}
                    pending = []
                    yield _line(head | piece(event.text) | {"done": False} | extra)
            else:
                final = self._final(event, context)
                if "error" in final:
                    yield _line(final)
                else:
                    head = {"model": model, "created_at": now_rfc3339()}
                    yield _line(head | piece("") | {"done": True} | final)

    async def _collect(
        self, request: Request, handle: JobHandle
    ) -> tuple[str, dict[str, Any], Done]:
        """The whole answer, its logprobs (``{}`` unless asked for) and the ``Done``."""
        parts: list[str] = []
        entries: list[dict[str, Any]] = []
        for event in await until_done(request, handle):
            if isinstance(event, Piece):
                parts.append(event.text)
                if event.logprob is not None:
                    entries.append(self.service.logprob_entry(event))
        done = handle.done
        assert done is not None
        if done.reason in ("error", "cancelled"):
            raise ApiError(500, done.message or f"generation {done.reason}")
        wanted = handle.job.params.logprobs is not None
        return "".join(parts), {"logprobs": entries} if wanted else {}, done

    def _load_reply(self, model: str, piece: dict[str, Any]) -> dict[str, Any]:
        return {"model": model, "created_at": now_rfc3339(), **piece, "done": True} | {
            "done_reason": "load"
        }

    # --- model information ---------------------------------------------------------------------

    async def tags(self, request: Request) -> Response:
        card = self.service.card
        return JSONResponse(
            {
                "models": [
                    {
                        "name": card.name,
                        "model": card.name,
                        "modified_at": card.modified_at,
                        "size": card.file_size,
                        "digest": await self.service.digest(),
                        "details": card.details(),
                    }
                ]
            }
        )

    async def ps(self, request: Request) -> Response:
        card = self.service.card
        size = self.service.memory_bytes()
        return JSONResponse(
            {
                "models": [
                    {
                        "name": card.name,
                        "model": card.name,
                        "size": size,
                        "digest": await self.service.digest(),
                        "details": card.details(),
                        # Loaded for the life of the server: it never expires.
                        "expires_at": "2318-01-01T00:00:00Z",
                        "size_vram": size if card.device.startswith("cuda") else 0,
                        "context_length": card.context_length,
                    }
                ]
            }
        )

    async def show(self, request: Request) -> Response:
        body = await read_json(request, self.service.limits.max_body_bytes)
        model = opt_str(body, "model") or opt_str(body, "name")
        if not model:
            raise ApiError(400, "'model' is required", param="model")
        if not self.service.matches(model):
            raise ApiError(404, f"model '{model}' not found")
        card = self.service.card
        return JSONResponse(
            {
                "modelfile": f"# served by llmtop serve\nFROM {card.path}\n",
                "parameters": (
                    f"temperature {DEFAULT_TEMPERATURE}\ntop_k {DEFAULT_TOP_K}\n"
                    f"top_p {DEFAULT_TOP_P}\nnum_ctx {card.context_length}"
                ),
                "template": card.chat_template or "",
                "details": card.details(),
                "model_info": card.model_info,
                "capabilities": ["completion"],
                "modified_at": card.modified_at,
            }
        )

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": engine_version()})


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ApiError(400, "invalid 'messages': expected a list of messages", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"invalid 'messages[{i}]': expected an object", param="messages")
        role, content = m.get("role"), m.get("content", "")
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(
                400,
                f"invalid 'messages[{i}].role': expected system, user, assistant or tool",
                param="messages",
            )
        if not isinstance(content, str):
            raise ApiError(400, f"invalid 'messages[{i}].content': expected a string")
        if m.get("images"):
            raise ApiError(400, "this model does not support images")
        out.append({"role": role, "content": content})
    return out


def _context_ids(body: dict[str, Any], vocab_size: int) -> list[int]:
    """``context`` from an earlier /api/generate answer: token ids that continue the text."""
    ctx = body.get("context")
    if ctx is None:
        return []
    if not isinstance(ctx, list) or not all(
        isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab_size for t in ctx
    ):
        raise ApiError(400, f"invalid 'context': expected token ids below {vocab_size}")
    return list(ctx)

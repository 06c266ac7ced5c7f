"""The OpenAI API over the engine: /v1/chat/completions, /v1/completions, /v1/models, as vLLM
serves them (SSE ending in ``data: [DONE]``, ``stream_options.include_usage``, OpenAI's error
object, vLLM's ``top_k`` and ``ignore_eos`` extensions). Unlike vLLM, a ``max_tokens`` beyond
the context is not a 400: the output stops when the context is full (``finish_reason:
length``), as in the Ollama API.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from llmtop.engine.api_common import (
    SEED_MAX,
    SEED_MIN,
    ApiError,
    greedy_below_eps,
    opt_bool,
    opt_float,
    opt_int,
    opt_obj,
    opt_str,
    read_json,
    require_str,
    stop_list,
    stream_response,
    until_done,
)
from llmtop.engine.jobs import Done, JobHandle, Piece, SamplingParams
from llmtop.engine.model_service import ModelService

SSE = "text/event-stream"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions

Handler = Callable[[Request], Awaitable[Response]]


def error_body(
    message: str, status: int, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _guard(handler: Handler) -> Handler:
    async def wrapped(request: Request) -> Response:
        request.state.arrival_ns = time.perf_counter_ns()  # the engine's clock starts here
        try:
            return await handler(request)
        except ApiError as e:
            body = error_body(e.message, e.status, e.param, e.code)
            return JSONResponse(body, e.status, headers=e.headers)

    return wrapped


def _refuse_unsupported(body: dict[str, Any]) -> None:
    """Fields we cannot honour are refused, not silently ignored: a benchmark must not measure
    something other than what it asked for."""
    n = opt_int(body, "n", lo=1)
    if n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    for key in ("presence_penalty", "frequency_penalty"):
        if opt_float(body, key, lo=-2.0, hi=2.0):
            raise ApiError(400, f"'{key}' is not supported by llmtop serve", param=key)
    if body.get("echo"):
        raise ApiError(400, "echo is not supported by llmtop serve", param="echo")
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "tools are not supported by llmtop serve", param="tools")
    fmt = opt_obj(body, "response_format")
    if fmt and fmt.get("type") not in (None, "text"):
        raise ApiError(400, "only response_format 'text' is supported", param="response_format")
    if (opt_int(body, "best_of", lo=1) or 1) > 1 or opt_str(body, "suffix"):
        raise ApiError(400, "best_of and suffix are not supported by llmtop serve")


def chat_logprobs(body: dict[str, Any]) -> int | None:
    """``logprobs: true`` with ``top_logprobs: k`` (chat): how many alternatives, or ``None``."""
    want = opt_bool(body, "logprobs")
    top = opt_int(body, "top_logprobs", lo=0, hi=20)
    if top is not None and not want:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", param="top_logprobs")
    return (top or 0) if want else None


def sampling_params(
    body: dict[str, Any], default_max_tokens: int | None, logprobs: int | None = None
) -> SamplingParams:
    max_tokens = opt_int(body, "max_completion_tokens", lo=1)
    if max_tokens is None:
        max_tokens = opt_int(body, "max_tokens", lo=1)
    temperature = greedy_below_eps(opt_float(body, "temperature", lo=0.0, hi=2.0))
    top_p = opt_float(body, "top_p", lo=0.0, hi=1.0)
    top_k = opt_int(body, "top_k", lo=-1)  # vLLM's extension; -1 and 0 mean off
    return SamplingParams(
        max_tokens=default_max_tokens if max_tokens is None else max_tokens,
        temperature=1.0 if temperature is None else temperature,
        top_k=0 if top_k is None or top_k < 0 else top_k,
        top_p=1.0 if top_p is None or top_p == 0.0 else top_p,
        seed=opt_int(body, "seed", lo=SEED_MIN, hi=SEED_MAX),
        stop=stop_list(body, "stop", max_items=4),
        logprobs=logprobs,
        ignore_eos=opt_bool(body, "ignore_eos") or False,  # vLLM's and llama-server's extension
    )


def _usage(done: Done) -> dict[str, int]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.output_tokens,
        "total_tokens": done.prompt_tokens + done.output_tokens,
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class OpenAIApi:
    """The /v1/* routes of one served model."""

    def __init__(self, service: ModelService) -> None:
        self.service = service

    def routes(self) -> list[Route]:
        return [
            Route("/v1/chat/completions", _guard(self.chat_completions), methods=["POST"]),
            Route("/v1/completions", _guard(self.completions), methods=["POST"]),
            Route("/v1/models", _guard(self.models), methods=["GET"]),
        ]

    def _model(self, body: dict[str, Any]) -> str:
        model = require_str(body, "model")
        if not self.service.matches(model):
            raise ApiError(
                404, f"The model `{model}` does not exist.", param="model", code="model_not_found"
            )
        return model

    async def chat_completions(self, request: Request) -> Response:
        body = await read_json(request, self.service.limits.max_body_bytes)
        model = self._model(body)
        _refuse_unsupported(body)
        messages = _messages(body)
        params = sampling_params(body, None, chat_logprobs(body))
        ids = self.service.chat_ids(messages)
        return await self._run(request, body, model, ids, params, chat=True)

    async def completions(self, request: Request) -> Response:
        body = await read_json(request, self.service.limits.max_body_bytes)
        model = self._model(body)
        _refuse_unsupported(body)
        if body.get("logprobs") is not None:
            raise ApiError(
                400, "logprobs are supported on /v1/chat/completions only", param="logprobs"
            )
        params = sampling_params(body, COMPLETIONS_DEFAULT_MAX_TOKENS)
        ids = _prompt_ids(body, self.service)
        return await self._run(request, body, model, ids, params, chat=False)

    async def _run(
        self,
        request: Request,
        body: dict[str, Any],
        model: str,
        ids: list[int],
        params: SamplingParams,
        chat: bool,
    ) -> Response:
        stream = bool(opt_bool(body, "stream"))
        include_usage = bool(opt_bool(opt_obj(body, "stream_options"), "include_usage"))
        handle = self.service.submit(ids, params, request.state.arrival_ns)
        head = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
        }
        if stream:
            chunks = self._stream(handle, head, chat, include_usage)
            return stream_response(chunks, SSE, handle.cancel)
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
        text = "".join(parts)
        if chat:
            choice: dict[str, Any] = {"message": {"role": "assistant", "content": text}}
            head["object"] = "chat.completion"
        else:
            choice = {"text": text}
        logprobs = {"content": entries} if params.logprobs is not None else None
        choice = {"index": 0, **choice, "logprobs": logprobs, "finish_reason": done.reason}
        return JSONResponse(head | {"choices": [choice], "usage": _usage(done)})

    async def _stream(
        self, handle: JobHandle, head: dict[str, Any], chat: bool, include_usage: bool
    ) -> AsyncIterator[bytes]:
        usage_none = {"usage": None} if include_usage else {}
        want_logprobs = handle.job.params.logprobs is not None
        pending: list[dict[str, Any]] = []  # logprobs of tokens whose text is not out yet

        def chunk(content: str, finish: str | None, role: bool = False) -> bytes:
            nonlocal pending
            if chat:
                delta = {"role": "assistant", "content": content} if role else {"content": content}
                if finish is not None:
                    delta = {}
                choice: dict[str, Any] = {"index": 0, "delta": delta}
            else:
                choice = {"index": 0, "text": content}
            logprobs = {"content": pending} if want_logprobs and not role else None
            if logprobs is not None:
                pending = []
            choice |= {"logprobs": logprobs, "finish_reason": finish}
            return _sse(head | {"choices": [choice]} | usage_none)

        if chat:
            yield chunk("", None, role=True)
        async for event in handle.events():
            if isinstance(event, Piece):
                if want_logprobs and event.logprob is not None:
                    pending.append(self.service.logprob_entry(event))
                if event.text:
                    yield chunk(event.text, None)
            elif event.reason in ("error", "cancelled"):
                message = event.message or f"generation {event.reason}"
                yield _sse(error_body(message, 500))
            else:
                yield chunk("", event.reason)
                if include_usage:
                    yield _sse(head | {"choices": [], "usage": _usage(event)})
        yield b"data: [DONE]\n\n"

    async def models(self, request: Request) -> Response:
        card = self.service.card
        entry = {
            "id": card.name,
            "object": "model",
            "created": int(card.created_s),
            "owned_by": "llmtop",
            "max_model_len": card.context_length,
        }
        return JSONResponse({"object": "list", "data": [entry]})


def _text_of(content: Any, i: int) -> str:
    """A message's content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise ApiError(
                    400, f"messages[{i}]: only text content parts are supported", param="messages"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    if content is None:
        return ""
    raise ApiError(400, f"invalid 'messages[{i}].content': expected a string", param="messages")


def _messages(body: dict[str, Any]) -> list[dict[str, str]]:
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'messages' is required: a non-empty list", param="messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ApiError(400, f"invalid 'messages[{i}]': expected an object", param="messages")
        role = m.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ApiError(
                400,
                f"invalid 'messages[{i}].role': expected system, user, assistant or tool",
                param="messages",
            )
        out.append({"role": role, "content": _text_of(m.get("content"), i)})
    return out


def _prompt_ids(body: dict[str, Any], service: ModelService) -> list[int]:
    """``prompt``: a string, a list holding one string, or a list of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, "'prompt' is empty", param="prompt")
        return service.encode(prompt)
    if (
        isinstance(prompt, list)
        and prompt
        and all(
            isinstance(t, int) and not isinstance(t, bool) and 0 <= t < service.vocab_size
            for t in prompt
        )
    ):
        return list(prompt)
    raise ApiError(
        400,
        "invalid 'prompt': expected one string or a list of token ids (one prompt per request)",
        param="prompt",
    )

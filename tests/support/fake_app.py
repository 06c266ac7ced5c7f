"""The fake model server's routes and running state: which behaviour answers which model, the
generation endpoints of both APIs, model lists, /metrics, and the control API (config, log).

See servers.py for how to use the fake server.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

try:
    from .fake_faults import FAULTS, Behavior, Ctx, Fault, RequestLog
    from .fake_http import ConnPolicy, Request, Response, Stream, serve
    from .fake_personas import LLAMA_501, Persona, PersonaState
    from .fake_wire import wire_for
except ImportError:  # run as a script (servers.py): the folder is on sys.path
    from fake_faults import FAULTS, Behavior, Ctx, Fault, RequestLog  # type: ignore[no-redef]
    from fake_http import ConnPolicy, Request, Response, Stream, serve  # type: ignore[no-redef]
    from fake_personas import LLAMA_501, Persona, PersonaState  # type: ignore[no-redef]
    from fake_wire import wire_for  # type: ignore[no-redef]


@dataclass
class State:
    """Everything the running server knows: behaviours, the script, the log, live counters."""

    models: dict[str, Behavior] = field(default_factory=lambda: {"fake": Behavior()})
    default: Behavior | None = None
    script: deque[Behavior] = field(default_factory=deque)
    log: list[RequestLog] = field(default_factory=list)
    seq: int = 0
    running: int = 0
    generated: int = 0
    api_key: str | None = None
    conn: ConnPolicy = field(default_factory=ConnPolicy)
    persona: PersonaState | None = None
    """The real server this one plays (fake_personas.py), or none."""
    pending: set[asyncio.Task[None]] = field(default_factory=set)

    def resolve(self, model: str) -> Behavior | None:
        for name in (model, f"{model}:latest", model.removesuffix(":latest")):
            if name in self.models:
                return self.script.popleft() if self.script else self.models[name]
        if self.default is not None:
            return self.script.popleft() if self.script else self.default
        return None

    def apply(self, cfg: dict[str, Any]) -> None:
        if "models" in cfg:
            self.models = {k: Behavior(**v) for k, v in cfg["models"].items()}
        if "default" in cfg:
            self.default = None if cfg["default"] is None else Behavior(**cfg["default"])
        if "api_key" in cfg:
            self.api_key = cfg["api_key"]
        if "persona" in cfg:
            p = cfg["persona"]
            self.persona = None if p is None else PersonaState(Persona(**p))
        if "script" in cfg:
            self.script = deque(Behavior(**b) for b in cfg["script"])
        if "conn" in cfg:
            c = cfg["conn"]
            self.conn.close_after_response = bool(c.get("close_after_response", False))
            self.conn.close_on_next_request = bool(c.get("close_on_next_request", False))
            self.conn.idle_close_ms = c.get("idle_close_ms")
            self.conn.headers = dict(c.get("headers") or {})

    def denied(self, req: Request) -> Response | None:
        """401 unless the request carries the API key (when one is set)."""
        if self.api_key is None or req.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        body = {
            "error": {"message": "Incorrect API key provided.", "type": "invalid_request_error"}
        }
        return Response.json(body, 401)


def _not_found(api: str, model: str) -> Response:
    if api == "ollama":
        return Response.json({"error": f'model "{model}" not found, try pulling it first'}, 404)
    err = {"message": f"The model `{model}` does not exist.", "type": "invalid_request_error",
           "param": "model", "code": "model_not_found"}  # fmt: skip
    return Response.json({"error": err}, 404)


async def _generation(state: State, req: Request, stream: Stream, api: str, kind: str) -> None:
    t_recv = req.t_arrival_ns  # the schedule starts when the request's bytes arrived
    if api == "openai" and (denied := state.denied(req)) is not None:
        stream.respond(denied)
        return
    try:
        body = req.json()
        model = str(body["model"])
    except (ValueError, KeyError, TypeError):
        stream.respond(Response.json({"error": "bad request body"}, 400))
        return
    beh = state.resolve(model)
    if beh is None:
        stream.respond(_not_found(api, model))
        return
    state.seq += 1
    log = RequestLog(
        seq=state.seq, api=api, path=req.path, model=model, fault=beh.fault, t_recv_ns=t_recv,
        peer=list(req.peer) if req.peer else None, body=body, auth=req.headers.get("authorization"),
    )  # fmt: skip
    state.log.append(log)
    fault: Fault = FAULTS[beh.fault]() if beh.fault else Fault()
    ctx = Ctx(stream, wire_for(api, kind, body, state.seq), beh, body, log, t_recv)
    state.running += 1
    persona = state.persona
    if persona is not None:
        persona.counters.running += 1
    try:
        await fault.run(ctx)
        state.generated += ctx.sent_tokens
        if persona is not None and log.outcome == "done":
            e2e_s = (time.perf_counter_ns() - t_recv) / 1e9
            done = persona.completed(
                ctx.sent_tokens, ctx.prompt_tokens, beh.ttft_ms / 1000, beh.itl_ms / 1000, e2e_s
            )
            task = asyncio.create_task(done)
            state.pending.add(task)
            task.add_done_callback(state.pending.discard)
    except ConnectionError:  # the client went away while we wrote
        log.outcome = "client_gone"
    except asyncio.CancelledError:  # the client went away while we waited
        log.outcome = "client_gone"
        raise
    finally:
        state.running -= 1
        if persona is not None:
            persona.counters.running -= 1
        log.t_end_ns = time.perf_counter_ns()


def _tags(state: State, req: Request) -> Response:
    details = {
        "format": "gguf",
        "family": "llama",
        "parameter_size": "135M",
        "quantization_level": "Q4_1",
    }
    models = []
    for name in state.models:
        full = name if ":" in name else f"{name}:latest"
        models.append({"name": full, "model": full, "modified_at": "2025-01-01T00:00:00Z",
                       "size": 100_000_000, "digest": "0" * 64, "details": details})  # fmt: skip
    return Response.json({"models": models})


def _ps(state: State, req: Request) -> Response:
    models = [{"name": n, "model": n, "size": 100_000_000, "size_vram": 0,
               "expires_at": "2099-01-01T00:00:00Z"} for n in state.models]  # fmt: skip
    return Response.json({"models": models})


def _openai_models(state: State, req: Request) -> Response:
    if (denied := state.denied(req)) is not None:
        return denied
    data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in state.models]
    return Response.json({"object": "list", "data": data})


def _metrics(state: State, req: Request) -> Response:
    if state.persona is not None:
        if not state.persona.persona.metrics:
            return Response.json(LLAMA_501, 501)
        return Response(200, state.persona.metrics_page().encode(), "text/plain; version=0.0.4")
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="fake"}} {state.running}\n'
        "# TYPE vllm:generation_tokens_total counter\n"
        f'vllm:generation_tokens_total{{model_name="fake"}} {state.generated}\n'
    )
    return Response(200, text.encode(), "text/plain; version=0.0.4")


def _config(state: State, req: Request) -> Response:
    state.apply(req.json())
    return Response.json({"ok": True})


def _conn_counts(state: State, req: Request) -> Response:
    return Response.json(
        {"connections": state.conn.connections, "idle_closed": state.conn.idle_closed}
    )


def _log(state: State, req: Request) -> Response:
    out = [asdict(r) for r in state.log]
    if req.query.get("clear"):
        state.log.clear()
    return Response.json(out)


SIMPLE: dict[tuple[str, str], Callable[[State, Request], Response]] = {
    ("GET", "/api/tags"): _tags,
    ("GET", "/api/ps"): _ps,
    ("GET", "/api/version"): lambda state, req: Response.json({"version": "0.0.0-fake"}),
    ("GET", "/v1/models"): _openai_models,
    ("GET", "/metrics"): _metrics,
    ("POST", "/_fake/config"): _config,
    ("GET", "/_fake/log"): _log,
    ("GET", "/_fake/conn"): _conn_counts,
}
STREAMING: dict[tuple[str, str], tuple[str, str]] = {
    ("POST", "/api/generate"): ("ollama", "generate"),
    ("POST", "/api/chat"): ("ollama", "chat"),
    ("POST", "/v1/chat/completions"): ("openai", "chat"),
    ("POST", "/v1/completions"): ("openai", "generate"),
}


def _persona_route(state: State, req: Request) -> Response | None:
    """A route only the persona's real server has (``/version``, ``/props``, ``/health``)."""
    persona = state.persona
    if persona is None or req.method != "GET":
        return None
    doc = persona.version_document(req.path)
    if doc is not None:
        return Response.json(doc)
    if req.path == "/health":
        if persona.persona.kind == "llama.cpp":
            return Response.json({"status": "ok"})
        return Response(200, b"", "application/json")
    return None


def make_handler(state: State) -> Callable[[Request, Stream], Awaitable[None]]:
    """The request handler of one fake server."""

    async def handle(req: Request, stream: Stream) -> None:
        key = (req.method, req.path)
        if state.persona is not None:
            stream.headers = state.persona.headers
            if (own := _persona_route(state, req)) is not None:
                stream.respond(own)
                return
        if key in STREAMING:
            await _generation(state, req, stream, *STREAMING[key])
        elif key in SIMPLE:
            stream.respond(SIMPLE[key](state, req))
        else:
            stream.respond(Response.json({"error": f"no route {req.method} {req.path}"}, 404))

    return handle


async def serve_forever(state: State, port: int, ready: Callable[[int], None]) -> None:
    """Run until cancelled; ``ready(port)`` is called once the socket listens."""
    server = await serve(make_handler(state), "127.0.0.1", port, state.conn)
    ready(server.sockets[0].getsockname()[1])
    try:
        await asyncio.Event().wait()
    finally:
        server.close()

"""``make_backend``: the one way the runner, ``record``, the dashboard and ``doctor`` get a backend.

``auto`` is decided when the backend is entered (it needs the network):

- with ``--url``: that server and no other. Its API is detected (Ollama's ``/api/version``, then
  an OpenAI-compatible ``/v1/models``); when neither answers, the run fails with one line naming
  the URL. A mistyped port must never quietly measure something else.
- without: Ollama at ``OLLAMA_HOST`` (default http://127.0.0.1:11434) if it answers, else the
  in-repo engine, started as a child ``llmtop serve``, and the status sink is told so.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp

from llmtop.collectors.base import Backend
from llmtop.collectors.engine import EngineBackend, EngineLaunch, engine_available
from llmtop.collectors.http import connect_reason, one_line
from llmtop.collectors.ollama import OllamaBackend, ollama_base_url
from llmtop.collectors.openai_compat import OpenAIBackend, openai_base_url
from llmtop.core.errors import SourceError, UsageError
from llmtop.core.requests import Emit, GenerationRequest, StatusSink, Timeouts, no_status

BACKENDS: tuple[str, ...] = ("auto", "ollama", "openai", "engine")
PROBE_TIMEOUT_S = 1.5


ENGINE_SERVER = "llmtop-engine"
"""How ``llmtop serve`` names itself in its ``Server`` header (engine/version.py)."""


async def ollama_answers(base: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if an Ollama API answers ``GET /api/version`` at ``base``, else why not."""
    why_not, _ = await probe_ollama(base, timeout_s)
    return why_not


async def probe_ollama(base: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[str | None, str]:
    """``(why not, Server header)``: ``why not`` is ``None`` when an Ollama API answers
    ``GET /api/version`` at ``base``; the header tells ``llmtop serve`` from a real Ollama."""
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.get(f"{base}/api/version") as resp,
        ):
            server = resp.headers.get("Server", "")
            if resp.status == 200 and "version" in (await resp.json(content_type=None) or {}):
                return None, server
            return f"HTTP {resp.status} from {base}/api/version", server
    except aiohttp.ClientConnectorError as e:
        return connect_reason(e), ""
    except TimeoutError:
        return f"no answer within {timeout_s:g} s", ""
    except (aiohttp.ClientError, ValueError, TypeError) as e:
        return one_line(e), ""


async def openai_answers(base: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if an OpenAI-compatible API answers ``GET {base}/models``, else why not.

    401/403 count as an answer: the server speaks the API and wants a key (the run's own check
    then says so with the key variable's name).
    """
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(f"{base}/models") as resp:
            if resp.status in (401, 403):
                return None
            if resp.status == 200 and isinstance((await resp.json(content_type=None) or {}).get("data"), list):  # fmt: skip
                return None
            return f"HTTP {resp.status} from {base}/models"
    except aiohttp.ClientConnectorError as e:
        return connect_reason(e)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except (aiohttp.ClientError, ValueError, TypeError, AttributeError) as e:
        return one_line(e)


async def detect_api(url: str) -> str:
    """``ollama``, ``engine`` or ``openai``: the API the server at ``url`` speaks.

    A URL that ends in ``/v1`` is asked as OpenAI first; otherwise Ollama first. ``llmtop serve``
    speaks both; its ``Server`` header names it, and it is driven as ``engine`` (its Ollama API),
    as when it is started for a run.

    Raises:
        UsageError: ``url`` is not an http(s) URL.
        SourceError: neither API answers there (one line with both reasons).
    """
    ollama, openai = ollama_base_url(url), openai_base_url(url)
    order = ("openai", "ollama") if url.rstrip("/").endswith("/v1") else ("ollama", "openai")
    why: dict[str, str] = {}
    for api in order:
        if api == "ollama":
            problem, server = await probe_ollama(ollama)
            if problem is None:
                return "engine" if server.startswith(ENGINE_SERVER) else "ollama"
        else:
            problem = await openai_answers(openai)
            if problem is None:
                return "openai"
        why[api] = problem
    raise SourceError(
        f"nothing at {url} answers as Ollama (GET {ollama}/api/version: {why['ollama']}) or as "
        f"an OpenAI-compatible server (GET {openai}/models: {why['openai']}); check --url, or "
        "name the API with --backend ollama|openai"
    )


class AutoBackend:
    """The server at ``url`` through the API it speaks; without a URL, Ollama when it answers,
    else the engine. ``name``/``base_url`` tell which once entered."""

    def __init__(
        self,
        url: str | None,
        *,
        timeouts: Timeouts,
        model: str | None,
        engine_command: Sequence[str] | None,
        max_connections: int,
        api_key_env: str | None = None,
        on_status: StatusSink = no_status,
    ) -> None:
        self._url = url
        if url is not None:
            ollama_base_url(url)  # a bad URL is a usage error now, not after a probe
        self._timeouts, self._max, self._api_key_env = timeouts, max_connections, api_key_env
        self._ollama = OllamaBackend(url, timeouts=timeouts, max_connections=max_connections)
        self._engine = EngineBackend(
            EngineLaunch(command=engine_command, model=model), timeouts=timeouts,
            max_connections=max_connections, on_status=on_status,
        )  # fmt: skip
        self._on_status = on_status
        self.name = "auto"
        self.base_url = self._ollama.base_url if url is None else url
        self.chosen: Backend | None = None
        self.reason = ""
        """Why the engine was chosen (Ollama's probe result), for the run's notes and doctor."""

    def __repr__(self) -> str:
        return f"AutoBackend(chosen={self.chosen!r})"

    async def _choose(self) -> Backend:
        if self._url is not None:
            self._on_status(f"asking {self._url} which API it speaks")
            api = await detect_api(self._url)
            if api == "openai":
                return OpenAIBackend(self._url, api_key_env=self._api_key_env,
                                     timeouts=self._timeouts, max_connections=self._max)  # fmt: skip
            if api == "engine":
                return EngineBackend(url=self._ollama.base_url, timeouts=self._timeouts,
                                     max_connections=self._max)  # fmt: skip
            return self._ollama
        why_not = await ollama_answers(self._ollama.base_url)
        if why_not is None:
            return self._ollama
        self.reason = f"no Ollama at {self._ollama.base_url} ({why_not})"
        missing = engine_available()
        if missing:
            raise SourceError(f"{self.reason}, and {missing}")
        self._on_status(f"{self.reason}: measuring the bundled engine instead", notice=True)
        return self._engine

    async def __aenter__(self) -> AutoBackend:
        chosen = await self._choose()
        await chosen.__aenter__()
        self.chosen = chosen
        self.name, self.base_url = chosen.name, chosen.base_url
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.chosen is not None:
            await self.chosen.__aexit__(*exc)

    @property
    def server_pid(self) -> int | None:
        """The engine's pid when the engine was started, for the resource sampler."""
        return getattr(self.chosen, "server_pid", None)

    def _inner(self) -> Backend:
        if self.chosen is None:
            raise RuntimeError("use the backend as an async context manager first")
        return self.chosen

    async def stream(self, req: GenerationRequest, emit: Emit) -> None:
        await self._inner().stream(req, emit)

    async def list_models(self) -> list[str]:
        return await self._inner().list_models()

    async def check(self, model: str | None) -> None:
        await self._inner().check(model)


def make_backend(
    name: str = "auto",
    url: str | None = None,
    *,
    api_key_env: str | None = None,
    timeouts: Timeouts | None = None,
    model: str | None = None,
    engine_command: Sequence[str] | None = None,
    max_connections: int = 0,
    on_status: StatusSink = no_status,
) -> Backend:
    """A backend, not yet entered: use it as ``async with make_backend(...) as backend``.

    Args:
        name: ``auto``, ``ollama``, ``openai`` or ``engine``.
        url: the server (``ollama``: default ``OLLAMA_HOST``; ``openai``: the API base, default
            ``OPENAI_BASE_URL`` or http://127.0.0.1:8000/v1; ``engine``: an engine already
            serving, else one is started; ``auto``: that server, whichever API it speaks).
        api_key_env: the variable holding the OpenAI API key (default ``OPENAI_API_KEY``).
        timeouts: per-request limits.
        model: for a started engine, the model it loads (``--model``).
        engine_command: argv with ``{port}`` that starts the engine (default ``llmtop serve``).
        max_connections: pool size (``0``: one connection per concurrent request).
        on_status: told what a long start waits for (choosing the server, loading the engine).

    Raises:
        UsageError: an unknown backend, a bad URL, or a named key variable that is not set.
    """
    tm = timeouts or Timeouts()
    if name == "ollama":
        return OllamaBackend(url, timeouts=tm, max_connections=max_connections)
    if name == "openai":
        return OpenAIBackend(
            url, api_key_env=api_key_env, timeouts=tm, max_connections=max_connections
        )
    if name == "engine":
        if url is not None:
            return EngineBackend(
                url=OllamaBackend(url).base_url, timeouts=tm, max_connections=max_connections
            )
        launch = EngineLaunch(command=engine_command, model=model)
        return EngineBackend(
            launch, timeouts=tm, max_connections=max_connections, on_status=on_status
        )
    if name == "auto":
        return AutoBackend(url, timeouts=tm, model=model, engine_command=engine_command,
                           max_connections=max_connections, api_key_env=api_key_env,
                           on_status=on_status)  # fmt: skip
    raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")

"""``make_backend``: the one way the runner, ``record``, the dashboard and ``doctor`` get a backend.

``auto`` is decided when the backend is entered (it needs the network): Ollama if it answers at
``--url`` or ``OLLAMA_HOST`` (default http://127.0.0.1:11434), else the in-repo engine, started as
a child ``llmtop serve``.
"""

from __future__ import annotations

from collections.abc import Sequence

import aiohttp

from llmtop.collectors.base import Backend
from llmtop.collectors.engine import EngineBackend, EngineLaunch, engine_available
from llmtop.collectors.http import connect_reason, one_line
from llmtop.collectors.ollama import OllamaBackend
from llmtop.collectors.openai_compat import OpenAIBackend
from llmtop.core.errors import SourceError, UsageError
from llmtop.core.requests import Emit, GenerationRequest, Timeouts

BACKENDS: tuple[str, ...] = ("auto", "ollama", "openai", "engine")
PROBE_TIMEOUT_S = 1.5


async def ollama_answers(base: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """``None`` if an Ollama API answers ``GET /api/version`` at ``base``, else why not."""
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as s,
            s.get(f"{base}/api/version") as resp,
        ):
            if resp.status == 200 and "version" in (await resp.json(content_type=None) or {}):
                return None
            return f"HTTP {resp.status} from {base}/api/version"
    except aiohttp.ClientConnectorError as e:
        return connect_reason(e)
    except TimeoutError:
        return f"no answer within {timeout_s:g} s"
    except (aiohttp.ClientError, ValueError, TypeError) as e:
        return one_line(e)


class AutoBackend:
    """Ollama when it answers, else the engine; ``name``/``base_url`` tell which once entered."""

    def __init__(
        self,
        url: str | None,
        *,
        timeouts: Timeouts,
        model: str | None,
        engine_command: Sequence[str] | None,
        max_connections: int,
    ) -> None:
        self._ollama = OllamaBackend(url, timeouts=timeouts, max_connections=max_connections)
        self._engine = EngineBackend(
            EngineLaunch(command=engine_command, model=model), timeouts=timeouts,
            max_connections=max_connections,
        )  # fmt: skip
        self.name = "auto"
        self.base_url = self._ollama.base_url
        self.chosen: Backend | None = None
        self.reason = ""
        """Why the engine was chosen (Ollama's probe result), for the run's notes and doctor."""

    def __repr__(self) -> str:
        return f"AutoBackend(chosen={self.chosen!r})"

    async def __aenter__(self) -> AutoBackend:
        why_not = await ollama_answers(self._ollama.base_url)
        chosen: Backend
        if why_not is None:
            chosen = self._ollama
        else:
            self.reason = f"no Ollama at {self._ollama.base_url} ({why_not})"
            missing = engine_available()
            if missing:
                raise SourceError(f"{self.reason}, and {missing}")
            chosen = self._engine
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
) -> Backend:
    """A backend, not yet entered: use it as ``async with make_backend(...) as backend``.

    Args:
        name: ``auto``, ``ollama``, ``openai`` or ``engine``.
        url: the server (``ollama``: default ``OLLAMA_HOST``; ``openai``: the API base, default
            ``OPENAI_BASE_URL`` or http://127.0.0.1:8000/v1; ``engine``: an engine already
            serving, else one is started; ``auto``: where to look for Ollama).
        api_key_env: the variable holding the OpenAI API key (default ``OPENAI_API_KEY``).
        timeouts: per-request limits.
        model: for a started engine, the model it loads (``--model``).
        engine_command: argv with ``{port}`` that starts the engine (default ``llmtop serve``).
        max_connections: pool size (``0``: one connection per concurrent request).

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
        return EngineBackend(launch, timeouts=tm, max_connections=max_connections)
    if name == "auto":
        return AutoBackend(url, timeouts=tm, model=model, engine_command=engine_command,
                           max_connections=max_connections)  # fmt: skip
    raise UsageError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")

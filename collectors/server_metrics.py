"""The server sampler: what the model server says about itself, beside what we measure.

Two sources, polled once a second by default:

- Ollama ``GET /api/ps``: the loaded models and their memory: ``ollama:loaded_models``, and per
  model ``ollama:loaded:<model>:size``, ``...:size_vram`` (bytes) and ``...:context_length``.
- Prometheus ``GET /metrics`` (vLLM, SGLang, TGI, llama.cpp's server, ``llmtop serve``), parsed
  with prometheus-client. The series of core/server_series.py's tables are kept under their
  exposition name, summed over labels (``vllm:num_requests_running``). Histograms give
  ``<name>:count`` and ``<name>:sum`` (since the server started) and, over the last scrape
  interval, ``<name>:mean``. No percentiles: interpolating coarse buckets gives numbers that
  look exact and are not (a queue-time p50 of 0.15 s beside a mean of 10 µs).

Each sample also carries ``scrape_ms``, how long the scrape took: its values were read between
``t_ns - scrape_ms`` and ``t_ns``, which is what lets a step's counter increase be exact.

The server is identified once (``ServerIdentified``): its kind from its metric names or its
``Server:`` header, its version from where that kind tells it (vLLM ``/version``, llama.cpp
``/props``, TGI ``/info``, Ollama ``/api/version``). ``scrape()`` reads ``/metrics`` at once:
the recording calls it at each step's boundaries. A source that is missing (404, or llama.cpp's
501 without ``--metrics``), down or unreadable is reported once as ``SourceDown``, naming the
flag that turns metrics on; a missing one is not asked again.

The plain GETs (``/metrics``, version documents) go through aiohttp, the library the recording's
streams already load: httpx would add itself, its command-line parts (click, pygments) and
anyio, ~40 ms of every run's start. Ollama's ``/api/ps`` goes through the official ``ollama``
client, which is httpx's, loaded only where an Ollama endpoint is polled.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from llmtop.collectors.http import one_line
from llmtop.core.events import ServerIdentified, ServerSampled, SourceDown
from llmtop.core.metrics import NS_PER_MS
from llmtop.core.requests import Emit
from llmtop.core.server_series import (
    KINDS,
    KNOWN_HISTOGRAMS,
    KNOWN_SAMPLES,
    OWN_PREFIXES,
    canonical_values,
    kind_of_header,
    kind_of_names,
    metrics_flag,
    series_read,
)

if TYPE_CHECKING:
    import httpx
    import ollama  # imported where an Ollama endpoint is polled: 0.1 s of every start otherwise

DEFAULT_HZ = 1.0
MAX_BACKOFF_S = 30.0
UNKNOWN_KIND = "metrics"
"""The kind of a Prometheus page whose names llmtop does not know."""

# --- parsing (pure) -----------------------------------------------------------------------------


def parse_ollama_ps(payload: dict[str, Any]) -> dict[str, float]:
    """Values from an ``/api/ps`` reply."""
    models = payload.get("models") or []
    out: dict[str, float] = {"ollama:loaded_models": float(len(models))}
    size = vram = 0.0
    for m in models:
        name = m.get("name") or m.get("model") or "?"
        for key in ("size", "size_vram", "context_length"):
            v = m.get(key)
            if isinstance(v, int | float):
                out[f"ollama:loaded:{name}:{key}"] = float(v)
        size += float(m.get("size") or 0)
        vram += float(m.get("size_vram") or 0)
    out["ollama:size"] = size
    out["ollama:size_vram"] = vram
    return out


Hist = tuple[float, float]
"""A histogram's ``(count, sum)``, summed over label sets."""


@dataclass(slots=True)
class PrometheusScrape:
    """One parsed ``/metrics`` page: kept samples and the kept histograms' state."""

    values: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, Hist] = field(default_factory=dict)
    """name -> (count, sum), summed over label sets."""


def _kept(name: str) -> bool:
    return name in KNOWN_SAMPLES or name.startswith(OWN_PREFIXES)


_SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _wanted(name: str) -> bool:
    if (
        name in KNOWN_SAMPLES
        or name in KNOWN_HISTOGRAMS
        or name.startswith(OWN_PREFIXES)
        or f"{name}_total" in KNOWN_SAMPLES
    ):
        return True
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if base in KNOWN_HISTOGRAMS or f"{base}_total" in KNOWN_SAMPLES:
                return True
    return False


def wanted_lines(text: str) -> str:
    """Only the lines of the metrics we keep (and their ``# TYPE``/``# HELP``).

    A vLLM page has hundreds of series; parsing all of them would cost milliseconds of CPU a
    second, and every millisecond the interpreter spends here is one a token read may wait.
    Buckets are dropped too: llmtop keeps a histogram's count and sum only.
    """
    keep = []
    for line in text.splitlines():
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("TYPE", "HELP") and _wanted(parts[2]):
                keep.append(line)
            continue
        end = len(line)
        for stop in ("{", " "):
            i = line.find(stop)
            if i != -1 and i < end:
                end = i
        name = line[:end]
        if end and not name.endswith("_bucket") and _wanted(name):
            keep.append(line)
    return "\n".join(keep) + "\n"


def parse_prometheus(text: str) -> PrometheusScrape:
    """The samples and histograms we know from a Prometheus text page.

    Raises:
        ValueError: a line prometheus-client cannot parse (it aborts the whole page).
    """
    out = PrometheusScrape()
    for fam in text_string_to_metric_families(wanted_lines(text)):
        if fam.type == "histogram":
            if not (fam.name in KNOWN_HISTOGRAMS or fam.name.startswith(OWN_PREFIXES)):
                continue
            count = total = 0.0
            for s in fam.samples:
                if s.name.endswith("_count"):
                    count += s.value
                elif s.name.endswith("_sum"):
                    total += s.value
            out.histograms[fam.name] = (count, total)
            continue
        for s in fam.samples:
            if _kept(s.name) and not s.name.endswith("_created"):
                out.values[s.name] = out.values.get(s.name, 0.0) + float(s.value)
    return out


def histogram_values(name: str, now: Hist, before: Hist | None) -> dict[str, float]:
    """``:count`` and ``:sum`` of a histogram, and its mean over the interval since ``before``
    (present only when requests ended in it)."""
    count, total = now
    out = {f"{name}:count": count, f"{name}:sum": total}
    if before is None:
        return out
    b_count, b_total = before
    dcount = count - b_count
    if dcount > 0:  # (a restart makes it negative: no interval to speak of)
        out[f"{name}:mean"] = (total - b_total) / dcount
    return out


def server_kind(names: list[str], server_header: str | None = None) -> str:
    """Which server a ``/metrics`` page came from: by its names, else its ``Server:`` header."""
    return kind_of_names(names) or kind_of_header(server_header) or UNKNOWN_KIND


def server_root(base_url: str) -> str:
    """The server's root URL: an OpenAI base URL ``http://h:p/v1`` serves /metrics at ``/``."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def version_of(kind: str, payload: Any) -> str | None:
    """The version in a kind's version document (``{"version": "0.32.0"}``), if there."""
    k = KINDS.get(kind)
    if k is None or not isinstance(payload, dict):
        return None
    for key in k.version_keys:
        v = payload.get(key)
        if isinstance(v, str | int | float) and str(v).strip():
            return str(v).strip()
    return None


# --- plain GETs ---------------------------------------------------------------------------------


class Unreachable(Exception):
    """A GET that got no HTTP answer; the message says why, in the panel's words."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to a GET: what the sampler reads of it."""

    status: int
    server: str | None
    """The ``Server:`` header (it names llama.cpp and others when ``/metrics`` is off)."""
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)


class PlainGet:
    """GETs on one aiohttp session (opened at the first, inside the running loop)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, connect=min(timeout_s, 2.0))
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str) -> Reply:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as r:
                return Reply(r.status, r.headers.get("Server"), await r.read())
        except aiohttp.ClientConnectorError as e:
            raise Unreachable("nothing answers (connection refused)") from e
        except TimeoutError as e:
            raise Unreachable("no answer in time") from e
        except aiohttp.ClientError as e:
            raise Unreachable(one_line(e) or type(e).__name__) from e

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> PlainGet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def fetch_version(get: PlainGet, root: str, kind: str) -> str | None:
    """Ask a server of ``kind`` its version; ``None`` when it does not say."""
    k = KINDS.get(kind)
    if k is None or k.version_path is None:
        return None
    try:
        r = await get(root + k.version_path)
        if r.status != 200:
            return None
        return version_of(kind, r.json())
    except (Unreachable, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Probe:
    """What one look at a server's ``/metrics`` found (``llmtop doctor``)."""

    kind: str | None
    version: str | None
    series: tuple[str, ...]
    status: int | None
    """HTTP status of ``/metrics``; ``None`` when nothing answered."""
    problem: str | None = None
    """Why no series are read, with what to do about it."""


async def probe(get: PlainGet, base_url: str) -> Probe:
    """Look once at the server under ``base_url``: kind, version, series read, or why not."""
    root = server_root(base_url)
    url = f"{root}/metrics"
    try:
        r = await get(url)
    except Unreachable as e:
        return Probe(None, None, (), None, f"{url} unreachable: {e}")
    header_kind = kind_of_header(r.server)
    if r.status != 200:
        kind = header_kind
        version = await fetch_version(get, root, kind) if kind else None
        return Probe(kind, version, (), r.status, _not_served(url, r.status, kind))
    try:
        scrape = parse_prometheus(r.text)
    except ValueError as e:
        return Probe(header_kind, None, (), 200, f"{url} unreadable: {e}")
    values = dict(scrape.values)
    for name, state in scrape.histograms.items():
        values.update(histogram_values(name, state, None))
    kind = server_kind([*values, *scrape.histograms], r.server)
    version = await fetch_version(get, root, kind)
    series = series_read(values, kind)
    problem = None if series else f"{url} has no metrics llmtop knows"
    return Probe(kind, version, series, 200, problem)


def _not_served(url: str, status: int, kind: str | None) -> str:
    flag = metrics_flag(kind)
    return f"{url} not served (HTTP {status})" + (f": {flag}" if flag else "")


# --- the sampler --------------------------------------------------------------------------------


class _Endpoint:
    def __init__(self, name: str, url: str) -> None:
        self.name = name  # "ollama" or "metrics"
        self.url = url
        self.down: str | None = None
        self.next_try = 0.0
        self.backoff = 1.0
        self.gone = False
        self.hist: dict[str, Hist] = {}
        self.kind: str | None = None
        """The kind identified from this endpoint (sent as ``ServerIdentified``)."""
        self.last: dict[str, float] | None = None
        """Canonical values of the newest sample."""


class ServerMetricsSampler:
    """Polls the server's own numbers and emits ``ServerSampled``; never raises on a read.

    Args:
        run_id: the run the values belong to.
        base_url: the backend's base URL (``/v1`` is stripped for ``/metrics``).
        kind: ``ollama`` (``/api/ps``), ``openai`` (``/metrics``) or ``engine`` (both).
        hz: polls per second.
    """

    source = "server"

    def __init__(
        self,
        run_id: int | None,
        base_url: str,
        kind: str,
        *,
        hz: float = DEFAULT_HZ,
        timeout_s: float = 2.0,
        clock: Callable[[], int] = time.perf_counter_ns,
    ) -> None:
        root = server_root(base_url)
        self.root = root
        self.run_id = run_id
        self.hz = hz
        self.clock = clock
        self.timeout_s = timeout_s
        self.ready = asyncio.Event()
        """Set after the first round of polls (the client's setup is the costly part)."""
        self.endpoints: list[_Endpoint] = []
        if kind in ("ollama", "engine"):
            self.endpoints.append(_Endpoint("ollama", f"{root}/api/ps"))
        if kind != "ollama":
            self.endpoints.append(_Endpoint("metrics", f"{root}/metrics"))
        self.identified: ServerIdentified | None = None
        self._client: PlainGet | None = None
        self._ollama: ollama.AsyncClient | None = None
        """The official client, for Ollama's own API (``/api/ps``); ``/metrics`` is plain HTTP."""
        self._emit: Emit | None = None
        self._lock = asyncio.Lock()

    async def _poll_ollama(self, ep: _Endpoint, emit: Emit) -> None:
        """``/api/ps`` through the official ``ollama`` client (its models and memory)."""
        import httpx
        import ollama

        assert self._ollama is not None
        t_sent = self.clock()
        try:
            reply = await self._ollama.ps()
        except ollama.ResponseError as e:
            if e.status_code in (404, 405, 501):
                self._down(ep, emit, _not_served(ep.url, e.status_code, None), retry=False)
            else:
                self._down(ep, emit, f"{ep.url} answered HTTP {e.status_code}", retry=True)
            return
        except ConnectionError as e:  # the client's own, raised from httpx's
            cause = e.__cause__
            why = _httpx_why(cause) if isinstance(cause, httpx.HTTPError) else "nothing answers"
            self._down(ep, emit, f"{ep.url} unreachable: {why}", retry=True)
            return
        except httpx.HTTPError as e:
            self._down(ep, emit, f"{ep.url} unreachable: {_httpx_why(e)}", retry=True)
            return
        except (ValueError, TypeError) as e:  # a reply the client could not read as /api/ps
            self._down(ep, emit, f"{ep.url} unreadable: {e}", retry=True)
            return
        t_ns = self.clock()
        values = parse_ollama_ps(reply.model_dump(mode="json"))
        ep.down = None
        ep.backoff = 1.0
        values["scrape_ms"] = (t_ns - t_sent) / NS_PER_MS
        ep.last = canonical_values(values, "ollama")
        emit(ServerSampled(self.run_id, t_ns, "ollama", values))

    async def poll(self, client: PlainGet, ep: _Endpoint, emit: Emit) -> None:
        """Read one endpoint once, emitting its values or, on a change of state, why not."""
        if ep.name == "ollama" and self._ollama is not None:
            await self._poll_ollama(ep, emit)
            return
        t_sent = self.clock()
        try:
            resp = await client(ep.url)
        except Unreachable as e:
            self._down(ep, emit, f"{ep.url} unreachable: {e}", retry=True)
            return
        t_ns = self.clock()
        if resp.status in (404, 405, 501):
            kind = kind_of_header(resp.server) if ep.name == "metrics" else None
            if kind is not None:
                await self._identify(client, ep, emit, kind, t_ns, {})
            self._down(ep, emit, _not_served(ep.url, resp.status, kind), retry=False)
            return
        if resp.status != 200:
            self._down(ep, emit, f"{ep.url} answered HTTP {resp.status}", retry=True)
            return
        try:
            if ep.name == "ollama":
                source, values = "ollama", parse_ollama_ps(resp.json())
            else:
                scrape = await asyncio.to_thread(parse_prometheus, resp.text)
                values = dict(scrape.values)
                for name, state in scrape.histograms.items():
                    values.update(histogram_values(name, state, ep.hist.get(name)))
                ep.hist = scrape.histograms
                source = ep.kind or server_kind([*values, *scrape.histograms], resp.server)
        except (ValueError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
            self._down(ep, emit, f"{ep.url} unreadable: {e}", retry=True)
            return
        if not values:
            self._down(ep, emit, f"{ep.url} has no metrics llmtop knows", retry=True)
            return
        ep.down = None
        ep.backoff = 1.0
        if ep.name == "metrics" and ep.kind is None:
            await self._identify(client, ep, emit, source, t_ns, values)
        values["scrape_ms"] = (t_ns - t_sent) / NS_PER_MS
        ep.last = canonical_values(values, source)
        emit(ServerSampled(self.run_id, t_ns, source, values))

    async def _identify(
        self,
        client: PlainGet,
        ep: _Endpoint,
        emit: Emit,
        kind: str,
        t_ns: int,
        values: dict[str, float],
    ) -> None:
        ep.kind = kind
        version = await fetch_version(client, self.root, kind)
        ev = ServerIdentified(
            self.run_id, t_ns, kind, version, self.root, series_read(values, kind)
        )
        self.identified = ev
        emit(ev)

    async def _identify_ollama(self, client: PlainGet, emit: Emit) -> None:
        """A server that answers ``/api/ps`` and has no ``/metrics`` is Ollama."""
        ps = next((ep for ep in self.endpoints if ep.name == "ollama"), None)
        if self.identified is not None or ps is None or ps.down is not None or ps.kind:
            return
        if any(ep.name == "metrics" and not ep.gone for ep in self.endpoints):
            return
        await self._identify(client, ps, emit, "ollama", self.clock(), {})

    def _down(self, ep: _Endpoint, emit: Emit, reason: str, *, retry: bool) -> None:
        if ep.down != reason:
            emit(SourceDown(self.run_id, self.clock(), f"server:{ep.name}", reason))
        ep.down = reason
        if not retry:
            ep.gone = True
            return
        ep.next_try = time.monotonic() + ep.backoff
        ep.backoff = min(ep.backoff * 2, MAX_BACKOFF_S)

    async def _round(self, client: PlainGet, emit: Emit, eps: list[_Endpoint]) -> None:
        async with self._lock:  # a boundary scrape and a periodic poll never overlap
            await asyncio.gather(*(self.poll(client, ep, emit) for ep in eps))
            await self._identify_ollama(client, emit)

    async def scrape(self) -> dict[str, float] | None:
        """Read ``/metrics`` now (a step's boundary), emitting the sample as a poll does.

        Returns the canonical values read, or ``None`` when there is no ``/metrics`` to read
        (not served, down, or the sampler not started).
        """
        client, emit = self._client, self._emit
        eps = [ep for ep in self.endpoints if ep.name == "metrics" and not ep.gone]
        if client is None or emit is None or not eps:
            return None
        ep = eps[0]
        ep.last = None
        await self._round(client, emit, eps)
        return ep.last

    async def run(self, emit: Emit) -> None:
        """Poll until cancelled, or until no endpoint is left to ask."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.hz
        client = PlainGet(self.timeout_s)
        if any(ep.name == "ollama" for ep in self.endpoints):
            try:
                import httpx
                import ollama  # before ``ready``: no request is in flight yet

                # A TLS context costs ~20-40 ms to build; plain-HTTP servers (the usual local
                # case) need none, and that time would be taken from the loop that times tokens.
                verify = self.root.startswith("https:")
                timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 2.0))
                self._ollama = ollama.AsyncClient(host=self.root, timeout=timeout, verify=verify)
            except Exception:
                self.ready.set()
                raise
        async with client:
            self._client, self._emit = client, emit
            try:
                start, tick = loop.time(), 0
                while True:
                    live = [ep for ep in self.endpoints if not ep.gone]
                    if not live:
                        self.ready.set()
                        return
                    now = time.monotonic()
                    await self._round(client, emit, [ep for ep in live if now >= ep.next_try])
                    self.ready.set()
                    tick += 1
                    delay = start + tick * period - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    else:
                        tick = int((loop.time() - start) / period)
            finally:
                self._client = self._emit = None
                if self._ollama is not None:
                    await self._ollama.close()
                    self._ollama = None


def _httpx_why(e: httpx.HTTPError) -> str:
    """Words for the panel rather than httpx's class names (the ``ollama`` client's errors)."""
    import httpx

    if isinstance(e, httpx.ConnectError):
        return "nothing answers (connection refused)"
    if isinstance(e, httpx.TimeoutException):
        return "no answer in time"
    return str(e).splitlines()[0] if str(e) else type(e).__name__

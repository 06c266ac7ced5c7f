"""The server sampler: what the model server says about itself, beside what we measure.

Two sources, polled once a second by default:

- Ollama ``GET /api/ps``: the loaded models and their memory: ``ollama:loaded_models``, and per
  model ``ollama:loaded:<model>:size``, ``...:size_vram`` (bytes) and ``...:context_length``.
- Prometheus ``GET /metrics`` (vLLM, SGLang, TGI, llama.cpp's server, ``llmtop serve``), parsed
  with prometheus-client. Gauges and counters we know are kept under their exposition name,
  summed over labels (``vllm:num_requests_running``, ``vllm:prompt_tokens_total``). Histograms
  we know give ``<name>:count`` and ``<name>:sum`` (since the server started), and over the
  last scrape interval ``<name>:mean``, ``:p50``, ``:p95`` and ``:p99`` (from the buckets'
  increase, interpolated as Prometheus does), present only when requests ended in it.

Servers name the same thing differently; core/server_series.py's ``canonical_values`` maps them onto one set of
names (``requests_running``, ``kv_cache_usage``...) for displays. A source that is missing
(404), down or unreadable is reported once as ``SourceDown``; a missing one is not asked again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from prometheus_client.parser import text_string_to_metric_families

from llmtop.core.events import ServerSampled, SourceDown
from llmtop.core.metrics import histogram_quantile
from llmtop.core.requests import Emit
from llmtop.core.server_series import KNOWN_HISTOGRAMS, KNOWN_SAMPLES, OWN_PREFIXES

DEFAULT_HZ = 1.0
MAX_BACKOFF_S = 30.0

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


Buckets = list[tuple[float, float]]


@dataclass(slots=True)
class PrometheusScrape:
    """One parsed ``/metrics`` page: kept samples and the kept histograms' state."""

    values: dict[str, float] = field(default_factory=dict)
    histograms: dict[str, tuple[Buckets, float, float]] = field(default_factory=dict)
    """name -> (cumulative buckets, count, sum), summed over label sets."""


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
        if end and _wanted(line[:end]):
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
            by_le: dict[float, float] = {}
            count = total = 0.0
            for s in fam.samples:
                if s.name.endswith("_bucket"):
                    le = float(s.labels["le"])
                    by_le[le] = by_le.get(le, 0.0) + s.value
                elif s.name.endswith("_count"):
                    count += s.value
                elif s.name.endswith("_sum"):
                    total += s.value
            out.histograms[fam.name] = (sorted(by_le.items()), count, total)
            continue
        for s in fam.samples:
            if _kept(s.name) and not s.name.endswith("_created"):
                out.values[s.name] = out.values.get(s.name, 0.0) + float(s.value)
    return out


def histogram_values(
    name: str, now: tuple[Buckets, float, float], before: tuple[Buckets, float, float] | None
) -> dict[str, float]:
    """``:count`` and ``:sum`` of a histogram, and its interval statistics since ``before``."""
    buckets, count, total = now
    out = {f"{name}:count": count, f"{name}:sum": total}
    if before is None:
        return out
    b_buckets, b_count, b_total = before
    if count < b_count:  # the server restarted: no interval to speak of
        return out
    dcount = count - b_count
    if dcount <= 0:
        return out
    prev = dict(b_buckets)
    delta = [(le, c - prev.get(le, 0.0)) for le, c in buckets]
    out[f"{name}:mean"] = (total - b_total) / dcount
    for q in (50, 95, 99):
        v = histogram_quantile(delta, q / 100)
        if v is not None:
            out[f"{name}:p{q}"] = v
    return out


def server_kind(values: Iterable[str]) -> str:
    """Which server a ``/metrics`` page came from, by its names."""
    names = list(values)
    if any(n.startswith(OWN_PREFIXES) for n in names):
        return "llmtop"
    for prefix, kind in (("vllm:", "vllm"), ("sglang:", "sglang"), ("tgi_", "tgi"),
                         ("llamacpp:", "llamacpp")):  # fmt: skip
        if any(n.startswith(prefix) for n in names):
            return kind
    return "metrics"


def server_root(base_url: str) -> str:
    """The server's root URL: an OpenAI base URL ``http://h:p/v1`` serves /metrics at ``/``."""
    parts = urlsplit(base_url.rstrip("/"))
    path = parts.path
    if path.endswith("/v1"):
        path = path[: -len("/v1")]
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


# --- the sampler --------------------------------------------------------------------------------


class _Endpoint:
    def __init__(self, name: str, url: str) -> None:
        self.name = name  # "ollama" or "metrics"
        self.url = url
        self.down: str | None = None
        self.next_try = 0.0
        self.backoff = 1.0
        self.gone = False
        self.hist: dict[str, tuple[Buckets, float, float]] = {}


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
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        root = server_root(base_url)
        self.run_id = run_id
        self.hz = hz
        self.clock = clock
        self.timeout_s = timeout_s
        self.transport = transport
        self.ready = asyncio.Event()
        """Set after the first round of polls (the client's setup is the costly part)."""
        self.endpoints: list[_Endpoint] = []
        if kind in ("ollama", "engine"):
            self.endpoints.append(_Endpoint("ollama", f"{root}/api/ps"))
        if kind != "ollama":
            self.endpoints.append(_Endpoint("metrics", f"{root}/metrics"))

    async def poll(self, client: httpx.AsyncClient, ep: _Endpoint, emit: Emit) -> None:
        """Read one endpoint once, emitting its values or, on a change of state, why not."""
        try:
            resp = await client.get(ep.url)
        except httpx.HTTPError as e:
            self._down(ep, emit, f"{ep.url} unreachable: {_why(e)}", retry=True)
            return
        t_ns = self.clock()
        if resp.status_code in (404, 405, 501):
            self._down(ep, emit, f"{ep.url} not served (HTTP {resp.status_code})", retry=False)
            return
        if resp.status_code != 200:
            self._down(ep, emit, f"{ep.url} answered HTTP {resp.status_code}", retry=True)
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
                source = server_kind([*values, *scrape.histograms])
        except (ValueError, json.JSONDecodeError, AttributeError, KeyError, TypeError) as e:
            self._down(ep, emit, f"{ep.url} unreadable: {e}", retry=True)
            return
        if not values:
            self._down(ep, emit, f"{ep.url} has no metrics llmtop knows", retry=True)
            return
        ep.down = None
        ep.backoff = 1.0
        emit(ServerSampled(self.run_id, t_ns, source, values))

    def _down(self, ep: _Endpoint, emit: Emit, reason: str, *, retry: bool) -> None:
        if ep.down != reason:
            emit(SourceDown(self.run_id, self.clock(), f"server:{ep.name}", reason))
        ep.down = reason
        if not retry:
            ep.gone = True
            return
        ep.next_try = time.monotonic() + ep.backoff
        ep.backoff = min(ep.backoff * 2, MAX_BACKOFF_S)

    async def run(self, emit: Emit) -> None:
        """Poll until cancelled, or until no endpoint is left to ask."""
        loop = asyncio.get_running_loop()
        period = 1.0 / self.hz
        timeout = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 2.0))
        # A TLS context costs ~20-40 ms to build; plain-HTTP servers (the usual local case)
        # need none, and that time would be taken from the event loop that times tokens.
        verify = any(ep.url.startswith("https:") for ep in self.endpoints)
        try:
            client = httpx.AsyncClient(timeout=timeout, transport=self.transport, verify=verify)
        except Exception:
            self.ready.set()
            raise
        async with client:
            start, tick = loop.time(), 0
            while True:
                live = [ep for ep in self.endpoints if not ep.gone]
                if not live:
                    self.ready.set()
                    return
                now = time.monotonic()
                await asyncio.gather(
                    *(self.poll(client, ep, emit) for ep in live if now >= ep.next_try)
                )
                self.ready.set()
                tick += 1
                delay = start + tick * period - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    tick = int((loop.time() - start) / period)


def _why(e: httpx.HTTPError) -> str:
    """Words for the panel rather than httpx's class names."""
    if isinstance(e, httpx.ConnectError):
        return "nothing answers (connection refused)"
    if isinstance(e, httpx.TimeoutException):
        return "no answer in time"
    return str(e).splitlines()[0] if str(e) else type(e).__name__

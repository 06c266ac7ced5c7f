"""Token events per second through the writer vs plain sqlite3.executemany on the same rows.

Both write the same tokens table of a fresh WAL database (synchronous=NORMAL). The writer's time
runs from the first ``put_nowait`` (as the collectors call it, with its backpressure check) to
``close`` returning (everything on disk); plain executemany writes the same rows, already tuples,
in one transaction. Prints one line with the ratio (goal: >= 0.8).

    .venv/bin/python bench/storage_ingest.py [--events N]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from llmtop.core.events import TokenReceived
from llmtop.storage.db import open_database
from llmtop.storage.rows import INSERT_TOKEN
from llmtop.storage.writer import EventWriter, RunInfo


def make_events(run_id: int, n: int, per_request: int = 256) -> list[TokenReceived]:
    # 64 concurrent streams interleaved, as a concurrency-64 run delivers them.
    streams = 64
    return [
        TokenReceived(
            run_id,
            1 + (i % streams) + streams * (i // (streams * per_request)),
            (i // streams) % per_request,
            10**9 + i * 1000,
            1,
            4,
        )
        for i in range(n)
    ]


async def through_writer(path: Path, n: int) -> float:
    async with EventWriter(path) as w:
        run_id, _ = await w.create_run(RunInfo(name="bench"))
        events = make_events(run_id, n)
        t = time.perf_counter()
        # The path the collectors take: put_nowait per chunk, backpressure checked now and then.
        for i, ev in enumerate(events):
            w.put_nowait(ev)
            if not i % 1000 and w.backlog > w.max_pending_rows:
                await w.wait_for_room()
        await w.close()
        return time.perf_counter() - t


def plain_executemany(path: Path, n: int) -> float:
    db = open_database(path)
    run_id = db["runs"].insert({"status": "finished"}).last_pk
    rows = [
        (e.run_id, e.request_id, e.index, e.t_ns, e.n_tokens, e.text_len)
        for e in make_events(run_id, n)
    ]
    t = time.perf_counter()
    with db.conn:
        db.conn.executemany(INSERT_TOKEN, rows)
    elapsed = time.perf_counter() - t
    db.close()
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    w_best = p_best = float("inf")
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeat):
            w_best = min(w_best, asyncio.run(through_writer(Path(tmp) / f"w{i}.db", args.events)))
            p_best = min(p_best, plain_executemany(Path(tmp) / f"p{i}.db", args.events))
    w_rate, p_rate = args.events / w_best, args.events / p_best
    print(
        f"storage_ingest: {args.events:,} token events, best of {args.repeat}: "
        f"writer {w_rate:,.0f} ev/s, plain executemany {p_rate:,.0f} rows/s, "
        f"ratio {w_rate / p_rate:.2f} (goal >= 0.8)"
    )


if __name__ == "__main__":
    main()

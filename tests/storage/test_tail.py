"""Reading a run as it is written (storage/tail.py): the events rebuilt from the database give
the live aggregator the same numbers as the events that were written, poll after poll, and each
poll returns only what is new."""

from __future__ import annotations

import sqlite3

from support.runs import FakeRequest, request_events

from llmtop.core.events import RequestStarted, ResourcesSampled, ServerTimings
from llmtop.live.aggregate import Aggregator
from llmtop.storage.db import open_readonly
from llmtop.storage.tail import RunTail, live_run, run_status
from llmtop.storage.writer import EventWriter, RunInfo

REQUESTS = [
    FakeRequest(0, [200, 220, 240, 260]),
    FakeRequest(10, [300, 310], server=ServerTimings(output_tokens=4)),
    FakeRequest(20, [250], end_ms=400, fail="protocol", message="cut"),
    FakeRequest(30, [500, 530, 560], n_tokens=2),
]


def _table(events):
    agg = Aggregator()
    for ev in events:
        agg.add(ev)
    return agg.snapshot().table


async def test_the_tail_rebuilds_what_was_written(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path) as w:
        run_id, t0 = await w.create_run(RunInfo(kind="observed"))
        written = []
        tail = RunTail(run_id)
        db = open_readonly(path)
        assert live_run(db) is not None and live_run(db)["id"] == run_id
        tailed = []
        for i, r in enumerate(REQUESTS):  # one request written per poll; the third half-done
            evs = request_events(run_id, i + 1, t0, r)
            part = evs if i != 2 else evs[:2]
            for ev in part:
                w.put_nowait(ev)
            written += part
            await w.flush()
            tailed += tail.poll(db)
        assert tail.open_requests == 1  # the third: started, one chunk, not ended
        end = request_events(run_id, 3, t0, REQUESTS[2])[-1]
        w.put_nowait(end)
        written.append(end)
        w.put_nowait(ResourcesSampled(run_id, t0 + 5, 12.5, (10.0, 15.0), 100, 200))
        await w.flush()
        tailed += tail.poll(db)
        assert tail.poll(db) == []  # nothing new: nothing returned
        await w.finish_run(run_id, "finished")
    assert run_status(db, run_id) == "finished" and live_run(db) is None
    kinds = [type(e).__name__ for e in tailed]
    assert kinds.count("RequestStarted") == 4 and kinds.count("TokenReceived") == 10
    assert kinds[-1] == "ResourcesSampled"
    before = _table([e for e in written if not isinstance(e, ResourcesSampled)])
    after = _table(tailed)
    assert after == before
    assert after.ok == 3 and after.errors == 1 and after.ttft_ms.n == 3


async def test_a_dead_recorder_is_not_live(tmp_path):
    path = tmp_path / "t.db"
    async with EventWriter(path) as w:
        run_id, t0 = await w.create_run(RunInfo(kind="observed"))
        w.put_nowait(RequestStarted(run_id, 1, t0))
        await w.flush()
        con = sqlite3.connect(path)
        con.execute("update runs set pid = 999999999 where id = ?", [run_id])
        con.commit()
        con.close()
        db = open_readonly(path)
        assert live_run(db) is None
        assert run_status(db, run_id) == "interrupted"

"""Following a run that another process records: how the dashboard shows ``llmtop proxy``.

A proxy (``llmtop proxy``, or the one ``llmtop --proxy`` starts) records its observed run into
the database like any run. The dashboard finds it there (a run of kind ``observed`` still
``running`` by a live process) and replays what gets stored as events into its aggregator
(storage/tail.py), on a thread of its own with its own read-only connection, so the proxy's
process does nothing for the dashboard and the two can run on one machine or share a file.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmtop.core.errors import StorageError
from llmtop.core.metrics import Slo
from llmtop.core.requests import Emit
from llmtop.storage.db import open_readonly
from llmtop.storage.tail import RunTail, live_run, run_status

POLL_S = 0.25
"""How often a followed run is read: on the order of the writer's flush interval."""
LOOK_S = 1.0
"""How often the database is asked whether a run to follow has started."""


@dataclass(frozen=True, slots=True)
class FollowedRun:
    """The run being followed, as the status line shows it."""

    run_id: int
    name: str = ""
    backend: str = ""
    base_url: str = ""
    listen: str = ""
    t0_ns: int | None = None
    slo: Slo = field(default_factory=Slo)


def _followed(row: dict[str, Any]) -> FollowedRun:
    params = json.loads(row.get("params_json") or "{}")
    slo = params.get("slo") or {}
    return FollowedRun(
        run_id=row["id"], name=row.get("name") or "", backend=row.get("backend") or "",
        base_url=row.get("base_url") or "", listen=str(params.get("listen") or ""),
        t0_ns=row.get("t0_ns"),
        slo=Slo(ttft_ms=slo.get("ttft_ms"), tpot_ms=slo.get("tpot_ms"), e2e_ms=slo.get("e2e_ms")),
    )  # fmt: skip


class RunFollower:
    """Finds a live observed run in ``db_path`` and emits its events as they are stored.

    ``run`` is the run being followed (``None`` while looking); ``ended`` the last one that
    ended, with its status. ``on_follow`` is called on the follower's thread when it starts
    following a run (before that run's first event).
    """

    def __init__(
        self,
        db_path: Path | None,
        emit: Emit,
        *,
        on_follow: Callable[[FollowedRun], None] | None = None,
        poll_s: float = POLL_S,
        look_s: float = LOOK_S,
    ) -> None:
        self.db_path = db_path
        self._emit = emit
        self._on_follow = on_follow
        self.poll_s = poll_s
        self.look_s = look_s
        self.run: FollowedRun | None = None
        self.ended: tuple[FollowedRun, str] | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="llmtop-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def _main(self) -> None:
        try:
            self._loop()
        except StorageError as e:
            self.error = str(e)

    def _loop(self) -> None:
        db = None
        while db is None:
            try:
                db = open_readonly(self.db_path)
            except StorageError:
                if self._stop.wait(self.look_s):  # no database yet: a proxy may create it
                    return
        with contextlib.closing(db.conn):
            tail: RunTail | None = None
            checked = 0.0
            while not self._stop.is_set():
                if tail is None:
                    row = live_run(db)
                    if row is None:
                        self._stop.wait(self.look_s)
                        continue
                    self.run = _followed(row)
                    if self._on_follow is not None:
                        self._on_follow(self.run)
                    tail = RunTail(self.run.run_id)
                for ev in tail.poll(db):
                    self._emit(ev)
                now = time.monotonic()
                if now - checked >= self.look_s:
                    checked = now
                    assert self.run is not None
                    status = run_status(db, self.run.run_id)
                    if status != "running":
                        for ev in tail.poll(db):  # what was stored as it ended
                            self._emit(ev)
                        self.ended = (self.run, status or "gone")
                        self.run, tail = None, None
                        continue
                self._stop.wait(self.poll_s)

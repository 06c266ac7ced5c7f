"""The measuring side of the dashboard, off the UI's event loop and out of its process.

While a run goes, a ``RecordingProcess`` (recorder/child_process.py) records it in a child
process and streams its events back; between runs a ``Watcher`` (recorder/watcher.py) samples
the machine and the server with no run, and a ``RunFollower`` (recorder/follower.py) looks in
the database for a proxy's observed run and, while one goes, replays what it stores (the
watcher pauses then: the proxy samples the machine and its server itself). Either way the events
reach the UI only through ``Aggregator.add`` (a deque append); the UI reads snapshots on its own
tick.
"""

from __future__ import annotations

from pathlib import Path

from llmtop.live.aggregate import Aggregator
from llmtop.recorder.child_process import RecordingProcess
from llmtop.recorder.follower import FollowedRun, RunFollower
from llmtop.recorder.recording import RecordPlan
from llmtop.recorder.watcher import Watcher, watch_target


class LiveSession:
    """The aggregator, the current run (if any) and the watcher between runs."""

    def __init__(self, db_path: Path | None, *, watch: bool = True, follow: bool = True) -> None:
        self.db_path = db_path
        self.aggregator = Aggregator()
        self.recording: RecordingProcess | None = None
        self.watcher: Watcher | None = None
        self.follower: RunFollower | None = None
        self.watch_enabled = watch
        self.follow_enabled = follow
        self._target: tuple[str, str | None] = ("auto", None)

    @property
    def running(self) -> bool:
        return self.recording is not None and self.recording.is_alive()

    @property
    def default_watched(self) -> str | None:
        """The address watched only because it is the default (the ``auto`` backend, no URL:
        Ollama's), while the watcher runs; ``None`` otherwise."""
        backend, url = self._target
        if self.watcher is None or backend != "auto" or url is not None:
            return None
        return self.watcher.url

    def watch(self, backend: str, url: str | None) -> None:
        """(Re)start watching the server at ``url`` and looking for a proxy's run to follow
        (unless a run of ours is going, or either is turned off)."""
        self.stop_watching()
        if self.running:
            return
        self._target = (backend, url)
        if self.watch_enabled:  # what was shown described another target
            self.aggregator.clear_server()
        if self.follow_enabled:
            self.follower = RunFollower(self.db_path, self.aggregator.add, on_follow=self._follow)
            self.follower.start()
        self.resume_watcher()

    def resume_watcher(self) -> None:
        """Sample the machine and the server again (a followed run ended)."""
        if self.watcher is not None or not self.watch_enabled or self.running:
            return
        backend, url = self._target
        target, kind = watch_target(backend, url)
        # the bundled engine runs only during a run: between runs there is no server to read
        watched = None if backend == "engine" and url is None else target
        self.watcher = Watcher(watched, kind, self.aggregator.add)
        self.watcher.start()

    def _follow(self, run: FollowedRun) -> None:
        """On the follower's thread, as it starts following ``run``."""
        watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop()
        self.aggregator.set_slo(run.slo)

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.follower is not None:
            self.follower.stop()
            self.follower = None

    def start_run(self, plan: RecordPlan) -> RecordingProcess:
        """Start recording ``plan``; its events feed the aggregator from the reader thread."""
        if self.running:
            raise RuntimeError("a run is already going")
        self.stop_watching()
        self.aggregator.clear_run()
        self.aggregator.clear_server()  # the run's samplers read its own server
        self.aggregator.set_slo(plan.scenario.slo)
        self.recording = RecordingProcess(plan, self.db_path, self.aggregator.add)
        self.recording.start()
        return self.recording

    def stop_run(self) -> None:
        if self.recording is not None:
            self.recording.stop()

    def close(self, timeout: float = 10.0) -> None:
        """Stop everything; a run in progress is closed as cancelled, what it received kept."""
        self.stop_watching()
        if self.recording is not None:
            self.recording.stop()
            self.recording.join(timeout)

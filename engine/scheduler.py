"""Continuous batching: jobs wait in a queue; between decode steps new ones are prefilled and join
the running batch, finished or cancelled ones leave at once; each decode step is one batched
forward over every running sequence, whatever the length of its KV cache.

The loop runs in its own thread (torch releases the GIL inside its kernels, so the HTTP loop
stays responsive) and hands results to the handlers with ``loop.call_soon_threadsafe``, one
call per loop per step. A cancel set by a handler is seen before the next step: a client that
disconnects frees its slot within one step.

One iteration:
    1. take new jobs from the inbox; drop cancelled ones (waiting or running)
    2. give free slots to waiting jobs, starting each from the prefix cache (the runner's copy
       of the last prompt's keys and values, when the new prompt begins the same way)
    3. one forward over every sequence that has a token to feed AND up to ``prefill_chunk``
       prompt tokens of the sequences still prefilling (chunked prefill: a new prompt rides
       along with the decode step instead of pausing every stream for a forward of its own; a
       long prompt is spread over several steps)
    4. deliver the pieces; finished sequences give their slot back
"""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from llmtop.engine.jobs import Done, Event, FinishReason, JobHandle, Piece
from llmtop.engine.model_runner import MIN_LAST_CHUNK, Chunk
from llmtop.engine.sampler_rows import row_sampler, sample_rows, token_logprobs
from llmtop.engine.sampling import Sampler
from llmtop.engine.stop_text import StopText, TokenDecoder


class BatchModel(Protocol):
    """The forward passes the scheduler drives, over ``slots`` preallocated KV caches
    (engine/model_runner.py implements it)."""

    slots: int
    context_length: int
    kv_bytes_per_token: int

    def acquire(self) -> int:
        """A free KV-cache slot for a new sequence."""
        ...

    def release(self, slot: int) -> None: ...

    def move(self, src: int, dst: int, n: int) -> None:
        """Copy the first ``n`` cached positions of slot ``src`` into slot ``dst``."""
        ...

    def step(
        self,
        slots: Sequence[int],
        tokens: Sequence[int],
        positions: Sequence[int],
        chunks: Sequence[Chunk] = (),
    ) -> torch.Tensor:
        """One forward: a token per decode row at its own position, and the prompt ``chunks``;
        logits ``[rows + chunks, V]`` (each chunk's last token's)."""
        ...

    def reuse_prefix(self, slot: int, ids: Sequence[int]) -> int:
        """Fill ``slot`` with the cached start of prompt ``ids``; how many tokens that was."""
        ...

    def remember_prefix(self, slot: int, ids: Sequence[int]) -> None:
        """Cache prompt ``ids``, just prefilled into ``slot``, for later prompts."""
        ...


class SchedulerObserver(Protocol):
    """Told about each first token, decode step and end (engine/metrics.py implements it)."""

    def prefilled(self, prompt_tokens: int, ttft_ns: int, cached_tokens: int = 0) -> None: ...

    def decoded(self, gaps_ns: Sequence[int]) -> None: ...

    def finished(self, done: Done, e2e_ns: int) -> None: ...


@dataclass(slots=True)
class _Seq:
    """A job holding a slot: its prompt is being prefilled, or it is decoding."""

    handle: JobHandle
    slot: int
    decoder: TokenDecoder
    stop: StopText
    sampler: Sampler | None
    """``None``: plain greedy, taken by the batch's argmax."""
    prefilled: int = 0
    """Prompt tokens already in the cache."""
    from_prefix_cache: int = 0
    """Prompt tokens taken from the prefix cache rather than computed."""
    next_token: int | None = None
    """The last sampled token, fed at the next decode step."""
    output: list[int] = field(default_factory=list)
    t_start: int = 0
    t_first: int = 0
    t_last: int = 0

    @property
    def prompt(self) -> list[int]:
        return self.handle.job.prompt_ids

    @property
    def cached(self) -> int:
        """Tokens in this slot's KV cache."""
        return self.prefilled + max(len(self.output) - 1, 0)


class Scheduler:
    """Owns the batch and the thread that runs it; ``submit`` from any thread."""

    def __init__(
        self,
        model: BatchModel,
        new_decoder: Callable[[], TokenDecoder],
        eos_ids: Sequence[int],
        *,
        max_batch: int = 8,
        prefill_chunk: int = 256,
        observer: SchedulerObserver | None = None,
    ) -> None:
        if not 1 <= max_batch <= model.slots:
            raise ValueError(f"max_batch must be 1..{model.slots}, got {max_batch}")
        self.model = model
        self.new_decoder = new_decoder
        self.eos_ids = frozenset(eos_ids)
        self.max_batch = max_batch
        self.prefill_chunk = prefill_chunk
        self.observer = observer
        self._inbox: queue.SimpleQueue[JobHandle | None] = queue.SimpleQueue()
        self._waiting: deque[JobHandle] = deque()
        self._running: list[_Seq] = []
        self._outbox: list[tuple[JobHandle, Event]] = []
        self._holes: list[int] = []
        """Slots of finished sequences, given back by ``_compact`` once every running
        sequence's count matches what its slot holds (not in the middle of a step)."""
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # Read by /metrics from other threads; plain ints written by the loop thread only.
        self.n_running = 0
        self.n_waiting = 0
        self.kv_tokens = 0
        self.batch_size = 0
        self.steps = 0
        """Decode steps done so far."""
        self.step_trace: Callable[[int, list[JobHandle], list[int]], None] | None = None
        """Test hook: called after each decode step with its number, jobs and their slots."""

    # --- the other threads' side ---------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a new thread. (``assemble.start`` instead calls ``run`` on the thread
        that loaded the model: torch work split over two threads runs two OpenMP thread teams
        that fight for the cores, measured here at 2x slower decode steps.)"""
        threading.Thread(target=self.run, name="llmtop-scheduler", daemon=True).start()

    def submit(self, handle: JobHandle) -> None:
        if self._stopping.is_set():
            handle.loop.call_soon(handle.deliver, _ended(handle, "cancelled", "server stopping"))
            return
        self.n_waiting += 1
        self._inbox.put(handle)

    def stop(self, timeout: float = 10.0) -> None:
        """End every job (``cancelled``: the server is stopping) and the thread."""
        self._stopping.set()
        self._inbox.put(None)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def kv_capacity_tokens(self) -> int:
        return self.max_batch * self.model.context_length

    # --- the loop thread -----------------------------------------------------------------------

    def run(self) -> None:
        """The loop, on the calling thread, until ``stop()``."""
        self._thread = threading.current_thread()
        with torch.inference_mode():
            while not self._stopping.is_set():
                self._take_inbox(block=not self._running and not self._waiting)
                if self._stopping.is_set():
                    break
                try:
                    self._iteration()
                except Exception as e:  # an engine failure ends the jobs it touched, not the server
                    traceback.print_exc(file=sys.stderr)
                    for seq in list(self._running):
                        self._finish(seq, "error", f"engine error: {type(e).__name__}: {e}")
                    self._compact()
                self._publish()
            for seq in list(self._running):
                self._finish(seq, "cancelled", "server stopping")
            self._compact()
            self._take_inbox(block=False)
            while self._waiting:
                h = self._waiting.popleft()
                self._outbox.append((h, _ended(h, "cancelled", "server stopping")))
            self._publish()

    def _take_inbox(self, block: bool) -> None:
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            pass

    def _iteration(self) -> None:
        for seq in [s for s in self._running if s.handle.cancelled]:
            self._finish(seq, "cancelled", "client disconnected")
        if any(h.cancelled for h in self._waiting):
            for h in [h for h in self._waiting if h.cancelled]:
                self._outbox.append((h, _ended(h, "cancelled", "client disconnected")))
            self._waiting = deque(h for h in self._waiting if not h.cancelled)
        self._compact()
        while len(self._running) < self.max_batch and self._waiting:
            self._admit(self._waiting.popleft())
        self._step()
        self._compact()

    def _admit(self, handle: JobHandle) -> None:
        params = handle.job.params
        slot = self.model.acquire()
        seq = _Seq(handle, slot, self.new_decoder(), StopText(params.stop), row_sampler(params))
        seq.t_start = time.perf_counter_ns()
        seq.prefilled = seq.from_prefix_cache = self.model.reuse_prefix(slot, seq.prompt)
        self._running.append(seq)

    def _step(self) -> None:
        """One forward: the decode rows, then prompt chunks (oldest first) up to the budget."""
        # Rows in slot order: consecutive slots are read as one view of the cache, not a gather.
        rows = sorted((s for s in self._running if s.next_token is not None), key=_slot_of)
        filling: list[_Seq] = []
        chunks: list[Chunk] = []
        budget = self.prefill_chunk
        for seq in self._running:
            if seq.next_token is not None:
                continue
            if budget <= 0:
                break
            left = len(seq.prompt) - seq.prefilled
            take = min(budget, left)
            if 0 < left - take < MIN_LAST_CHUNK:  # no last chunk of one token (model_runner.py)
                take = left - MIN_LAST_CHUNK
                if take <= 0:
                    break
            ids = seq.prompt[seq.prefilled : seq.prefilled + take]
            chunks.append(Chunk(seq.slot, ids, seq.prefilled))
            filling.append(seq)
            budget -= len(ids)
        self.batch_size = len(rows)
        if not rows and not chunks:
            return
        logits = self.model.step(
            [s.slot for s in rows],
            [s.next_token or 0 for s in rows],
            [s.cached for s in rows],
            chunks,
        )
        for seq, chunk in zip(filling, chunks, strict=True):
            seq.prefilled += len(chunk.ids)
        ready = [(i, s) for i, s in enumerate(filling) if s.prefilled == len(s.prompt)]
        sampled = [*rows, *(s for _, s in ready)]
        if not sampled:  # a long prompt's chunk, not its last
            return
        picked = (
            logits
            if not chunks
            else logits[[*range(len(rows)), *(len(rows) + i for i, _ in ready)]]
        )
        tokens = sample_rows(picked, [s.sampler for s in sampled], [_history(s) for s in sampled])
        now = time.perf_counter_ns()
        if rows:
            self.steps += 1
            if self.observer:
                self.observer.decoded([now - s.t_last for s in rows])
            if self.step_trace:
                self.step_trace(self.steps, [s.handle for s in rows], [s.slot for s in rows])
        for seq, token, row in zip(sampled, tokens, picked, strict=True):
            if seq.next_token is None:  # its prompt is in: this is its first token
                self.model.remember_prefix(seq.slot, seq.prompt)
                seq.t_first = now
                if self.observer:
                    self.observer.prefilled(
                        len(seq.prompt), now - seq.handle.job.arrival_ns, seq.from_prefix_cache
                    )
            seq.t_last = now
            self._accept(seq, token, now, row)

    def _accept(self, seq: _Seq, token: int, now: int, logits: torch.Tensor) -> None:
        """A sampled token: end on EOS, else send its text and end on stop string or length."""
        params = seq.handle.job.params
        lp: tuple[float | None, tuple[tuple[int, float], ...]] = (None, ())
        if params.logprobs is not None:
            lp = token_logprobs(logits, token, params.logprobs)
        if token in self.eos_ids and not params.ignore_eos:
            seq.output.append(token)
            if lp[0] is not None:  # the end token's own logprob, with no text
                self._outbox.append((seq.handle, Piece("", token, now, *lp)))
            self._finish(seq, "stop")
            return
        seq.output.append(token)
        seq.next_token = token
        text = seq.stop.push(seq.decoder(token))
        self._outbox.append((seq.handle, Piece(text, token, now, *lp)))
        if seq.stop.stopped:
            self._finish(seq, "stop")
        elif (params.max_tokens is not None and len(seq.output) >= params.max_tokens) or (
            len(seq.prompt) + len(seq.output) >= self.model.context_length
        ):
            self._finish(seq, "length")

    def _finish(self, seq: _Seq, reason: FinishReason, message: str = "") -> None:
        self._running.remove(seq)
        self._holes.append(seq.slot)
        tail = seq.stop.flush() if reason in ("stop", "length") else ""
        end = time.perf_counter_ns()
        if tail:
            self._outbox.append((seq.handle, Piece(tail, seq.output[-1], end)))
        arrival = seq.handle.job.arrival_ns
        done = Done(
            reason=reason,
            prompt_tokens=len(seq.prompt),
            output_tokens=len(seq.output),
            queue_ns=seq.t_start - arrival,
            prefill_ns=(seq.t_first - seq.t_start) if seq.t_first else 0,
            decode_ns=(seq.t_last - seq.t_first) if seq.t_first else 0,
            total_ns=end - arrival,
            output_ids=tuple(seq.output),
            message=message,
        )
        self._outbox.append((seq.handle, done))
        if self.observer:
            self.observer.finished(done, (seq.t_last or end) - arrival)

    def _compact(self) -> None:
        """Give the finished sequences' slots back, first moving the sequences in the highest
        slots into them, so the running slots stay consecutive (one view of the cache per
        step, no gather)."""
        for hole in sorted(self._holes):
            last = max(self._running, key=_slot_of, default=None)
            if last is not None and last.slot > hole:
                self.model.move(last.slot, hole, last.cached)
                hole, last.slot = last.slot, hole
            self.model.release(hole)
        self._holes.clear()

    def _publish(self) -> None:
        """Hand this iteration's events to their event loops, one call per loop."""
        self.n_running = len(self._running)
        self.n_waiting = len(self._waiting) + self._inbox.qsize()
        self.kv_tokens = sum(s.cached for s in self._running)
        if not self._outbox:
            return
        out, self._outbox = self._outbox, []
        for loop, items in itertools.groupby(out, key=lambda item: item[0].loop):
            try:
                loop.call_soon_threadsafe(_deliver_all, list(items))
            except RuntimeError:  # that loop is closed: its clients are gone
                pass


def _history(seq: _Seq) -> Sequence[int]:
    """What a repetition penalty looks at: the prompt and the output so far (as generate.py)."""
    if seq.handle.job.params.repetition_penalty == 1.0:
        return ()
    return seq.prompt + seq.output


def _slot_of(seq: _Seq) -> int:
    return seq.slot


def _deliver_all(items: list[tuple[JobHandle, Event]]) -> None:
    for handle, event in items:
        handle.deliver(event)


def _ended(handle: JobHandle, reason: FinishReason, message: str) -> Done:
    n = time.perf_counter_ns() - handle.job.arrival_ns
    return Done(reason, len(handle.job.prompt_ids), 0, n, 0, 0, n, message=message)

"""The scheduler's view of the model: one forward per step over the decoding sequences and any
prompt chunks, over one preallocated multi-slot KV cache (engine/kv_cache.py) and the forwards
of engine/model.py; plus a prompt-prefix cache.

Slots are handed out lowest first, and the scheduler moves the sequence in the highest slot
into a hole when one finishes, so the running slots stay 0..n-1: a decode step then reads the
cache as one view instead of gathering every row's keys and values each step.

Prefix cache: one extra slot, past the ones sequences use, keeps the keys and values of the
last fully prefilled prompt. A new prompt that starts with the same tokens (the chat template
and system prompt that every request of a client repeats) gets those positions copied into its
slot instead of computing them again, as vLLM's prefix caching and llama.cpp's prompt cache do.
The copied keys and values are the ones a prefill of the same tokens at the same positions
wrote, so a repeated prompt gives exactly the logits of its first run (seeded sampling
reproduces); a prompt that only shares a start may differ in the last bits, as with another
chunking (the attention's kv length differs).
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from llmtop.engine.kv_cache import CacheSlots, KVCache, RaggedStep, Segment
from llmtop.engine.model import Transformer

MIN_LAST_CHUNK = 2
"""Tokens a prompt's last prefill chunk has at least (when the prompt has that many)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """Prompt tokens ``ids`` to write into ``slot`` at positions ``start..``."""

    slot: int
    ids: Sequence[int]
    start: int


class ModelRunner:
    """Forward passes for up to ``slots`` sequences of up to ``context_length`` tokens each."""

    def __init__(self, model: Transformer, slots: int, context_length: int | None = None) -> None:
        self.model = model
        # one slot more than sequences can hold: the prefix cache (``prefix_slot``)
        self.cache: KVCache = model.new_cache(context_length or model.cfg.context_length, slots + 1)
        self.slots = slots
        self.prefix_slot = slots
        self.context_length = self.cache.max_len
        self.vocab_size = model.cfg.vocab_size
        self.kv_bytes_per_token = self.cache.bytes_per_sequence // self.cache.max_len
        self._free = list(range(slots))  # a heap: the lowest free slot first
        self._device = model.device
        self._prefix: list[int] = []
        """The prompt whose keys and values the prefix slot holds."""

    @property
    def kv_capacity_bytes(self) -> int:
        return self.cache.nbytes

    def acquire(self) -> int:
        """The lowest free slot."""
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        assert slot not in self._free and slot != self.prefix_slot
        heapq.heappush(self._free, slot)

    def prefill(self, slot: int, ids: Sequence[int], start: int) -> torch.Tensor:
        """Write ``ids`` at positions ``start..`` of ``slot``; logits of the last one, ``[V]``."""
        t = len(ids)
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self._device)  # [1, T]
        pos = torch.arange(start, start + t, device=self._device)[None]  # [1, T]
        slots = CacheSlots.of([slot], start + t, self._device)
        last = torch.tensor([t - 1], device=self._device)
        logits: torch.Tensor = self.model(tokens, pos, self.cache, slots, last, prompt=True)
        return logits[0]

    def decode(
        self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]
    ) -> torch.Tensor:
        """One token per row at its own position; logits ``[B, V]`` in the rows' order."""
        tok = torch.tensor(list(tokens), dtype=torch.long, device=self._device)[:, None]  # [B, 1]
        pos = torch.tensor(list(positions), dtype=torch.long, device=self._device)[:, None]
        view = CacheSlots.of(list(slots), max(positions) + 1, self._device)
        logits: torch.Tensor = self.model(tok, pos, self.cache, view)  # [B, 1, V]
        return logits[:, 0]

    def step(
        self,
        slots: Sequence[int],
        tokens: Sequence[int],
        positions: Sequence[int],
        chunks: Sequence[Chunk] = (),
    ) -> torch.Tensor:
        """One forward: a decode token per row (as ``decode``) and the prompt ``chunks``.

        Returns logits ``[len(slots) + len(chunks), V]``: the decode rows' in their order, then
        each chunk's last token's. Without chunks this is ``decode``; a lone chunk, ``prefill``.
        """
        if not chunks:
            return self.decode(slots, tokens, positions)
        if not slots and len(chunks) == 1:
            c = chunks[0]
            return self.prefill(c.slot, c.ids, c.start)[None]
        dev = self._device
        all_tokens, slot_of, pos = list(tokens), list(slots), list(positions)
        segments, last = [], list(range(len(slots)))
        for c in chunks:
            segments.append(Segment(len(all_tokens), len(c.ids), c.slot, c.start))
            all_tokens += c.ids
            slot_of += [c.slot] * len(c.ids)
            pos += range(c.start, c.start + len(c.ids))
            last.append(len(all_tokens) - 1)
        step = RaggedStep(
            slot_of=torch.tensor(slot_of, dtype=torch.long, device=dev),
            pos=torch.tensor(pos, dtype=torch.long, device=dev),
            n_decode=len(slots),
            decode=CacheSlots.of(list(slots), max(positions) + 1, dev) if slots else None,
            segments=tuple(segments),
        )
        tok = torch.tensor(all_tokens, dtype=torch.long, device=dev)
        return self.model.forward_ragged(tok, self.cache, step, torch.tensor(last, device=dev))

    def move(self, src: int, dst: int, n: int) -> None:
        """Copy the first ``n`` cached positions of slot ``src`` into slot ``dst`` (all layers)."""
        self.cache.k[:, dst, :, :n] = self.cache.k[:, src, :, :n]
        self.cache.v[:, dst, :, :n] = self.cache.v[:, src, :, :n]

    def reuse_prefix(self, slot: int, ids: Sequence[int]) -> int:
        """Copy the cached keys and values of the longest prefix ``ids`` shares with the cached
        prompt into ``slot``; how many positions that was.

        At least the last two prompt tokens are left to compute: the last one's logits give the
        first output token, and a chunk of a single token runs other kernel paths (one-row
        matmuls) whose logits differ in the last bits from the same token computed with others
        (the scheduler never makes a prompt's last chunk a single token either)."""
        n, limit = 0, min(len(self._prefix), len(ids) - MIN_LAST_CHUNK)
        while n < limit and self._prefix[n] == ids[n]:
            n += 1
        if n:
            self.move(self.prefix_slot, slot, n)
        return n

    def remember_prefix(self, slot: int, ids: Sequence[int]) -> None:
        """Keep the keys and values of prompt ``ids``, just prefilled into ``slot``, for
        ``reuse_prefix``; a prompt the cache already covers costs nothing."""
        n = len(ids)
        if n <= len(self._prefix) and self._prefix[:n] == list(ids):
            return
        self.move(slot, self.prefix_slot, n)
        self._prefix = list(ids)

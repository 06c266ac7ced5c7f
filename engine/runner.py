"""The scheduler's view of the model: prefill one slot, decode a batch of slots, over one
preallocated multi-slot KV cache (engine/kv_cache.py) and the batched forward of engine/model.py.

Slots are handed out lowest first, and the scheduler moves the sequence in the highest slot
into a hole when one finishes, so the running slots stay 0..n-1: a decode step then reads the
cache as one view instead of gathering every row's keys and values each step.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

import torch

from llmtop.engine.kv_cache import CacheSlots, KVCache
from llmtop.engine.model import Transformer


class ModelRunner:
    """Forward passes for up to ``slots`` sequences of up to ``context_length`` tokens each."""

    def __init__(self, model: Transformer, slots: int, context_length: int | None = None) -> None:
        self.model = model
        self.cache: KVCache = model.new_cache(context_length or model.cfg.context_length, slots)
        self.slots = slots
        self.context_length = self.cache.max_len
        self.vocab_size = model.cfg.vocab_size
        self.kv_bytes_per_token = self.cache.bytes_per_sequence // self.cache.max_len
        self._free = list(range(slots))  # a heap: the lowest free slot first
        self._device = model.device

    @property
    def kv_capacity_bytes(self) -> int:
        return self.cache.nbytes

    def acquire(self) -> int:
        """The lowest free slot."""
        return heapq.heappop(self._free)

    def release(self, slot: int) -> None:
        assert slot not in self._free
        heapq.heappush(self._free, slot)

    def prefill(self, slot: int, ids: Sequence[int], start: int) -> torch.Tensor:
        """Write ``ids`` at positions ``start..`` of ``slot``; logits of the last one, ``[V]``."""
        t = len(ids)
        tokens = torch.tensor([list(ids)], dtype=torch.long, device=self._device)  # [1, T]
        pos = torch.arange(start, start + t, device=self._device)[None]  # [1, T]
        slots = CacheSlots.of([slot], start + t, self._device)
        last = torch.tensor([t - 1], device=self._device)
        return self.model(tokens, pos, self.cache, slots, last)[0]

    def decode(
        self, slots: Sequence[int], tokens: Sequence[int], positions: Sequence[int]
    ) -> torch.Tensor:
        """One token per row at its own position; logits ``[B, V]`` in the rows' order."""
        tok = torch.tensor(list(tokens), dtype=torch.long, device=self._device)[:, None]  # [B, 1]
        pos = torch.tensor(list(positions), dtype=torch.long, device=self._device)[:, None]
        view = CacheSlots.of(list(slots), max(positions) + 1, self._device)
        return self.model(tok, pos, self.cache, view)[:, 0]  # [B, V]

    def move(self, src: int, dst: int, n: int) -> None:
        """Copy the first ``n`` cached positions of slot ``src`` into slot ``dst`` (all layers)."""
        self.cache.k[:, dst, :, :n] = self.cache.k[:, src, :, :n]
        self.cache.v[:, dst, :, :n] = self.cache.v[:, src, :, :n]

"""Preallocated key/value caches: one slot per running sequence, written in place at its positions.

One ``KVCache`` holds ``n_slots`` sequences of up to ``max_len`` tokens for every layer; a
``SequenceCache`` is one sequence's slot and its filled length. A batched forward step reads the
slots of all its rows at once (a plain view when the slots are consecutive), so sequences of
different lengths decode together; positions past a row's own length are masked out.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch
from torch import Tensor

from llmtop.engine.errors import RequestError


def _lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Zeros whose pages the OS hands out on first touch, so an unused cache costs no RSS.

    An anonymous ``mmap`` of its own: zero pages, mapped at first write, in 4 KiB pages. Not
    numpy's or torch's allocator: numpy asks for transparent huge pages on large arrays
    (madvise), and then the first write to each (layer, slot, head) row of positions faults in a
    whole 2 MiB page: at --ctx 4096 and 9 slots that made ~1.5 GB resident after one batch of
    short requests, against ~50 MB actually used.

    Zeros rather than ``empty``: a masked position still multiplies its value by a zero weight,
    and 0 * NaN from uninitialised memory would poison the row.
    """
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    nbytes = max(1, math.prod(shape) * itemsize)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_NOHUGEPAGE"):  # also where huge pages are on for every mapping
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return torch.frombuffer(buf, dtype=dtype, count=math.prod(shape)).view(shape)


class KVCache:
    """Keys and values for ``n_slots`` sequences: k, v are [layers, slots, kv_heads, max_len, head_dim]."""

    def __init__(
        self,
        n_layers: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        n_slots: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        device = torch.device(device)
        shape = (n_layers, n_slots, n_kv_heads, max_len, head_dim)
        self.k = _lazy_zeros(shape, dtype, device)
        self.v = _lazy_zeros(shape, dtype, device)
        self.n_slots, self.max_len = n_slots, max_len
        self._free = list(range(n_slots - 1, -1, -1))

    @property
    def bytes_per_sequence(self) -> int:
        """2 x layers x kv_heads x max_len x head_dim x dtype bytes."""
        return 2 * self.k[:, 0].numel() * self.k.element_size()

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def acquire(self) -> SequenceCache:
        """Claim a free slot for a new sequence.

        Raises:
            RequestError: every slot is taken.
        """
        if not self._free:
            raise RequestError(f"all {self.n_slots} KV-cache slots are in use")
        return SequenceCache(self, self._free.pop())

    def release(self, seq: SequenceCache) -> None:
        """Give a slot back; its stale keys stay until overwritten (they are masked until then)."""
        assert seq.cache is self and seq.slot not in self._free
        self._free.append(seq.slot)
        seq.length = 0

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        """Layer ``i``'s keys and values: [slots, kv_heads, max_len, head_dim] views."""
        return self.k[i], self.v[i]


@dataclass(eq=False)
class SequenceCache:
    """One sequence's slot in a KVCache and how many of its positions are filled."""

    cache: KVCache
    slot: int
    length: int = 0

    @property
    def nbytes(self) -> int:
        """Bytes reserved for this sequence (its whole slot)."""
        return self.cache.bytes_per_sequence

    @property
    def used_bytes(self) -> int:
        """Bytes holding this sequence's filled positions."""
        return self.cache.bytes_per_sequence * self.length // self.cache.max_len

    @property
    def room(self) -> int:
        return self.cache.max_len - self.length

    def reserve(self, n: int) -> None:
        """Check that ``n`` more tokens fit.

        Raises:
            RequestError: the sequence would outgrow its slot.
        """
        if self.length + n > self.cache.max_len:
            raise RequestError(
                f"sequence of {self.length + n} tokens does not fit the KV cache "
                f"({self.cache.max_len} tokens per sequence)"
            )


@dataclass(frozen=True, slots=True)
class CacheSlots:
    """Which cache rows a batched step reads and writes, and how far.

    ``index`` is [B] (slot per batch row); ``span`` is (first, stop) when the slots are
    consecutive, so reads are views instead of gathers; ``kv_len`` is the number of positions
    attention looks at (the largest filled length after this step).
    """

    index: Tensor
    span: tuple[int, int] | None
    kv_len: int

    @classmethod
    def of(cls, slots: list[int], kv_len: int, device: torch.device | str = "cpu") -> CacheSlots:
        first = slots[0]
        consecutive = slots == list(range(first, first + len(slots)))
        index = torch.tensor(slots, dtype=torch.long, device=device)
        return cls(index, (first, first + len(slots)) if consecutive else None, kv_len)

    def write(self, cache: Tensor, pos: Tensor, new: Tensor) -> None:
        """cache [S, H, T, D] at rows ``index`` and positions ``pos`` [B, t] <- new [B, t, H, D]."""
        cache[self.index[:, None], :, pos] = new

    def read(self, cache: Tensor) -> Tensor:
        """The batch's rows of cache [S, H, T, D], cut to kv_len: [B, H, kv_len, D]."""
        assert self.kv_len <= cache.shape[2], (self.kv_len, cache.shape)
        if self.span is not None:
            return cache[self.span[0] : self.span[1], :, : self.kv_len]
        return cache[:, :, : self.kv_len].index_select(0, self.index)


@dataclass(frozen=True, slots=True)
class Segment:
    """One sequence's run of prompt tokens inside a ``RaggedStep`` (a prefill chunk)."""

    start: int
    """Index of its first token among the step's tokens."""
    length: int
    slot: int
    first_pos: int
    """The position of its first token in its sequence (the tokens before it are cached)."""

    @property
    def kv_len(self) -> int:
        return self.first_pos + self.length

    @property
    def end(self) -> int:
        """Index after its last token among the step's tokens."""
        return self.start + self.length


@dataclass(frozen=True, slots=True)
class RaggedStep:
    """One forward over decode rows and prefill chunks together, their tokens laid end to end.

    The first ``n_decode`` tokens are one token each of the decoding sequences (``decode`` says
    which slots, consecutive when possible); after them come the ``segments``, each a chunk of
    one prompt. Every token is written to the cache at (``slot_of[i]``, ``pos[i]``). The
    projections see all tokens as one matrix, so a prefill chunk rides along with the decode
    step instead of pausing it for a forward of its own.
    """

    slot_of: Tensor
    """[N] the cache slot of each token."""
    pos: Tensor
    """[N] each token's position in its own sequence."""
    n_decode: int
    decode: CacheSlots | None
    segments: tuple[Segment, ...]

    def write(self, cache: Tensor, new: Tensor, first: int = 0) -> None:
        """cache [S, H, T, D] at each token's (slot, position) <- new [N, H, D], from token
        ``first`` on (the decode rows before it are written by the decode attention kernel)."""
        cache[self.slot_of[first:], :, self.pos[first:]] = new[first:]

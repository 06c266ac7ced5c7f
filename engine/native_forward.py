"""The model's forward on the engine's C kernels (native_forward.c), for a model whose every
projection is a block weight (block_matmul.BlockLinear) over a float16 KV cache.

Why: a decode step at batch 1 was ~6 ms, of which the matmuls were ~1.5 ms. The rest was ~30
small torch operations per layer (RMSNorm alone is six, RoPE five, the dtype casts, the views,
the residual adds), ~900 per token, each a few microseconds of dispatch, and every kernel call
a return to Python and a wake-up of OpenMP's threads. Here a decode step is one C call: every
layer's norms, projections, RoPE, attention, SwiGLU and residual adds, then the final norm and
the LM head, inside one parallel region. A step that carries prompt tokens makes three calls
per layer instead, with torch's ``grouped_attention`` over each prompt chunk in between, and
the decode rows of that step go through the same C functions: a sequence's logits are the same
bits alone, batched, or beside a prompt (native_forward.c says how).

The arithmetic is the torch path's (model.py) with fewer roundings: the residual stream,
norms, RoPE and attention in float32, matmul inputs and outputs in bf16, silu(gate) * up rounded
once instead of twice. Models with other weights (float32 reference mode, F16 tensors, CUDA)
keep the torch path, which stays the reference. ``LLMTOP_ENGINE_FORWARD=torch`` keeps it for
every model (the fused forward off; the matmul and attention kernels still run), to compare.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Sequence

import torch
from torch import Tensor

from llmtop.engine import native
from llmtop.engine.block_matmul import BlockLinear
from llmtop.engine.kv_cache import KVCache, Segment
from llmtop.engine.model import Block, Transformer, attention_mask, grouped_attention

_I, _F, _P = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
SWITCH = "LLMTOP_ENGINE_FORWARD"
"""Set to ``torch``: no fused forward (``supported`` says no), the per-layer torch forward."""


class _Linear(ctypes.Structure):
    """native_kernels.h's ``llmtop_linear``."""

    _fields_ = [("bits", _I), ("n", _I), ("k", _I), ("codes", _P), ("scale", _P), ("offset", _P)]


class _Layer(ctypes.Structure):
    """native_forward.c's ``llmtop_layer``."""

    _fields_ = [
        ("attn_norm", _P),
        ("ffn_norm", _P),
        ("wqkv", _Linear),
        ("wo", _Linear),
        ("w13", _Linear),
        ("w2", _Linear),
    ]


class _Model(ctypes.Structure):
    """native_forward.c's ``llmtop_model``."""

    _fields_ = [
        ("n_layers", _I),
        ("dim", _I),
        ("n_heads", _I),
        ("n_kv_heads", _I),
        ("head_dim", _I),
        ("ffn_dim", _I),
        ("vocab", _I),
        ("eps", _F),
        ("rope_len", _I),
        ("rope", _P),
        ("norm", _P),
        ("layers", _P),
        ("output", _P),
    ]


class _Cache(ctypes.Structure):
    """native_forward.c's ``llmtop_cache``."""

    _fields_ = [("k", _P), ("v", _P), ("n_slots", _I), ("max_len", _I)]


def _linear(m: object) -> _Linear:
    assert isinstance(m, BlockLinear)
    return _Linear(m.bits, m.out_features, m.in_features, *(t.data_ptr() for t in m.weights()))


def _blocks(model: Transformer) -> list[Block]:
    blocks = [b for b in model.layers if isinstance(b, Block)]
    assert len(blocks) == len(model.layers)
    return blocks


def _f32(t: Tensor) -> bool:
    return t.dtype == torch.float32 and t.is_contiguous() and t.device.type == "cpu"


def supported(model: Transformer) -> bool:
    """Whether the kernels run this model: built here, on CPU in bf16, every projection a block
    weight, float32 norms, heads of whole blocks (a multiple of 32, at most 256), at most 16
    query heads per kv head."""
    if os.environ.get(SWITCH, "").lower() == "torch":
        return False
    c = model.cfg
    layers = _blocks(model)
    linears = [
        m
        for layer in layers
        for m in (
            layer.attention.wqkv,
            layer.attention.wo,
            layer.feed_forward.w13,
            layer.feed_forward.w2,
        )
    ]
    return (
        native.library() is not None
        and model.device.type == "cpu"
        and model.dtype == torch.bfloat16
        and all(isinstance(m, BlockLinear) for m in linears)
        and all(_f32(b.attention_norm) and _f32(b.ffn_norm) for b in layers)
        and _f32(model.norm)
        and c.head_dim % 32 == 0
        and c.head_dim <= 256
        and c.n_heads // c.n_kv_heads <= 16
        and c.dim % 32 == 0
        and c.ffn_dim % 32 == 0
    )


class ThreadChoice:
    """How many threads a decode step runs on: all of torch's, or one, whichever has been faster
    lately for steps of that many rows.

    Why: the step's threads meet at ~240 barriers (8 per layer). On an idle machine two threads
    halve a batch-1 step (measured 5.5 against 10.7 ms for SmolLM2 on 2 cores); on a shared one,
    where another process holds a core for a time slice, a barrier waits out the slice and the
    same step took 25 ms on two threads against 11.6 on one (load average ~4). Which case holds
    changes from second to second, so it is measured, not configured: each step's time is
    folded into a moving average per (rows, threads), the faster count runs, and every
    ``EXPLORE``-th step runs the other one to keep its average current. The logits are the same
    bits either way (native_forward.c: the threads only share the work out).
    """

    EXPLORE = 16
    WEIGHT = 0.25  # of a new step time in the moving average

    def __init__(self) -> None:
        self._avg: dict[tuple[int, int], float] = {}
        self._steps = 0

    def choose(self, rows: int, most: int) -> int:
        if most <= 1:
            return 1
        self._steps += 1
        many, one = self._avg.get((rows, most)), self._avg.get((rows, 1))
        if many is None:
            return most
        if one is None:
            return 1
        best, other = (most, 1) if many <= one else (1, most)
        return other if self._steps % self.EXPLORE == 0 else best

    def record(self, rows: int, threads: int, seconds: float) -> None:
        key = (rows, threads)
        old = self._avg.get(key)
        self._avg[key] = seconds if old is None else old + self.WEIGHT * (seconds - old)


class NativeForward:
    """A ``Transformer``'s forward passes on the C kernels (see the module docstring)."""

    def __init__(self, model: Transformer) -> None:
        assert supported(model)
        lib = native.library()
        assert lib is not None
        self._lib = lib
        self.model = model
        self.threads = ThreadChoice()
        c = model.cfg
        self.heads = model.heads
        self.n_heads, self.head_dim, self.vocab = c.n_heads, c.head_dim, c.vocab_size
        self.nqkv = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim
        rope = torch.view_as_real(model.rope).contiguous()  # [ctx, d/2, 2]: cos, sin
        layers = (_Layer * c.n_layers)()
        for i, block in enumerate(_blocks(model)):
            layers[i] = _Layer(
                block.attention_norm.data_ptr(),
                block.ffn_norm.data_ptr(),
                _linear(block.attention.wqkv),
                _linear(block.attention.wo),
                _linear(block.feed_forward.w13),
                _linear(block.feed_forward.w2),
            )
        self.lm_head = _linear(model.output) if isinstance(model.output, BlockLinear) else None
        self._keep = (rope, layers, self.lm_head)  # what the C structs point into
        self._desc = _Model(
            c.n_layers, c.dim, c.n_heads, c.n_kv_heads, c.head_dim, c.ffn_dim, c.vocab_size,
            c.rms_eps, rope.shape[0], rope.data_ptr(), model.norm.data_ptr(),
            ctypes.addressof(layers),
            ctypes.addressof(self.lm_head) if self.lm_head is not None else None,
        )  # fmt: skip
        self._m = ctypes.addressof(self._desc)

    def handles(self, cache: KVCache) -> bool:
        """Whether ``cache`` is one the kernels read: float16, contiguous, on CPU."""
        return (
            cache.k.dtype == torch.float16 and cache.k.is_contiguous() and cache.v.is_contiguous()
        )

    # --- the forwards --------------------------------------------------------------------------

    def decode(
        self, tokens: Tensor, slot: Tensor, pos: Tensor, cache: KVCache, threads: int = 0
    ) -> Tensor:
        """One token per row (tokens, slot, pos: [B]) at its own position: logits [B, V].
        ``threads``: that many (0: ``ThreadChoice``'s pick; the bits are the same for any)."""
        x = self._embed(tokens)  # [B, dim]
        b = x.shape[0]
        slot, pos = _int64(slot), _int64(pos)
        assert slot.shape == pos.shape == (b,), (slot.shape, pos.shape)
        desc = _cache(cache)
        nt = threads or self.threads.choose(b, _threads())
        logits = torch.empty(b, self.vocab) if self.lm_head is not None else None
        t = time.perf_counter()
        rc = self._lib.llmtop_forward_decode(
            self._m, ctypes.addressof(desc), b, x.data_ptr(), slot.data_ptr(), pos.data_ptr(),
            logits.data_ptr() if logits is not None else None, nt,
        )  # fmt: skip
        _check(rc, "decode step", b)
        if not threads:
            self.threads.record(b, nt, time.perf_counter() - t)
        return logits if logits is not None else self._torch_logits(x)

    def rows(
        self,
        tokens: Tensor,
        slot: Tensor,
        pos: Tensor,
        n_decode: int,
        segments: Sequence[Segment],
        cache: KVCache,
        logits_at: Tensor | None,
    ) -> Tensor:
        """A step with prompt tokens: ``n_decode`` decode rows first, then the prompt
        ``segments`` (kv_cache.RaggedStep's layout; tokens, slot, pos: [N]). Logits [R, V] of
        the tokens at ``logits_at`` [R] (None: every token's, [N, V])."""
        x = self._embed(tokens)  # [N, dim]
        n = x.shape[0]
        slot, pos = _int64(slot), _int64(pos)
        assert slot.shape == pos.shape == (n,), (slot.shape, pos.shape)
        desc = _cache(cache)
        _threads()
        biases = [
            attention_mask(pos[None, s.start : s.end], s.kv_len, self.heads, True) for s in segments
        ]  # [hkv, g n, kv_len] each, shared by every layer
        h, d = self.n_heads, self.head_dim
        qkv = torch.empty(n, self.nqkv)  # [N, (h + 2 hkv) d]: q and k rotated, v
        o = torch.empty(n, h * d)  # [N, h d]: the attention's output
        m, c, lib = self._m, ctypes.addressof(desc), self._lib
        xp, sp, pp, qp, op = (t.data_ptr() for t in (x, slot, pos, qkv, o))
        for i in range(len(self.model.layers)):
            _check(lib.llmtop_layer_in(m, c, i, n, xp, sp, pp, qp), "layer", n)
            if n_decode:
                _check(lib.llmtop_attend(m, c, i, n_decode, qp, sp, pp, op), "attention", n)
            for seg, bias in zip(segments, biases, strict=True):
                assert bias is not None
                q = qkv[seg.start : seg.end, : h * d].view(seg.length, h, d)
                q = q.transpose(0, 1)[None]  # [1, h, n, d]
                keys = cache.k[i, seg.slot : seg.slot + 1, :, : seg.kv_len].float()
                values = cache.v[i, seg.slot : seg.slot + 1, :, : seg.kv_len].float()
                out = grouped_attention(q, keys, values, bias)  # [1, h, n, d]
                o[seg.start : seg.end] = out[0].transpose(0, 1).reshape(seg.length, h * d)
            _check(lib.llmtop_layer_out(m, i, n, xp, op), "layer", n)
        if logits_at is not None:
            x = x[logits_at].contiguous()
        if self.lm_head is None:
            return self._torch_logits(x)
        logits = torch.empty(x.shape[0], self.vocab)
        _check(lib.llmtop_logits(m, x.shape[0], x.data_ptr(), logits.data_ptr()), "LM head", n)
        return logits

    def _embed(self, tokens: Tensor) -> Tensor:
        """[N] ids -> [N, dim] float32 (the embedding's bf16 values, as the torch path)."""
        x: Tensor = self.model.tok_embeddings(tokens.reshape(-1))
        return x.float().contiguous()

    def _torch_logits(self, x: Tensor) -> Tensor:
        """The final norm and an LM head that is not a block weight, in torch."""
        m = self.model
        h = torch.nn.functional.rms_norm(x, (m.cfg.dim,), m.norm, m.cfg.rms_eps)
        logits: Tensor = m.output(h.to(m.dtype))
        return logits.float()


def _threads() -> int:
    """torch's thread count, which also sets OpenMP's for the calling thread: the C functions
    take OpenMP's, and a thread torch has not run a parallel op on yet (the scheduler's) would
    otherwise have OpenMP's default (OMP_NUM_THREADS or one per core), not ``--threads``."""
    return torch.get_num_threads()


def _int64(t: Tensor) -> Tensor:
    return t.to(torch.int64).contiguous()


def _cache(cache: KVCache) -> _Cache:
    return _Cache(cache.k.data_ptr(), cache.v.data_ptr(), cache.n_slots, cache.max_len)


def _check(rc: int, what: str, rows: int) -> None:
    if rc != 0:
        raise ValueError(f"engine {what}: bad slot/position or out of memory ({rows} rows)")

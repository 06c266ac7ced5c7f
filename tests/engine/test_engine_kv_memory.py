"""The KV cache is preallocated for every slot and the whole context, but costs memory only for
the positions written: a server with --ctx 4096 and 9 slots holding short requests must not sit
on gigabytes."""

from __future__ import annotations

import psutil
import torch

from llmtop.engine.kv_cache import KVCache

MiB = 1 << 20


def test_a_barely_used_cache_costs_only_what_is_written():
    # SmolLM2-135M's shape at --ctx 4096 and --max-batch 8 (+ the prefix slot): 1.7 GB reserved
    layers, slots, heads, ctx, dim = 30, 9, 3, 4096, 64
    proc = psutil.Process()
    before = proc.memory_info().rss
    cache = KVCache(layers, heads, dim, ctx, n_slots=slots, dtype=torch.float32)
    assert cache.k.numel() * 4 * 2 > 1_500 * MiB
    # short requests in every slot: the first 100 positions of every (layer, slot, head) row
    for i in range(layers):
        k, v = cache.layer(i)
        k[:, :, :100] = 1.0
        v[:, :, :100] = 1.0
    grown = proc.memory_info().rss - before
    written = 2 * layers * slots * heads * 100 * dim * 4  # ~40 MB
    # 4 KiB pages: each row's 100 positions (25 KB) touch 7 pages; huge pages would fault
    # 2 MiB per row (~1.6 GB here)
    assert grown < written * 2 + 64 * MiB, f"RSS grew {grown / MiB:.0f} MiB"
    assert float(cache.k[0, 0, 0, 100:].abs().sum()) == 0.0  # untouched positions read as zeros

"""Sampling for a batch whose rows each have their own parameters and generator, on tensors.

Plain greedy rows take one batched argmax. The other rows are filtered and drawn together:
temperature as a column of divisors, top-k and top-p over one ``topk`` of candidates per row
(the nucleus of a 49k vocabulary almost always lies in the best ``CANDIDATES``; a row whose
does not is sorted whole), and one uniform number per row from that row's own seeded generator
picks its token by inverse CDF. So a seeded request draws the same tokens whatever else shares
its batch, and a batch of 8 sampled rows costs about one row's old cost: per row, the sorting
sampler of engine/sampling.py took ~1.4 ms (temperature) to ~3.7 ms (top-p) per token, which at
batch 8 was more than the forward itself. The filters are the same as engine/sampling.py's
(penalty, then temperature, then top-k, then top-p), so the distribution is the same; the
numbers a seed draws differ from ``generate``'s, which keeps its one-row sampler.

Where the engine's C kernels run (engine/native.py), every row of a batch is picked in one C
call instead (native_sample.c: the same filters, the same order of candidates, a few vectorised
passes per row). Measured in-process here, ``sample_rows`` per step: one top-p row 1.75 ->
0.16 ms, eight 4.2 -> 0.45 ms, a greedy batch of 8 0.6 -> 0.18 ms; and the forward after a
sampled step no longer pays ~0.4 ms for the OpenMP wake-ups of torch's ops. The tensor paths
below remain for machines without the kernels.
"""

from __future__ import annotations

import bisect
import ctypes
import math
import threading
from collections.abc import Sequence

import torch

from llmtop.engine import native, sampling
from llmtop.engine.jobs import SamplingParams

CANDIDATES = 1024
"""Tokens per row that top-k / top-p look at before falling back to a full sort."""
SMALL_TOP_K = 64
"""Rows with a top-k up to this are drawn one by one on Python floats (``_draw_small_k``)."""


def row_sampler(p: SamplingParams) -> sampling.Sampler | None:
    """The engine's per-request sampler, or ``None`` for plain greedy (batched argmax)."""
    if p.greedy:
        return None
    return sampling.Sampler(
        sampling.SamplingParams(
            temperature=max(p.temperature, 0.0),
            top_k=p.top_k,
            top_p=p.top_p,
            repetition_penalty=p.repetition_penalty,
            seed=p.seed,
        )
    )


def sample_rows(
    logits: torch.Tensor,
    samplers: Sequence[sampling.Sampler | None],
    histories: Sequence[Sequence[int]],
) -> list[int]:
    """One token id per row of ``logits`` ``[B, V]``; ``histories`` feed repetition penalties."""
    assert logits.dim() == 2 and logits.shape[0] == len(samplers) == len(histories)
    lib = native.library()
    if lib is not None and logits.device.type == "cpu":
        return _sample_native(lib, logits, samplers, histories)
    out = logits.argmax(dim=-1).tolist()  # greedy for every row first: one op for the batch
    rows = [i for i, s in enumerate(samplers) if s is not None]
    if not rows:
        return out
    x = logits[rows].float()
    picked = [s for s in samplers if s is not None]
    for j, (s, i) in enumerate(zip(picked, rows, strict=True)):
        if s.params.repetition_penalty != 1.0:
            x[j] = sampling.apply_repetition_penalty(
                x[j], histories[i], s.params.repetition_penalty
            )
    drawn = [j for j, s in enumerate(picked) if not s.params.greedy]
    for j, s in enumerate(picked):
        if s.params.greedy:  # temperature 0 with a penalty
            out[rows[j]] = int(x[j].argmax())
    small = [j for j in drawn if 0 < picked[j].params.top_k <= SMALL_TOP_K]
    for j in small:
        s = picked[j]
        u = float(torch.rand(1, generator=s.generator, device=x.device))
        out[rows[j]] = _draw_small_k(x[j], s.params, u)
    wide = [j for j in drawn if not 0 < picked[j].params.top_k <= SMALL_TOP_K]
    if wide:
        tokens = _draw(x[wide], [picked[j].params for j in wide], [picked[j] for j in wide])
        for j, token in zip(wide, tokens, strict=True):
            out[rows[j]] = token
    return out


_local = threading.local()
"""native_sample.c's scratch, per thread (the scheduler's is the one that samples while
serving) and vocabulary size: allocated once, not per step."""


def _sample_native(
    lib: ctypes.CDLL,
    logits: torch.Tensor,
    samplers: Sequence[sampling.Sampler | None],
    histories: Sequence[Sequence[int]],
) -> list[int]:
    """``sample_rows`` in one call of native_sample.c (see the module docstring)."""
    x = logits.float().contiguous()  # [B, V]
    b, vocab = x.shape
    penalised = [
        j for j, s in enumerate(samplers) if s is not None and s.params.repetition_penalty != 1.0
    ]
    if penalised:
        x = x.clone()
        for j in penalised:
            s = samplers[j]
            assert s is not None
            x[j] = sampling.apply_repetition_penalty(
                x[j], histories[j], s.params.repetition_penalty
            )
    params = [s.params if s is not None else None for s in samplers]
    temperature = (ctypes.c_float * b)(
        *(p.temperature if p is not None and not p.greedy else 0.0 for p in params)
    )
    top_k = (ctypes.c_int32 * b)(*(p.top_k if p is not None else 0 for p in params))
    top_p = (ctypes.c_float * b)(*(p.top_p if p is not None else 1.0 for p in params))
    draws = [
        float(torch.rand(1, generator=s.generator))
        if s is not None and not s.params.greedy
        else 0.0
        for s in samplers
    ]  # one number per drawn row from its own generator; none for greedy rows
    u = (ctypes.c_double * b)(*draws)
    tokens = (ctypes.c_int64 * b)()
    rc = lib.llmtop_sample_rows(
        x.data_ptr(), b, vocab, temperature, top_k, top_p, u, _scratch_for(lib, vocab), tokens
    )
    assert rc == 0, f"native sampler refused {b} rows of {vocab}"
    return list(tokens)


def _scratch_for(lib: ctypes.CDLL, vocab: int) -> int:
    buffers: dict[int, torch.Tensor] = _local.__dict__.setdefault("buffers", {})
    buf = buffers.get(vocab)
    if buf is None:
        buf = torch.empty(int(lib.llmtop_sample_scratch_bytes(vocab)), dtype=torch.uint8)
        buffers[vocab] = buf
    return int(buf.data_ptr())


def _draw_small_k(x: torch.Tensor, p: sampling.SamplingParams, u: float) -> int:
    """One row ``[V]`` (penalised, not yet divided by its temperature) with a small top-k: the
    same filters and inverse-CDF draw as ``_draw``, one ``topk`` on the tensor and the rest on
    its k values as Python floats.

    Why: with a fused decode step of ~5 ms, ``_draw``'s ~20 small tensor operations (0.5-0.9 ms
    a row here) made a sampled stream 15-40 % slower than a greedy one, and top-k 40 is what
    every Ollama-API request gets by default. Past ``SMALL_TOP_K`` values a Python loop costs
    more than the tensor operations. Which path a row takes depends on its own parameters only,
    so a seeded request still draws the same tokens whatever shares its batch; the candidates
    are in order of probability as in ``_draw`` (``topk`` is ordered; dividing by the
    temperature keeps the order).
    """
    top = torch.topk(x, p.top_k)
    vals = (top.values / p.temperature).tolist()
    best = vals[0]
    norm = best + math.log(math.fsum(math.exp(v - best) for v in vals))
    cdf: list[float] = []
    total = 0.0
    for v in vals:
        if total >= p.top_p:  # the tokens before it already cover top_p (the first always stays)
            break
        total += math.exp(v - norm)
        cdf.append(total)
    at = min(bisect.bisect_left(cdf, u * total), len(cdf) - 1)
    return int(top.indices[at])


def _draw(
    x: torch.Tensor, params: list[sampling.SamplingParams], samplers: list[sampling.Sampler]
) -> list[int]:
    """Filter and draw every row of ``x`` ``[n, V]`` at once, best candidates first.

    One uniform ``u`` per row, from its own generator, picks the token where the cumulative
    probability of the kept tokens, in order of probability, passes ``u`` times their mass.
    Ordering by probability keeps a draw stable when a batched row's logits differ from the
    same row's alone in the last bits: the mass before a likely token barely moves.
    """
    vocab = x.shape[1]
    x = x / torch.tensor([p.temperature for p in params], device=x.device)[:, None]
    u = torch.cat([torch.rand(1, generator=s.generator, device=x.device) for s in samplers])
    ks = [p.top_k if 0 < p.top_k < vocab else vocab for p in params]
    c = min(vocab, max(k if k < vocab else CANDIDATES for k in ks))
    vals, ids = torch.topk(x, c, dim=-1)
    k = torch.tensor(ks, device=x.device)
    top_p = torch.tensor([p.top_p if p.top_p < 1 else 2.0 for p in params], device=x.device)
    inside = torch.arange(c, device=x.device)[None, :] < k[:, None]  # within each row's top-k
    # log of each row's normaliser: over its top-k when it has one, else over the whole row
    norm = torch.where(
        k < vocab,
        torch.logsumexp(vals.masked_fill(~inside, float("-inf")), dim=-1),
        torch.logsumexp(x, dim=-1),
    )
    p = torch.exp(vals - norm[:, None]).masked_fill_(~inside, 0.0)
    cum = p.cumsum(dim=-1)
    p.masked_fill_((cum - p) >= top_p[:, None], 0.0)  # top-p: the first token always stays
    cdf = p.cumsum(dim=-1)
    # the kept tokens' mass: all of it without top-k / top-p, though only part is a candidate
    mass = torch.where((k == vocab) & (top_p >= 1), 1.0, cdf[:, -1])
    target = u * mass
    kept = (p > 0).sum(dim=-1, keepdim=True)
    at = torch.searchsorted(cdf, target[:, None]).clamp_(max=kept - 1)
    tokens = ids.gather(1, at)[:, 0].tolist()
    beyond = torch.where(top_p >= 1, target >= cdf[:, -1], cum[:, -1] < top_p)
    past = (k == vocab) & (c < vocab) & beyond
    for j in past.nonzero()[:, 0].tolist():  # the draw falls past the candidates
        tokens[j] = _draw_sorted(x[j], params[j], float(u[j]))
    return tokens


def _draw_sorted(x: torch.Tensor, p: sampling.SamplingParams, u: float) -> int:
    """One row with its whole vocabulary sorted (already divided by its temperature)."""
    probs = torch.softmax(sampling.filter_top_k_top_p(x, p.top_k, p.top_p), dim=-1)
    vals, ids = torch.sort(probs, descending=True)
    cdf = vals.cumsum(dim=-1)
    at = int(torch.searchsorted(cdf, torch.tensor([u * float(cdf[-1])])))
    return int(ids[min(at, int((vals > 0).sum()) - 1)])


def token_logprobs(
    logits: torch.Tensor, token: int, top: int
) -> tuple[float, tuple[tuple[int, float], ...]]:
    """log p(token) and the ``top`` most likely (id, log p), from one row of logits ``[V]``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    best = torch.topk(lp, top) if top > 0 else None
    alts = tuple(zip(best.indices.tolist(), best.values.tolist(), strict=True)) if best else ()
    return float(lp[token]), alts

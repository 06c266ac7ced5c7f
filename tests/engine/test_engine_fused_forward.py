"""The fused forward (native_forward.py): SmolLM2 in the default mode runs its decode steps and
prompt rows on the C kernels, one call per decode step.

Its arithmetic rounds less often than the per-layer torch forward (silu(gate) * up once instead
of twice, the attention output straight to the next matmul), so the two agree within bf16
rounding, not bit for bit: measured 0.5-0.56 at most and 0.066-0.078 on average over two prompts
fed through the KV cache, with the same next token wherever the best two logits are not tied
within one bf16 step (on one CPU the fused forward rounded tokens 357 and 260 both to 18.875,
the per-layer one to 19.0 and 18.875: argmax then takes the lower id). The bounds below leave
room above that; the tests of exactness alone / batched / beside a prompt (test_engine_model.py,
tests/serve/test_scheduler.py) run on this path wherever the kernels are built.
"""

from __future__ import annotations

import threading

import pytest
import torch

from llmtop.engine import native_forward
from llmtop.engine.generate import decode_one, prefill
from llmtop.engine.loader import LoadedModel

FUSED_MAX, FUSED_MEAN = 0.75, 0.1
TEXTS = [
    "The capital of France is Paris, and the capital of Germany is Berlin. " * 3,
    "<|im_start|>user\nWrite a poem about the sea<|im_end|>\n<|im_start|>assistant\n",
]


def through_cache(lm: LoadedModel, ids: list[int], fused: bool) -> torch.Tensor:
    """Prefill 8 tokens, then the rest one decode step at a time: logits [T - 7, V]."""
    m = lm.model
    keep = m.native
    m.native = keep if fused else None
    try:
        seq = m.new_cache(len(ids)).acquire()
        with torch.inference_mode():
            rows = [prefill(m, seq, ids[:8])] + [decode_one(m, seq, t) for t in ids[8:]]
    finally:
        m.native = keep
    return torch.stack(rows)


def test_smollm_takes_the_fused_forward(smollm, kernels):
    assert smollm.model.native is not None


def test_the_switch_keeps_the_per_layer_forward(smollm, kernels, monkeypatch):
    monkeypatch.setenv(native_forward.SWITCH, "torch")
    assert not native_forward.supported(smollm.model)
    monkeypatch.delenv(native_forward.SWITCH)
    assert native_forward.supported(smollm.model)


def test_the_tiny_model_keeps_the_per_layer_forward(tiny, tiny32):
    """Heads of 16 values are not whole blocks of the matmul; float32 mode is the reference."""
    assert tiny.model.native is None and tiny32.model.native is None


@pytest.mark.slow
def test_fused_and_per_layer_forwards_agree_within_bf16_rounding(smollm, kernels):
    for text in TEXTS:
        ids = smollm.tokenizer.encode(text)
        fused, layers = through_cache(smollm, ids, True), through_cache(smollm, ids, False)
        diff = (fused - layers).abs()
        assert diff.max() <= FUSED_MAX and diff.mean() <= FUSED_MEAN, (diff.max(), diff.mean())
        picked_f, picked_l = fused.argmax(-1), layers.argmax(-1)
        differ = (picked_f != picked_l).nonzero().flatten().tolist()
        assert len(differ) <= 1, (text, differ)  # a tie is rare: never a run of them
        for p in differ:  # only where the two best are tied within one bf16 step in both
            for logits, other in ((fused[p], picked_l[p]), (layers[p], picked_f[p])):
                step = torch.finfo(torch.bfloat16).eps * logits.max().abs()
                assert logits.max() - logits[other] <= step, (text, p, logits.topk(2))


def test_a_bad_slot_or_position_is_refused_before_any_work(smollm, kernels):
    fused = smollm.model.native
    assert fused is not None
    cache = smollm.model.new_cache(16)
    token = torch.tensor([1])
    for slot, pos in ((1, 0), (-1, 0), (0, 16), (0, -1)):
        with pytest.raises(ValueError, match="bad slot/position"):
            fused.decode(token, torch.tensor([slot]), torch.tensor([pos]), cache)
    assert not cache.k.any() and not cache.v.any()


def test_a_thread_of_its_own_runs_with_torchs_thread_count(smollm, kernels):
    """The scheduler calls the model from its own thread, where OpenMP's count is its default
    until torch sets it: the forward asks torch first, so ``--threads`` holds there too."""
    seen: list[int] = []
    ids = smollm.tokenizer.encode("Hello there")

    def run() -> None:
        seen.append(native_forward._threads())
        through_cache(smollm, ids, True)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert seen == [torch.get_num_threads()] == [1]


def test_one_thread_or_two_give_the_same_bits(smollm, kernels):
    fused = smollm.model.native
    assert fused is not None
    ids = smollm.tokenizer.encode("The capital of France is")
    out = []
    for threads in (1, 2, 1):
        seq = smollm.model.new_cache(len(ids) + 1).acquire()
        with torch.inference_mode():
            prefill(smollm.model, seq, ids)
            tok, slot, pos = torch.tensor([5]), torch.tensor([seq.slot]), torch.tensor([len(ids)])
            out.append(fused.decode(tok, slot, pos, seq.cache, threads=threads))
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])


def test_the_thread_choice_runs_the_faster_count_and_keeps_trying_the_other():
    pick = native_forward.ThreadChoice()
    assert pick.choose(1, 1) == 1  # one thread: nothing to choose
    assert pick.choose(1, 2) == 2  # no times yet: all threads first ...
    pick.record(1, 2, 0.025)
    assert pick.choose(1, 2) == 1  # ... then one
    pick.record(1, 1, 0.011)
    runs = []
    for _ in range(2 * pick.EXPLORE):
        runs.append(pick.choose(1, 2))
        pick.record(1, runs[-1], 0.011 if runs[-1] == 1 else 0.025)
    assert runs.count(2) == 2 and runs.count(1) == 2 * pick.EXPLORE - 2
    assert pick.choose(3, 2) == 2  # another batch size is timed on its own
    for _ in range(8):  # the load went away: two threads get fast again and win
        pick.record(1, 2, 0.005)
    assert pick.choose(1, 2) == 2 or pick.choose(1, 2) == 2

"""CUDA: the same model on the GPU gives the CPU's answers (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch
from test_engine_reference import BF16_MAX, BF16_MEAN, NEAR_TIE, check_prompt

from llmtop.engine.generate import generate
from llmtop.engine.kv_cache import CacheSlots
from llmtop.engine.loader import load_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_tiny_float32_on_cuda_matches_cpu(tiny_gguf, tiny32):
    gpu = load_model(tiny_gguf, device="cuda", dtype="float32", cache_dir=None)
    assert gpu.model.device.type == "cuda"
    ids = tiny32.tokenizer.encode("the cat sat on the mat")
    n = len(ids)
    with torch.inference_mode():
        want = tiny32.model(
            torch.tensor([ids]),
            torch.arange(n)[None],
            tiny32.model.new_cache(n),
            CacheSlots.of([0], n),
        )
        m = gpu.model
        got = m(
            torch.tensor([ids], device="cuda"),
            torch.arange(n, device="cuda")[None],
            m.new_cache(n),
            CacheSlots.of([0], n, "cuda"),
        )
    torch.testing.assert_close(got.cpu(), want, atol=1e-3, rtol=0)


def test_smollm_on_cuda_matches_reference(smollm_path, reference):
    lm = load_model(smollm_path, device="cuda", cache_dir=None)
    for prompt in reference["prompts"]:
        check_prompt(lm, prompt, BF16_MAX, BF16_MEAN, NEAR_TIE)
    s = generate(lm, "The capital of France is", max_tokens=8, ignore_eos=True).run()
    assert s.output_tokens == 8 and s.text.startswith(" Paris")

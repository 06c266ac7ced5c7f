"""Tiny random-weight llama GGUF files, written with the gguf package's writer: every code path of
the engine (GQA, Q4_1, Q4_0, Q8_0, F16, F32 tensors, tied embeddings, ChatML specials) in
milliseconds instead of the real model's seconds.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf.quants import quantize

Q = gguf.GGMLQuantizationType

# Small but with every feature of the real one: GQA (4 heads over 2), Q4_1, Q4_0, Q8_0, F16 and
# F32 tensors, tied embeddings, ChatML specials.
TINY = {
    "n_layers": 2,
    "dim": 64,
    "n_heads": 4,
    "n_kv_heads": 2,
    "head_dim": 16,
    "ffn_dim": 128,
    "rope_theta": 10000.0,
    "rms_eps": 1e-5,
    "context_length": 256,
}
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
WORDS = ["the", "cat", "sat", "on", "mat", "hello", "world", "is", "what", "AI"]
CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_alphabet() -> list[str]:
    """GPT-2's printable stand-ins for the 256 byte values, in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def tiny_vocab() -> tuple[list[str], list[str], list[int]]:
    """Specials, the byte alphabet, then merges that build a few words (with and without 'Ġ')."""
    tokens = list(SPECIALS) + byte_level_alphabet()
    merges: list[str] = []
    for word in WORDS:
        for piece in (word, "Ġ" + word):
            cur = piece[0]
            for ch in piece[1:]:
                if cur + ch not in tokens:
                    merges.append(f"{cur} {ch}")
                    tokens.append(cur + ch)
                cur += ch
    types = [gguf.TokenType.CONTROL] * len(SPECIALS) + [gguf.TokenType.NORMAL] * (
        len(tokens) - len(SPECIALS)
    )
    while len(tokens) % 16:  # the int4 kernel (and so the Q8_0 LM head) wants rows in 16s
        tokens.append(f"<unused{len(tokens)}>")
        types.append(gguf.TokenType.UNUSED)
    return tokens, merges, [int(t) for t in types]


def write_tiny_gguf(path: Path, *, arch: str = "llama", seed: int = 0, **over: float) -> Path:
    """A random-weight llama GGUF: layer 0 all Q4_1, layer 1 Q4_0 with an F16 attn_v."""
    c = TINY | over
    tokens, merges, types = tiny_vocab()
    vocab = len(tokens)
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, arch)
    w.add_name("tiny-test-llama")
    w.add_block_count(c["n_layers"])
    w.add_context_length(c["context_length"])
    w.add_embedding_length(c["dim"])
    w.add_feed_forward_length(c["ffn_dim"])
    w.add_head_count(c["n_heads"])
    w.add_head_count_kv(c["n_kv_heads"])
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_eps"])
    w.add_rope_dimension_count(c["head_dim"])
    w.add_vocab_size(vocab)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)

    def put(name: str, shape: tuple[int, ...], qtype: Q, scale: float = 0.2) -> None:
        x = (rng.standard_normal(shape) * scale).astype(np.float32)
        if qtype == Q.F32:
            w.add_tensor(name, x)
        elif qtype == Q.F16:
            w.add_tensor(name, x.astype(np.float16))
        else:
            w.add_tensor(
                name, quantize(x, qtype), raw_dtype=qtype
            )  # byte shape in, element shape out

    d, hd, f = c["dim"], c["head_dim"], c["ffn_dim"]
    put("token_embd.weight", (vocab, d), Q.Q8_0, 1.0)
    put("output_norm.weight", (d,), Q.F32, 0.1)
    for i in range(c["n_layers"]):
        qt = Q.Q4_1 if i % 2 == 0 else Q.Q4_0
        w.add_tensor(
            f"blk.{i}.attn_norm.weight", (1 + rng.standard_normal(d) * 0.1).astype(np.float32)
        )
        w.add_tensor(
            f"blk.{i}.ffn_norm.weight", (1 + rng.standard_normal(d) * 0.1).astype(np.float32)
        )
        put(f"blk.{i}.attn_q.weight", (c["n_heads"] * hd, d), qt)
        put(f"blk.{i}.attn_k.weight", (c["n_kv_heads"] * hd, d), qt)
        put(f"blk.{i}.attn_v.weight", (c["n_kv_heads"] * hd, d), qt if i % 2 == 0 else Q.F16)
        put(f"blk.{i}.attn_output.weight", (d, c["n_heads"] * hd), qt)
        put(f"blk.{i}.ffn_gate.weight", (f, d), qt)
        put(f"blk.{i}.ffn_up.weight", (f, d), qt)
        put(f"blk.{i}.ffn_down.weight", (d, f), qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path

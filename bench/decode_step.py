"""A batch-1 decode step of the engine, fused forward (native_forward.py) against the per-layer
torch forward, in one process on the same model and KV cache.

Loads the bundled SmolLM2, prefills a short prompt, then times decode steps (``model(...)``, one
token, greedy feedback), alternating blocks of steps between the two paths so that both see the
same load; prints each path's median and fastest step in ms and their tokens, which must be the
same sequence (the two paths round differently, so they may part after a near-tie; the count of
tokens before the first difference is printed). In-process numbers: no sampling, no HTTP, no
scheduler.

    .venv/bin/python bench/decode_step.py [--threads 2] [--steps 64] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import llmtop.engine  # noqa: F401  # before torch: it sets OpenMP's wait policy (serve's)

# isort: split
import torch

from llmtop.engine.kv_cache import CacheSlots
from llmtop.engine.loader import default_model_path, load_model

PROMPT = "The capital of France is Paris. The capital of Germany is"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=64, help="decode steps per block")
    ap.add_argument("--rounds", type=int, default=5, help="blocks per path, alternating")
    args = ap.parse_args()

    lm = load_model(default_model_path(), threads=args.threads)
    model = lm.model
    fused = model.native
    if fused is None:
        raise SystemExit("llmtop: the fused forward does not run here (see native_forward.py)")
    ids = lm.tokenizer.encode(PROMPT)
    size = len(ids) + args.steps + 1

    def run(native: object) -> tuple[list[float], list[int]]:
        model.native = native  # type: ignore[assignment]
        cache = model.new_cache(size)
        n = len(ids)
        slots = CacheSlots.of([0], n, model.device)
        with torch.inference_mode():
            logits = model(torch.tensor([ids]), torch.arange(n)[None], cache, slots, prompt=True)
            token = int(logits[0, -1].argmax())
            times, out = [], [token]
            for p in range(n, n + args.steps):
                t = time.perf_counter()
                step = CacheSlots.of([0], p + 1, model.device)
                logits = model(torch.tensor([[token]]), torch.tensor([[p]]), cache, step)
                token = int(logits[0, -1].argmax())
                times.append(time.perf_counter() - t)
                out.append(token)
        return times, out

    paths = {"fused": fused, "torch": None}
    times: dict[str, list[float]] = {k: [] for k in paths}
    tokens: dict[str, list[int]] = {}
    run(fused)  # warm-up
    run(None)
    for _ in range(args.rounds):
        for name, native in paths.items():
            t, out = run(native)
            times[name] += t
            tokens[name] = out
    model.native = fused
    same = next(
        (
            i
            for i, (a, b) in enumerate(zip(tokens["fused"], tokens["torch"], strict=True))
            if a != b
        ),
        len(tokens["fused"]),
    )
    for name, t in times.items():
        ms = [x * 1e3 for x in t]
        print(
            f"{name:6s} step median {statistics.median(ms):.2f} ms, fastest {min(ms):.2f} ms "
            f"({1e3 / statistics.median(ms):.0f} tok/s at the median), {len(ms)} steps"
        )
    print(f"same greedy tokens for the first {same} of {len(tokens['fused'])}")


if __name__ == "__main__":
    main()

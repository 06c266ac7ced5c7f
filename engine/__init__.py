"""The in-repo inference engine: a from-scratch PyTorch Llama, run as its own process (llmtop serve).

The library: ``loader.load_model`` (GGUF -> ready model and tokenizer), ``generate.generate``
(prefill then streamed decode of one sequence, with Ollama-style timings), and the batched
``model.Transformer`` forward over ``kv_cache.KVCache`` slots that a scheduler builds on.

Importing this package (it imports no torch itself) makes OpenMP's idle workers sleep instead of
spin (OMP_WAIT_POLICY=PASSIVE) unless the variable is already set; it only counts when torch
is imported afterwards. The engine shares its machine with the dashboard that measures it, and
on 2 cores with other work running, spinning workers made 2-thread decode 5-10x slower (8-17
against 52-81 tok/s for SmolLM2); set OMP_WAIT_POLICY=ACTIVE on an otherwise idle machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

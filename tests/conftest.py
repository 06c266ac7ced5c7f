"""Settings for the whole test process, made before any test module imports torch.

OpenMP's idle workers sleep instead of spinning (OMP_WAIT_POLICY=PASSIVE, unless set), as the
engine arranges for itself when its package is imported first (engine/__init__.py). Here the
engine tests import torch before the engine, and torch's default spinning workers then fought
the test's own thread for the two cores of a busy machine: tests/engine with
test_sampler_rows.py took 67-110 s, 36 s with passive workers (under load ~6); each
sampler_rows draw test took 10-32 s in the whole suite against ~1 s alone. Subprocesses
(``llmtop serve``) inherit the same setting, which is the engine's own default anyway.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

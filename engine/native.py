"""The engine's C kernels (native_*.c): compiled on first use, loaded with ctypes.

Two kernels where torch's CPU ops cost the batched decode step most: the matmul over GGUF's
4/8-bit blocks (block_matmul.py) and the decode attention (decode_attention.py). Both are
written so that a row's result does not depend on the other rows in the batch.

Built with the system's C compiler into the engine's cache directory ($LLMTOP_ENGINE_CACHE or
the user cache dir, ``kernels/``; well under a second, once per source version) and loaded with
ctypes, which releases the GIL for the call. Their OpenMP is the libgomp torch already loaded
(same soname), so they run on torch's threads and ``--threads`` applies to them too. Where the
CPU lacks AVX-512 VNNI, no compiler works, or ``LLMTOP_ENGINE_KERNEL=torch`` is set,
``library()`` is None and the engine runs on torch's kernels alone.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from llmtop.engine.cache_dir import default_cache_dir

SOURCES = [Path(__file__).with_name(n) for n in ("native_matmul.c", "native_attention.c")]
CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "f16c", "fma")
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512vnni", "-mf16c", "-mfma", "-fopenmp"]

log = logging.getLogger(__name__)

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    # bits, codes, scales, offsets, n, k, x, rows, y
    "llmtop_block_matmul": [_I, _P, _P, _P, _I, _I, _P, _I, _P],
    # q_and_k, v, k_cache, v_cache, slot, pos, rows, n_slots, h, hkv, d, max_len, scale, out
    "llmtop_decode_attention": [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _F, _P],
}


def cpu_supported() -> bool:
    """Whether this CPU runs the kernels (Linux /proc/cpuinfo; elsewhere: no)."""
    if sys.platform != "linux" or os.uname().machine != "x86_64":
        return False
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(CPU_FLAGS) <= set(line.split(":", 1)[1].split())
    except OSError:
        return False
    return False


def cache_dir() -> Path:
    """Next to the engine's index cache (so $LLMTOP_ENGINE_CACHE moves both)."""
    return default_cache_dir() / "kernels"


def _build(cc: str, target: Path) -> bool:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [cc, *CFLAGS, "-shared", "-fPIC", "-o", str(out), *map(str, SOURCES)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True)
        except OSError as exc:
            log.warning("engine kernels not built (%s); using torch's kernels", exc)
            return False
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or ["no output"])[0]
            log.warning("engine kernels not built (%s); using torch's kernels", why)
            return False
        out.replace(target)  # atomic: another process may be building the same file
    return True


def compiler() -> str | None:
    """$CC, else the system's cc or gcc."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def target_path(cc: str) -> Path:
    """Where the library built by ``cc`` from these sources lives (a new name per version)."""
    digest = hashlib.sha256(" ".join([cc, *CFLAGS]).encode())
    for src in SOURCES:
        digest.update(src.read_bytes())
    return cache_dir() / f"llmtop-kernels-{digest.hexdigest()[:16]}.so"


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels, built on first call; None where they cannot run here."""
    if os.environ.get("LLMTOP_ENGINE_KERNEL", "").lower() == "torch" or not cpu_supported():
        return None
    cc = compiler()
    if cc is None:
        return None
    target = target_path(cc)
    try:
        if not target.exists() and not _build(cc, target):
            return None
        lib = ctypes.CDLL(str(target))
    except OSError as exc:  # an unwritable cache dir, a damaged file
        log.warning("engine kernels not loaded (%s); using torch's kernels", exc)
        return None
    for name, args in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib

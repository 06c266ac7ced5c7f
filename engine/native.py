"""The engine's C kernels (native_*.c): compiled on first use, loaded with ctypes.

Two kernels where torch's CPU ops cost the batched decode step most: the matmul over GGUF's
4/8-bit blocks (block_matmul.py) and the decode attention (decode_attention.py); and the
fused forward built from them (native_forward.c, native_forward.py: a decode step's every
layer in one call); and the sampler that picks each row's next token from the step's logits
(native_sample.c, sampler_rows.py). All are written so that a row's result does not depend on the other rows
in the batch.

Built with the system's C compiler into the engine's cache directory ($LLMTOP_ENGINE_CACHE or
the user cache dir, ``kernels/``; well under a second) and loaded with ctypes, which releases
the GIL for the call. A build is named by everything it depends on: the compiler (its path and
its ``--version``, so an upgraded compiler behind the same path builds anew), the flags and the
sources; building one removes the builds of other keys, so upgrades leave no files behind. Their OpenMP is the libgomp torch already loaded
(same soname), so they run on torch's threads and ``--threads`` applies to them too. Where the
CPU lacks AVX-512 VNNI, no compiler works, or ``LLMTOP_ENGINE_KERNEL=torch`` is set,
``library()`` is None and the engine runs on torch's kernels alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from llmtop.engine.cache_dir import default_cache_dir

SOURCES = [
    Path(__file__).with_name(n)
    for n in ("native_matmul.c", "native_attention.c", "native_forward.c", "native_sample.c")
]
HEADERS = [Path(__file__).with_name("native_kernels.h")]
"""Included by the sources: part of what names a build, never compiled on their own."""
CPU_FLAGS = ("avx512f", "avx512bw", "avx512_vnni", "f16c", "fma")
CFLAGS = [
    "-O3",
    "-fno-strict-aliasing",  # the sources load through memcpy already; this guards later edits
    "-mavx512f",
    "-mavx512bw",
    "-mavx512vnni",
    "-mf16c",
    "-mfma",
    "-fopenmp",
]

LIB_PREFIX = "llmtop-kernels-"

log = logging.getLogger(__name__)

_P, _I, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    # bits, codes, scales, offsets, n, k, x, rows, y
    "llmtop_block_matmul": [_I, _P, _P, _P, _I, _I, _P, _I, _P],
    # q_and_k, v, k_cache, v_cache, slot, pos, rows, n_slots, h, hkv, d, max_len, scale, out
    "llmtop_decode_attention": [_P, _P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _F, _P],
    # the fused forward (native_forward.py): model, cache, rows, x, slot, pos, logits, threads
    "llmtop_forward_decode": [_P, _P, _I, _P, _P, _P, _P, _I],
    # model, cache, layer, rows, x, slot, pos, qkv
    "llmtop_layer_in": [_P, _P, _I, _I, _P, _P, _P, _P],
    # model, cache, layer, rows, qkv, slot, pos, o
    "llmtop_attend": [_P, _P, _I, _I, _P, _P, _P, _P],
    # model, layer, rows, x, o
    "llmtop_layer_out": [_P, _I, _I, _P, _P],
    # model, rows, x, logits
    "llmtop_logits": [_P, _I, _P, _P],
    # the sampler (sampler_rows.py): logits, rows, vocab, temperature, top_k, top_p, u, scratch,
    # tokens
    "llmtop_sample_rows": [_P, _I, _I, _P, _P, _P, _P, _P, _P],
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
    """Compile into ``target`` (atomically), then remove the other keys' builds beside it."""
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
    _remove_stale(target)
    return True


STALE_AFTER_S = 7 * 24 * 3600
"""A build of another key not loaded for this long is removed. Another install of llmtop (a
second venv, an older version) may share the cache and load its own build meanwhile: deleting
that at once made each install rebuild, or run on torch's kernels, after the other one ran."""


def _remove_stale(target: Path) -> None:
    """Delete the builds of other keys (older sources, flags or compilers) that nothing loaded
    for ``STALE_AFTER_S``. A process that has one loaded keeps its mapping."""
    now = time.time()
    for old in target.parent.glob(f"{LIB_PREFIX}*.so"):
        if old == target:
            continue
        try:
            if now - old.stat().st_mtime > STALE_AFTER_S:
                old.unlink(missing_ok=True)
        except OSError as exc:  # someone else's file in a shared cache: leave it
            log.debug("stale engine kernels %s not removed: %s", old, exc)


def _mark_used(target: Path) -> None:
    """A loaded build's mtime is when it was last loaded (what ``_remove_stale`` reads)."""
    with contextlib.suppress(OSError):
        os.utime(target)


def compiler() -> str | None:
    """$CC, else the system's cc or gcc."""
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def compiler_version(cc: str) -> str:
    """``cc --version``'s output ("" when it does not run: then the build fails and says why)."""
    try:
        done = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout + done.stderr


def build_key(cc: str) -> str:
    """A digest of what the library depends on: compiler path and version, flags, sources."""
    digest = hashlib.sha256()
    for part in (cc, compiler_version(cc), *CFLAGS):
        digest.update(part.encode() + b"\0")
    for src in [*SOURCES, *HEADERS]:
        digest.update(src.read_bytes())
    return digest.hexdigest()[:16]


def target_path(cc: str) -> Path:
    """Where the library built by ``cc`` from these sources with these flags lives."""
    return cache_dir() / f"{LIB_PREFIX}{build_key(cc)}.so"


def will_build() -> bool:
    """Whether ``library()`` is about to compile (kernels wanted, a compiler, no build yet)."""
    if library.cache_info().currsize or os.environ.get("LLMTOP_ENGINE_KERNEL") == "torch":
        return False
    cc = compiler()
    return cc is not None and cpu_supported() and not target_path(cc).exists()


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
        _mark_used(target)
    except OSError as exc:  # an unwritable cache dir, a damaged file
        log.warning("engine kernels not loaded (%s); using torch's kernels", exc)
        return None
    for name, args in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    lib.llmtop_sample_scratch_bytes.argtypes = [_I]
    lib.llmtop_sample_scratch_bytes.restype = ctypes.c_size_t
    return lib

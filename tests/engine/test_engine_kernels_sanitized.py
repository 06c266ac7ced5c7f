"""The engine's C kernels under AddressSanitizer and UndefinedBehaviorSanitizer: kernel_harness.c
runs the matmul and the attention on small deterministic inputs against scalar references, and
the fused forward on a small random model (alone against batched, one call against per layer),
built with the kernels' own flags plus ``-fsanitize=address,undefined -fno-sanitize-recover=all``,
so an out-of-bounds access, a signed overflow or any other undefined behaviour UBSan sees fails
the test.

``-O1`` instead of the kernels' ``-O3``: the sanitizers check the same code paths, and the
build takes ~2 s per source instead of 5-7 here (the always-inlined kernels are large at -O3).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from llmtop.engine import native

HARNESS = Path(__file__).with_name("kernel_harness.c")
SANITIZE = ["-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
SANITIZE += ["-fno-sanitize-recover=all"]
FLAGS = [f for f in native.CFLAGS if not f.startswith("-O")] + ["-O1", *SANITIZE]
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "2",  # the kernels' parallel loops on more than one thread, anywhere
    "ASAN_OPTIONS": "detect_leaks=1",
    "UBSAN_OPTIONS": "print_stacktrace=1",
}

pytestmark = pytest.mark.slow


def _compile(cc: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cc, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def cc() -> str:
    cc = native.compiler()
    if cc is None:
        pytest.skip("no C compiler ($CC, cc or gcc)")
    if not native.cpu_supported():
        pytest.skip(f"the CPU lacks one of the kernels' flags: {', '.join(native.CPU_FLAGS)}")
    return cc


@pytest.fixture(scope="module")
def build(cc: str, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """A function that links the harness (with extra ``-D`` flags) to the sanitized kernels."""
    out = tmp_path_factory.mktemp("sanitized-kernels")
    probe = out / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    if _compile(cc, *SANITIZE, "-o", out / "probe", probe).returncode != 0:
        pytest.skip(f"{cc} cannot build with -fsanitize=address,undefined (no runtime libraries)")
    objects = [out / f"{src.stem}.o" for src in native.SOURCES]
    with ThreadPoolExecutor(len(objects)) as pool:  # ~2 s each: side by side
        jobs = [
            pool.submit(_compile, cc, *FLAGS, "-c", "-o", obj, src)
            for src, obj in zip(native.SOURCES, objects, strict=True)
        ]
    for job in jobs:
        done = job.result()
        assert done.returncode == 0, done.stderr

    def link(*defines: str) -> Path:
        exe = out / ("harness" + "".join(defines).replace("=", "").replace("-D", "-"))
        done = _compile(
            cc, *FLAGS, "-Wall", "-Wextra", *defines, "-o", exe, HARNESS, *objects, "-lm"
        )
        assert done.returncode == 0 and not done.stderr, done.stderr  # warnings too
        return exe

    return link


def test_the_kernels_run_clean_under_asan_and_ubsan(build):
    done = subprocess.run([build()], capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "all checks passed" in done.stdout
    assert "runtime error" not in done.stderr and "Sanitizer" not in done.stderr, done.stderr


def test_an_overrun_inside_a_kernel_is_caught(build):
    """The planted bug (the matmul's output one element short) must stop the harness: the
    sanitizers are really in the build, and a kernel's stores are really checked."""
    done = subprocess.run(
        [build("-DY_SHORT_BY=1")], capture_output=True, text=True, env=ENV, timeout=300
    )
    assert done.returncode != 0
    assert "ERROR: AddressSanitizer" in done.stderr, done.stderr
    assert "0 bytes to the right of" in done.stderr, done.stderr  # just past the buffer
    assert "llmtop_block_matmul" in done.stderr, done.stderr

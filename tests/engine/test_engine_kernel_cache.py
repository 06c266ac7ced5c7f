"""The kernels' build cache (engine/native.py): a build is named by the compiler's path and
``--version``, the flags and the sources; building one removes the other keys' builds; a cache
that cannot be used costs one warning and the torch kernels, never an error."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llmtop.engine import native
from llmtop.engine.cache_dir import default_cache_dir

REAL_CC = shutil.which(native.compiler() or "cc")
needs_compiler = pytest.mark.skipif(
    REAL_CC is None or not native.cpu_supported(), reason="no C compiler or no VNNI"
)


@pytest.fixture
def kernel_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty engine cache for one test, and ``library()`` forgotten before and after."""
    monkeypatch.setenv("LLMTOP_ENGINE_CACHE", str(tmp_path / "engine"))
    native.library.cache_clear()
    yield native.cache_dir()
    native.library.cache_clear()


def fake_compiler(path: Path, version: str) -> str:
    """A ``cc`` at ``path`` that says it is ``version`` and compiles with the real one."""
    path.write_text(
        f'#!/bin/sh\nif [ "$1" = --version ]; then echo "{version}"; exit 0; fi\nexec {REAL_CC} "$@"\n'
    )
    path.chmod(0o755)
    return str(path)


def test_the_key_follows_the_compiler_version_and_the_flags(tmp_path, monkeypatch):
    cc = fake_compiler(tmp_path / "cc", "cc 12.2.0")
    before = native.build_key(cc)
    assert native.build_key(cc) == before  # stable
    fake_compiler(tmp_path / "cc", "cc 13.1.0")  # upgraded behind the same path
    assert native.build_key(cc) != before
    fake_compiler(tmp_path / "cc", "cc 12.2.0")
    assert native.build_key(cc) == before
    monkeypatch.setattr(native, "CFLAGS", [*native.CFLAGS, "-DSOMETHING"])
    assert native.build_key(cc) != before


def age(path, days: float) -> None:
    t = time.time() - days * 24 * 3600
    os.utime(path, (t, t))


@pytest.mark.slow  # two builds
@needs_compiler
def test_a_new_build_removes_builds_unused_for_a_week_and_keeps_recent_ones(
    kernel_cache, tmp_path, monkeypatch
):
    cc = fake_compiler(tmp_path / "cc", "cc 1.0")
    monkeypatch.setenv("CC", cc)
    kernel_cache.mkdir(parents=True)
    unused = kernel_cache / f"{native.LIB_PREFIX}0123456789abcdef.so"
    unused.write_bytes(b"an old build")
    age(unused, 8)
    (kernel_cache / "notes.txt").write_text("not ours to remove")
    assert native.library() is not None
    first = native.target_path(cc)
    assert sorted(p.name for p in kernel_cache.iterdir()) == [first.name, "notes.txt"]

    fake_compiler(tmp_path / "cc", "cc 2.0")  # the compiler was upgraded (or another install)
    native.library.cache_clear()
    assert native.library() is not None
    second = native.target_path(cc)
    assert second != first
    # the first build was loaded a moment ago: another install may still load it
    assert sorted(p.name for p in kernel_cache.iterdir()) == sorted(
        [first.name, second.name, "notes.txt"]
    )
    age(first, 8)
    fake_compiler(tmp_path / "cc", "cc 3.0")
    native.library.cache_clear()
    assert native.library() is not None
    third = native.target_path(cc)
    assert sorted(p.name for p in kernel_cache.iterdir()) == sorted(
        [second.name, third.name, "notes.txt"]
    )


@needs_compiler
def test_a_build_in_place_is_reused(kernel_cache):
    assert native.library() is not None
    built = native.target_path(native.compiler() or "cc")
    inode = built.stat().st_ino  # a rebuild replaces the file (its mtime marks each load)
    native.library.cache_clear()
    assert native.library() is not None
    assert built.stat().st_ino == inode


@needs_compiler
def test_an_unusable_cache_costs_one_warning(kernel_cache, caplog):
    kernel_cache.parent.mkdir(parents=True)
    kernel_cache.write_text("a file where the kernels' directory should be")
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert native.library() is None
    assert len(caplog.records) == 1, caplog.text
    assert "using torch's kernels" in caplog.records[0].getMessage()


def test_the_tests_keep_out_of_the_users_cache(private_dirs):
    """conftest's ``private_dirs``: the engine's caches are in the session's temp dir."""
    assert native.cache_dir().is_relative_to(private_dirs)
    assert default_cache_dir().is_relative_to(private_dirs)

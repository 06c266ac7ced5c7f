"""Room for sockets before a run (recorder/fd_room.py): the soft open-files limit raised when
the streams need it, the kernel's descriptor table grown once (its growth stalls a threaded
process 10-25 ms mid-run), and no descriptor in use ever touched. Each case runs in its own
process: limits and the table are per process."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")

FDSIZE = "int([l for l in open('/proc/self/status') if l.startswith('FDSize')][0].split()[1])"


def run(code: str) -> list[str]:
    prelude = "import os, resource; from llmtop.recorder.fd_room import *; "
    out = subprocess.run([sys.executable, "-c", prelude + code], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return out.stdout.split()


def test_the_table_is_grown_for_the_streams_before_any_socket_opens():
    before, after = run(f"print({FDSIZE}); make_room_for_sockets(3000); print({FDSIZE})")
    assert int(before) < 3064 <= int(after)


def test_a_low_soft_limit_is_raised_up_to_the_hard_one():
    soft, fdsize = run(
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)); "
        f"print(make_room_for_sockets(1500)); print({FDSIZE})"
    )
    assert int(soft) >= min(
        1564, int(run("print(resource.getrlimit(resource.RLIMIT_NOFILE)[1])")[0])
    )
    assert int(fdsize) >= min(int(soft), 1564)


def test_a_hard_limit_below_the_need_is_kept_and_the_table_stays_within_it():
    soft, fdsize = run(
        "resource.setrlimit(resource.RLIMIT_NOFILE, (200, 300)); "
        f"print(make_room_for_sockets(1500)); print({FDSIZE})"
    )
    assert int(soft) == 300
    assert int(fdsize) >= 256  # grown as far as the limit lets it (tables come in powers of two)


def test_a_descriptor_in_use_at_the_top_is_left_open():
    (content,) = run(
        "r, w = os.pipe(); os.dup2(w, 2047); os.close(w); grow_table(2048); "
        "os.write(2047, b'kept'); os.close(2047); print(os.read(r, 4).decode())"
    )
    assert content == "kept"

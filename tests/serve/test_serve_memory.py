"""`bound_heap_growth`: large freed blocks go back to the system instead of staying in a fragmented heap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from deployft.serve.memory import bound_heap_growth

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Frees a 16 MiB block (which raises glibc's dynamic mmap threshold above 2 MiB), fills 50 blocks of 2 MiB, pins the
# heap's top with a 200 KiB block allocated after them, frees the 50 and prints how much resident memory stayed.
SCENARIO = """
import sys
from deployft.serve.memory import bound_heap_growth
if sys.argv[1] == "on":
    assert bound_heap_growth()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096
big = b"\\x01" * (16 << 20)
del big
base = rss()
blocks = [b"\\x01" * (2 << 20) for _ in range(50)]
pin = b"\\x02" * (200 << 10)
del blocks
print((rss() - base) >> 20)
"""


def _kept_mib(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", SCENARIO, mode], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only (mallopt)")
def test_freed_large_blocks_leave_the_process_once_heap_growth_is_bounded():
    assert _kept_mib("off") > 50  # glibc's defaults keep the freed 100 MiB in the heap
    assert _kept_mib("on") < 10


def test_without_glibc_nothing_is_changed(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert bound_heap_growth() is False
    monkeypatch.setattr(sys, "platform", "linux")
    assert bound_heap_growth("libno-such-c.so.9") is False

"""``fedlab_app/heap.py``: ``trim`` gives a freed block that glibc kept in the heap back to the system."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# allocate, touch and free a 16 MB block twice; print the resident MB after the second free, then after
# trim(). glibc mmaps the first block, raises its mmap threshold to 16 MB when it is freed, serves the second
# from the heap and keeps it there (its trim threshold is now 32 MB)
PROBE = """
import ctypes
from fedlab_app import heap
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
keep = libc.malloc(1 << 16)  # a small live block: the freed one is not the only thing in the heap
for _ in range(2):
    p = libc.malloc(16 << 20)
    ctypes.memset(p, 1, 16 << 20)
    libc.free(p)
before = rss()
print(before, heap.trim(), rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_trim_returns_a_freed_heap_block():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    before, ran, after = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                                        env=env, timeout=60).stdout.split()
    assert ran == "True"
    assert float(before) - float(after) > 12, (before, after)  # the 16 MB block left the process


# in a thread (as the ServerApp's), allocate, touch and free a 48 MB block (over glibc's largest mmap threshold)
# 8 times; print the page faults this took, whether keep() took effect, and whether trim() still ran
FAULTS = """
import resource, sys, threading, ctypes
from fedlab_app import heap
kept = heap.keep() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
out = {}
def work():
    r0 = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(8):
        p = libc.malloc(48 << 20)
        ctypes.memset(p, 1, 48 << 20)
        libc.free(p)
    out["faults"] = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - r0
t = threading.Thread(target=work)
t.start()
t.join()
print(out["faults"], kept, heap.trim())
"""


def _faults(how: str, keep_env: str = "1") -> tuple[int, str, str]:
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, "FEDLAB_HEAP_KEEP": keep_env}
    faults, kept, trimmed = subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True, text=True,
                                           check=True, env=env, timeout=60).stdout.split()
    return int(faults), kept, trimmed


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_keep_reuses_freed_blocks_without_page_faults():
    fresh, kept0, trimmed0 = _faults("default")
    kept_faults, kept1, trimmed1 = _faults("keep")
    off_faults, kept2, _ = _faults("keep", keep_env="0")  # FEDLAB_HEAP_KEEP=0: glibc's defaults
    assert (kept0, kept1, kept2) == ("False", "True", "False")
    assert (trimmed0, trimmed1) == ("True", "False")  # after keep(), trim() gives nothing back
    # each 48 MB block faulted in anew (12,288 pages of 4 KB; fewer with huge pages), against once with keep()
    assert fresh > 4 * kept_faults and off_faults > 4 * kept_faults, (fresh, kept_faults, off_faults)
    assert kept_faults < 14_000, kept_faults

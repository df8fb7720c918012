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

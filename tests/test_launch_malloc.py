"""The ``fedlab`` script's malloc settings (``fedlab_app/launch.py``, ``tune_malloc``): a large block, once
freed, goes back to the system, where glibc's own settings would keep it in the heap."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# allocate, free, allocate and free again a 16 MB block; print the resident MB after the second free.
# glibc by default mmaps the first block, raises its mmap threshold to 16 MB when it is freed, serves the
# second from the heap and keeps it there (its trim threshold is now 32 MB)
PROBE = """
import ctypes, os, sys
from fedlab_app.launch import tune_malloc
print(tune_malloc() if sys.argv[1] == "tuned" else "untuned")
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 16 << 20
for _ in range(2):
    p = libc.malloc(size)
    ctypes.memset(p, 1, size)  # touch every page
    libc.free(p)
print(int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20)
"""


def _probe(how: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE, how], capture_output=True, text=True, check=True,
                         env={**clean, **env}, timeout=60).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc and /proc")
def test_freed_large_blocks_go_back_to_the_system():
    untuned, rss_untuned = _probe("untuned")
    tuned, rss_tuned = _probe("tuned")
    assert tuned == "True"
    assert rss_untuned - rss_tuned > 12, (rss_untuned, rss_tuned)  # the 16 MB block stayed only untuned


def test_malloc_settings_in_the_environment_win():
    assert _probe("tuned", MALLOC_ARENA_MAX="4")[0] == "False"

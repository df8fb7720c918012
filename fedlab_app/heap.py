"""What the server process does with the memory it frees: keep it for the next round (:func:`keep`, the default
of the ``fedlab`` script), or give it back to the system after each evaluation (:func:`trim`).

**Keep** (since 2026-12-03). Every round the server allocates the same large blocks again: with gossip of 256
LeNet-5 nodes the replies' stacked models, the mixed states, the messages, the checkpoint's bytes and the
evaluation's activations, about 250 MB. glibc serves a block over its mmap threshold (at most 32 MB), and any
block of a thread's own arena, from pages it hands back to the kernel when the block is freed, so every round
faulted them in anew: about 64,000 page faults a round in the server process (``perf stat -e page-faults``), and
in one round out of two 0.5-0.8 s of kernel time in the ServerApp's thread between two exchanges. ``keep`` sets
one arena for all threads, no block in its own mmap and no automatic trim: 13,700 faults in 12 s of steady
rounds against 258,000. The memory a round frees serves the next round's blocks of the same sizes.
``FEDLAB_HEAP_KEEP=0`` gives glibc's defaults and the trim below (``bench/bench_env_ab.py --var
FEDLAB_HEAP_KEEP``; ``results/bench/heap_keep_*.json``).

**Trim** (without keep). glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), so
after the server's first test-set evaluation its batches' activations come from the heap, and once freed they
stay there: the heap's top is trimmed only above twice that threshold, and free chunks below the top never.
``trim`` after each evaluation hands them back. ``python bench/bench_server_heap.py --reps 3``
(``results/bench/server_heap.json``: a 10-model average and the default test-set evaluation, 8 rounds per
process, interleaved): resident memory after the rounds 298 MB every time against 309-353 MB untouched, for
0.43-0.46 s a round against 0.39-0.41 s (the trimmed pages come back as page faults in the next evaluation).
Fixed thresholds (``mallopt``, 256 KB) also gave 298 MB, but every evaluation's activations then came
fresh from the kernel: 0.58-0.61 s a round (in whole runs of the default experiment: peak PSS 1,184 against
1,212 MB, steady rounds 4.28 against 4.03 s, ``results/bench/malloc_server_ab.json``; in Ray's workers no
difference, ``malloc_workers_ab.json``).
"""

from __future__ import annotations

import ctypes
import functools
import os

KEEP = os.environ.get("FEDLAB_HEAP_KEEP", "1") != "0"  # 0: trim after each evaluation (``bench/bench_env_ab.py``)
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
_kept = False


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    fn.argtypes, fn.restype = (ctypes.c_size_t,), ctypes.c_int
    return fn


@functools.lru_cache(maxsize=1)
def _mallopt():
    try:
        fn = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return fn


def keep() -> bool:
    """From now on this process keeps the memory it frees for its next allocations: one malloc arena for every
    thread, no block in its own ``mmap``, no automatic trim; :func:`trim` then does nothing. Whether it took
    effect (glibc, and ``FEDLAB_HEAP_KEEP`` not 0). Call it before the process starts its threads.

    Why: a gossip server of 256 LeNet-5 nodes allocates about 250 MB of fresh arrays a round (the replies' stacked
    models, the mixed states, the messages, the checkpoint's bytes, the evaluation's activations). glibc serves
    blocks over its mmap threshold (at most 32 MB) and every block of a thread's own arena from pages that go
    back to the kernel when freed, so each round faulted them in again: about 64,000 page faults a round
    (``perf stat -e page-faults``), 0.5-0.8 s of kernel time in the server's thread in one round out of two.
    """
    global _kept
    fn = _mallopt() if KEEP else None
    if fn is None:
        return False
    ok = fn(M_ARENA_MAX, 1) and fn(M_MMAP_MAX, 0) and fn(M_TRIM_THRESHOLD, (1 << 31) - 1)
    _kept = _kept or bool(ok)
    return bool(ok)


def trim() -> bool:
    """Return the free memory of this process's heaps to the system; whether glibc's ``malloc_trim`` ran (not
    after :func:`keep`)."""
    fn = None if _kept else _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True

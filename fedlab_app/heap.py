"""Giving the server's freed heap memory back to the system after each evaluation (glibc's ``malloc_trim``).

glibc raises its mmap threshold to the size of each large block freed (up to 32 MB), so after the server's
first test-set evaluation its batches' activations come from the heap, and once freed they stay there: the
heap's top is trimmed only above twice that threshold, and free chunks below the top never. ``trim`` after
each evaluation hands them back. ``python bench/bench_server_heap.py --reps 3``
(``results/bench/server_heap.json``: a 10-model average and the default test-set evaluation, 8 rounds per
process, interleaved): resident memory after the rounds 298 MB every time against 309-353 MB untouched, for
0.43-0.46 s a round against 0.39-0.41 s (the trimmed pages come back as page faults in the next evaluation).
Fixed thresholds (``mallopt``, 256 KB) also gave 298 MB, but every evaluation's activations then came
fresh from the kernel: 0.58-0.61 s a round, so they are not used (in whole runs of the default experiment:
peak PSS 1,184 against 1,212 MB, steady rounds 4.28 against 4.03 s, ``results/bench/malloc_server_ab.json``;
in Ray's workers no difference, ``malloc_workers_ab.json``).
"""

from __future__ import annotations

import ctypes
import functools


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    fn.argtypes, fn.restype = (ctypes.c_size_t,), ctypes.c_int
    return fn


def trim() -> bool:
    """Return the free memory of this process's heaps to the system; whether glibc's ``malloc_trim`` ran."""
    fn = _malloc_trim()
    if fn is None:
        return False
    fn(0)
    return True

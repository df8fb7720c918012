"""Process-level speed settings for training processes (see shared PERF-NOTES)."""

from __future__ import annotations

import ctypes
import functools

import torch


@functools.cache
def tune_process(threads: int) -> None:
    """Set torch's thread count and stop glibc from returning freed buffers to the OS on every batch.

    Simulation actors run side by side, so each uses ``threads`` (default 1) threads: two threads
    per process collapse to 0.4-0.55x when another busy process shares the cores. The mallopt
    settings remove a 1.2-1.75x slowdown on large batches in fresh processes.
    """
    torch.set_num_threads(threads)
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: 1 GiB
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: 32 MiB
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass

"""The ``fedlab`` script: a simulated run's Ray starts first (``fedlab_app/ray_start.py``), then the CLI.

The CLI's imports wait until Ray is up: ``ray.init`` then has the cores to itself (up at 2.5 s, against 4.5 s
while the imports ran beside it) and the workers it starts import the ClientApp while the CLI imports, which
ended round 1 0.5 s sooner in three interleaved pairs (``bench/bench_startup.py``).
"""

from __future__ import annotations

import sys

from fedlab_app import ray_start


# glibc's mallopt parameters (malloc.h) and the values the server process runs with
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MALLOC_SETTINGS = {M_MMAP_THRESHOLD: 256 * 1024, M_TRIM_THRESHOLD: 256 * 1024, M_ARENA_MAX: 2}


def tune_malloc() -> bool:
    """Make glibc's malloc in this process give large freed blocks back to the system.

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MB) and trims the heap
    only above twice that, so after the server's first test-set evaluation its batches' activations stay in
    the heap as free memory. Fixed thresholds (256 KB) end that: 1,184 against 1,212 MB peak PSS of the
    default run's process tree, medians of 3 interleaved pairs, every tuned run below every untuned one
    (``results/bench/malloc_server_ab.json``). The same settings in Ray's workers, through their environment,
    made no difference: 1,204 against 1,207 MB (``malloc_workers_ab.json``).
    Skipped where ``MALLOC_*`` settings are in the environment (glibc read them at the start) or malloc is
    not glibc's. Returns whether the settings were made.
    """
    import ctypes
    import os

    if any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in MALLOC_SETTINGS.items())


def main() -> None:
    """Entry point of the ``fedlab`` script (``fedlab_app.cli.main`` once Ray's start is under way)."""
    tune_malloc()
    try:
        if ray_start.start_early(sys.argv[1:]):
            ray_start.wait_until_up()
        from fedlab_app.cli import (
            main as cli_main,  # after Ray's start: the CLI imports torch and Flower (2 s)
        )
    except KeyboardInterrupt:  # Ctrl-C while Ray starts or the CLI imports: nothing ran yet
        print("fedlab: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    cli_main()

"""The ``fedlab`` script: a simulated run's Ray starts first (``fedlab_app/ray_start.py``), then the CLI.

The CLI's imports wait until Ray is up: ``ray.init`` then has the cores to itself (up at 2.5 s, against 4.5 s
while the imports ran beside it) and the workers it starts import the ClientApp while the CLI imports, which
ended round 1 0.5 s sooner in three interleaved pairs (``bench/bench_startup.py``).
"""

from __future__ import annotations

import sys

from fedlab_app import heap, ray_start


def main() -> None:
    """Entry point of the ``fedlab`` script (``fedlab_app.cli.main`` once Ray's start is under way)."""
    heap.keep()  # before any thread: the server's rounds reuse their freed memory (fedlab_app/heap.py)
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

"""Round r's record (evaluation, metrics row, checkpoint) made in a thread beside round r+1's server step.

Where the time goes in a simulated gossip round (``results/bench/timeline_dpsgd_256.json``, before this): the
workers' training keeps both cores busy, then the server works alone for 0.93 s. Of that, only the evaluation (0.31
s) uses both cores well; the mixing (memory-bound: 0.23 s on two threads against 0.25 s on one,
``results/bench/mix.json``), the checkpoint's bytes, the consensus and the messages leave the other core mostly
waiting. Work moved under the workers' training only takes their cores: a first version that made the record right
after round r+1's messages were pushed was no faster (``results/bench/overlap_after_push_dpsgd_256.log``). Work
moved beside the server's own step takes the core that waits.

So the driver hands round r's record to :meth:`Overlap.defer` (``Recorder.end_of_round``: the model copied, the
counts taken), and the record starts in a thread when round r+1's replies are in (:meth:`Overlap.start`, from the
counting grid), while the server mixes or aggregates them; torch's threads are split between the two (OpenMP's
thread count is per thread), since a team that shares a core with another thread waits at every barrier (without the
split the mixing took 0.55 and 0.66 s instead of 0.28 s: ``results/bench/timeline_dpsgd_256_unsplit_*.json``). The
record is joined when round r+2's replies are in, or before any round is recorded in turn (:meth:`Overlap.settle`):
rows and checkpoints keep their order, and one record runs at a time. A record that finds the run diverged ends it:
the rounds after it are not recorded.
``FEDLAB_OVERLAP_EVAL=0``: each round is recorded before the next one is sent, as before.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

import torch

ENABLED = os.environ.get("FEDLAB_OVERLAP_EVAL", "1") != "0"
SPLIT_THREADS = True  # False: both threads keep torch's full count (``bench/bench_overlap.py`` compares)


class RunEnded(Exception):
    """An earlier round's record ended the run (its evaluation diverged); this round is not recorded."""


class Overlap:
    """One deferred record and at most one running; a record is a callable that returns True to end the run."""

    def __init__(self) -> None:
        self._pending: Callable[[], bool] | None = None
        self._running: tuple[threading.Thread, dict, int] | None = None

    def defer(self, job: Callable[[], bool]) -> None:
        """Keep ``job`` until the next exchange's replies are in (:meth:`start`) or :meth:`settle`."""
        if self._pending is not None:
            raise RuntimeError("a deferred record is already waiting")
        self._pending = job

    def waiting(self) -> bool:
        """Whether a record is deferred (:meth:`defer`) and not started yet."""
        return self._pending is not None

    def start(self) -> bool:
        """The replies of an exchange are in: wait for the running record (it had a round; even with nothing
        deferred, so that the driver's thread gets its threads back and a divergence is seen at once), then start
        the deferred one in a thread. True: the run must end (the waiting record is dropped)."""
        if self._join():
            self._pending = None
            return True
        if self._pending is None:
            return False
        job, self._pending = self._pending, None
        box: dict = {}
        total = torch.get_num_threads()
        # torch's threads split between the record and the server's step: an OpenMP team that shares a core
        # with another thread waits at every barrier (see above)
        mine = max(1, total // 2) if SPLIT_THREADS else total

        def run() -> None:
            torch.set_num_threads(mine)  # per thread with OpenMP: this thread's setting only
            try:
                box["end"] = bool(job())
            except BaseException as exc:  # noqa: BLE001 (raised in the driver's thread by _join)
                box["error"] = exc

        thread = threading.Thread(target=run, name="fedlab-round-record", daemon=True)
        self._running = (thread, box, total)
        torch.set_num_threads(max(1, total - mine) if SPLIT_THREADS else total)
        thread.start()
        return False

    def settle(self, run_pending: bool = True) -> bool:
        """Finish now: wait for the running record, then run the deferred one here (``run_pending``; else drop it).
        True: the run must end."""
        if self._join():
            self._pending = None
            return True
        job, self._pending = self._pending, None
        return bool(job()) if job is not None and run_pending else False

    def _join(self) -> bool:
        """Wait for the running record; its answer, or its error raised here."""
        if self._running is None:
            return False
        thread, box, total = self._running
        thread.join()
        self._running = None
        torch.set_num_threads(total)  # the driver's thread has every core again
        if "error" in box:  # nothing is recorded after a record that failed (its rows were taken back)
            self._pending = None
            raise box["error"]
        return box.get("end", False)

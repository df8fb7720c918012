"""Ctrl-C and leftover threads of an in-process simulation (``fedlab_app/simulate.py``).

One Ctrl-C stops the run cleanly (the clients, then the ServerApp thread); a second exits at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator

INTERRUPTED_EXIT = 130


class RunInterrupted(Exception):
    """Raised inside a ServerApp thread that must stop (Ctrl-C, or its clients are gone)."""


@contextlib.contextmanager
def _first_sigint_raises() -> Iterator[None]:
    """The first SIGINT raises KeyboardInterrupt (to stop cleanly); a second one exits at once with 130."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def handler(signum, frame):
        if hits:
            os.write(2, b"fedlab: interrupted again; exiting without cleaning up\n")
            os._exit(INTERRUPTED_EXIT)
        hits.append(signum)
        if not logging.getLogger("flwr").isEnabledFor(logging.INFO):  # not verbose: hide the errors of
            logging.getLogger("flwr").disabled = True  # Flower's workers whose actors are being stopped
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
        logging.getLogger("flwr").disabled = False


def _stop_threads(before: set[threading.Thread], grace_s: float = 3.0, timeout_s: float = 30.0) -> bool:
    """Stop the threads started since ``before`` that outlive the simulation; True if there were any.

    Flower's simulation engine runs the ServerApp in a non-daemon thread that polls for replies; when
    the engine stops first (Ctrl-C, a Ray failure), nothing answers and the thread would keep the
    process alive forever. Each such thread gets :class:`RunInterrupted` raised in it (the CPython
    API for asynchronous exceptions; delivered at its next Python bytecode) and is joined.
    """
    deadline = time.monotonic() + grace_s  # Flower's own workers end within ~1 s of its stop event
    left = [t for t in threading.enumerate() if t not in before and not t.daemon]
    for t in left:
        t.join(max(0.0, deadline - time.monotonic()))
    left = [t for t in left if t.is_alive()]
    for t in left:
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(RunInterrupted))
    for t in left:
        t.join(timeout_s)
        if t.is_alive():
            logging.getLogger("fedlab").error("thread %s did not stop", t.name)
    return bool(left)

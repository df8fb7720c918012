"""The run directory's lock: one process at a time runs in a directory.

``<run dir>/.lock`` is locked with ``fcntl.flock`` and holds the holder's PID. The kernel drops the
lock when its process dies, so a run killed with ``kill -9`` leaves no stale lock behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path


class RunDirBusy(RuntimeError):
    """Another live process holds the lock on the run directory."""


_HELD: dict[str, int] = {}  # lock files held by this process -> nesting depth
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def hold_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory (``.lock``, fcntl) for the ``with`` block.

    The holder's PID is written into the lock file. The kernel drops the lock when its process
    dies, so a run killed with ``kill -9`` leaves no stale lock. Re-entrant within one process
    (the simulation holds it while its ServerApp thread asks for it again).

    Raises
    ------
    RunDirBusy
        At once, naming the holder's PID, when another process holds the lock.
    OSError
        Naming the path, when the directory cannot be created (e.g. ``out_dir`` is a file).
    """
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(20, f"{path} is an existing file, not a directory", str(path))
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path / ".lock"
    key = str(lock_path.resolve())
    with _HELD_GUARD:
        nested = key in _HELD
        if nested:
            _HELD[key] += 1
    if nested:
        try:
            yield
        finally:
            with _HELD_GUARD:
                _HELD[key] -= 1
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirBusy(f"{path} is in use by another run (PID {holder}); wait for it to end or "
                         f"choose another out_dir") from None
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        with _HELD_GUARD:
            _HELD[key] = 1
        yield
    finally:
        with _HELD_GUARD:
            _HELD.pop(key, None)
        os.close(fd)  # releases the flock

"""The run directory: config.yaml, metrics.csv, summary.json, checkpoints/, plots/.

Contract (users, plots, comparisons and tests rely on it):
- ``config.yaml``: the resolved config.
- ``metrics.csv``: one row per evaluated round; communication columns are cumulative.
- ``summary.json``: ``status`` (finished|diverged|failed|stopped), ``final.test_acc``,
  ``final.test_loss``, ``rounds``, ``comm.messages``, ``comm.bytes``, ``wall_time_s``, ...
- ``checkpoints/round_NNNN.pt``: global model + the server state needed to resume; its sha256 is in
  ``checkpoints.sha256`` (``sha256sum -c`` format), checked when it is loaded.
- ``.lock``: held (fcntl) by the process running in the directory; holds its PID.
Every write is atomic (temporary file + fsync + rename, the temporary file removed on failure) and
metrics rows are appended and fsynced as they come, so a crash loses at most the round in progress;
a row cut short by a crash has no line end and is never trusted. A failed write names its path.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from fedlab_app.atomic import atomic_write, json_default, sha256_hex
from fedlab_app.metrics_csv import (
    ends_with_newline,
    fmt_cell,
    is_number,
    last_round,
    read_header,
    round_of,
    scan_metrics,
)
from fedlab_app.runlock import RunDirBusy, hold_lock  # noqa: F401 (RunDirBusy: part of this module's API)

METRIC_COLUMNS = ["round", "wall_time_s", "sim_time_s", "lr", "clients", "local_steps", "failures", "train_loss", "train_acc",
                  "test_loss", "test_acc", "val_loss", "val_acc", "messages", "bytes", "messages_down",
                  "messages_up", "bytes_down", "bytes_up", "messages_p2p", "bytes_p2p", "consensus_dist", "avg_drift",
                  "node_acc_mean", "node_acc_min", "node_acc_max", "staleness_mean", "staleness_max"]
log = logging.getLogger("fedlab")


def default_out_dir(strategy: str, dataset: str) -> Path:
    """``$FEDLAB_RESULTS_DIR`` (default ``results/runs``) / ``<date>_<time>_<strategy>_<dataset>_<id>``."""
    root = Path(os.environ.get("FEDLAB_RESULTS_DIR", "results/runs"))
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return (root / f"{stamp}_{strategy}_{dataset}_{uuid.uuid4().hex[:4]}").resolve()


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self.plots_dir = self.path / "plots"
        self._pending_row: tuple[int, int] | None = None  # (round, file size before) of the last metrics row
        self._writing: tuple[threading.Thread, dict] | None = None  # a checkpoint written in the background

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def digests_path(self) -> Path:
        """``checkpoints.sha256``: one ``<sha256>  checkpoints/round_NNNN.pt`` line per checkpoint."""
        return self.path / "checkpoints.sha256"

    def create(self) -> None:
        """Create the directory tree."""
        for d in (self.path, self.ckpt_dir, self.plots_dir):
            d.mkdir(parents=True, exist_ok=True)

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """Hold an exclusive lock on the run directory for the ``with`` block (:func:`fedlab_app.runlock.hold_lock`)."""
        return hold_lock(self.path)

    # ---------------------------------------------------------------- config / summary
    def write_config(self, nested: dict) -> None:
        atomic_write(self.path / "config.yaml", yaml.safe_dump(nested, sort_keys=False).encode())

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def write_label_counts(self, counts: np.ndarray) -> None:
        """``label_counts.csv``: per client (row), the number of its training samples of each label (column)."""
        counts = np.asarray(counts, dtype=np.int64)
        lines = [",".join(["client", *map(str, range(counts.shape[1]))])]
        lines += [",".join(map(str, (i, *row))) for i, row in enumerate(counts.tolist())]
        atomic_write(self.path / "label_counts.csv", "".join(line + "\n" for line in lines).encode())

    def read_label_counts(self) -> np.ndarray | None:
        """The ``(clients, labels)`` counts of ``label_counts.csv``, or None where the run wrote none."""
        path = self.path / "label_counts.csv"
        if not path.is_file():
            return None
        rows = path.read_text().splitlines()[1:]
        return np.array([[int(v) for v in row.split(",")[1:]] for row in rows], dtype=np.int64).reshape(len(rows), -1)

    def write_summary(self, summary: dict) -> None:
        atomic_write(self.path / "summary.json", json.dumps(summary, indent=2, default=json_default).encode())

    def read_summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())

    # ---------------------------------------------------------------- metrics
    def append_metrics(self, row: dict[str, Any], columns: list[str] | None = None) -> None:
        """Append one row to metrics.csv, fsynced; the header is written with the first row.

        Parameters
        ----------
        row : dict
            Column -> number (None or missing: an empty cell).
        columns : list of str, optional
            The header of a new file (default ``METRIC_COLUMNS``); an existing file keeps its own.

        Raises
        ------
        ValueError
            For a key that is not a column of the header, or a value that is not a number.
        OSError
            Naming the file when it cannot be written; a partly written row is removed.
        """
        path = self.metrics_path
        size = path.stat().st_size if path.exists() else 0
        if size and not ends_with_newline(path, size):  # a half row left by a crash: never build on it
            log.warning("%s: dropping a half-written last line", path)
            size = path.read_bytes().rfind(b"\n") + 1
            os.truncate(path, size)
        header = read_header(path) if size else list(columns or METRIC_COLUMNS)
        if size and "round" in row and (last := last_round(path)) is not None and last >= int(row["round"]):
            log.warning("%s: dropping rows from round %d on, left by an earlier attempt", path, int(row["round"]))
            self.truncate_metrics(int(row["round"]) - 1)  # e.g. killed after a row, before its checkpoint
            size = path.stat().st_size
        if unknown := [k for k in row if k not in header]:
            raise ValueError(f"{path}: metrics key {unknown[0]!r} is not a column of the header ({', '.join(header)})")
        cells = [str(fmt_cell(row.get(k))) for k in header]
        if bad := next((k for k, c in zip(header, cells) if not is_number(c)), None):
            raise ValueError(f"{path}: metrics value {bad}={row[bad]!r} is not a number")
        data = ("" if size else ",".join(header) + "\r\n") + ",".join(cells) + "\r\n"
        with open(path, "ab") as f:
            try:
                f.write(data.encode())
                f.flush()
                os.fsync(f.fileno())
            except OSError as exc:
                f.truncate(size)
                raise OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}", str(path)) from exc
        self._pending_row = (int(float(cells[header.index("round")])), size) if "round" in header else None

    def read_metrics(self) -> list[dict[str, float]]:
        """metrics.csv as a list of rows of floats (NaN where a cell is empty).

        A half-written last line (no line end) is skipped with a warning; any other bad line raises a
        ValueError naming the file and the line.
        """
        if not self.metrics_path.exists():
            return []
        header, rows, partial = scan_metrics(self.metrics_path)
        if partial is not None:
            log.warning("%s, line %d: ignoring a half-written last line", self.metrics_path, partial[0])
        for lineno, cells, err in rows:
            if err:
                raise ValueError(f"{self.metrics_path}, line {lineno}: {err}")
        return [{k: float(v) if v != "" else float("nan") for k, v in zip(header, cells)} for _, cells, _ in rows]

    def truncate_metrics(self, last_round: int) -> None:
        """Keep the rows up to ``last_round`` (used on resume: later rounds are recomputed), atomically.

        Rows after ``last_round`` are dropped whatever their state (a crash may have cut the last one);
        rows up to it must be intact.

        Raises
        ------
        ValueError
            Naming the file and the line of a damaged row at or before ``last_round``.
        """
        path = self.metrics_path
        if not path.exists():
            return
        header, rows, partial = scan_metrics(path)
        keep, prev = [], 0
        for lineno, cells, err in rows + ([(*partial, "a half-written last line")] if partial else []):
            rnd = round_of(cells, header)
            if rnd is None or err:  # its round is unknown or its cells are bad: it is after prev
                if (rnd if rnd is not None else prev + 1) > last_round:
                    break
                raise ValueError(f"{path}, line {lineno}: {err or 'no round number'}; the run cannot resume "
                                 f"exactly from round {last_round}: repair or delete that line")
            if rnd > last_round:
                break
            keep.append(",".join(cells))
            prev = rnd
        atomic_write(path, "".join(line + "\r\n" for line in [",".join(header), *keep]).encode())
        self._pending_row = None

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, server_round: int, arrays: dict[str, np.ndarray], state: dict,
                        extra: dict | None = None, *, background: bool = False) -> Path:
        """Save the global model, JSON-able ``state`` and tensor-valued ``extra`` (e.g. an optimizer's
        state_dict) as ``checkpoints/round_NNNN.pt``, and its sha256 in ``checkpoints.sha256``.

        When the write fails (disk full), the temporary file is removed, the metrics row of this round
        (if it was the last one appended) is taken back, and an OSError naming the file is raised.

        ``background``: the checkpoint's bytes are made here, and a thread writes them, fsyncs them and records
        their digest while the caller goes on (the next round trains meanwhile: a checkpoint of 256 gossip
        nodes is 63 MB). The next save, or :meth:`wait_for_checkpoint`, waits for it first; if it failed,
        that raises its OSError, with this round's metrics row and any appended after it taken back. A crash
        before it is written leaves the previous checkpoint as the last one and a metrics row after it, which
        a resume drops, as for a crash between a row and its checkpoint.
        """
        self.wait_for_checkpoint()
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"round_{server_round:04d}.pt"
        buf = io.BytesIO()
        torch.save({"round": server_round, "arrays": {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
                    "state": json.dumps(state, default=json_default), "extra": extra or {}}, buf)
        data = buf.getbuffer()  # the bytes without a copy
        pending = self._pending_row if self._pending_row is not None and self._pending_row[0] == server_round else None
        if not background:
            try:
                self._place(path, data)
            except OSError:
                self._take_back(pending)
                raise
            return path
        job: dict = {"error": None, "pending": pending, "data": data}
        del data, buf  # the thread holds the only reference: the bytes are freed as soon as they are written

        def write() -> None:
            try:
                self._place(path, job.pop("data"))
            except BaseException as exc:  # noqa: BLE001 (raised by wait_for_checkpoint, in the caller's thread)
                job["error"] = exc

        thread = threading.Thread(target=write, name=f"fedlab-checkpoint-{server_round}")
        thread.start()
        self._writing = (thread, job)
        return path

    def wait_for_checkpoint(self, raise_error: bool = True) -> None:
        """Wait for the checkpoint being written in the background, if any; if its write failed, take its metrics
        row (and those after it) back and, with ``raise_error``, raise its error."""
        if self._writing is None:
            return
        thread, job = self._writing
        thread.join()
        self._writing = None
        if job["error"] is not None:
            self._take_back(job["pending"])
            if raise_error:
                raise job["error"]

    def _place(self, path: Path, data) -> None:
        """Write ``data`` as the checkpoint ``path`` and record its digest (a checkpoint is never left with a
        digest that may not match, nor without one)."""
        placed = False
        try:
            digests = self._read_digests()
            if digests.pop(path.name, None) is not None:  # never leave a digest that may not match
                self._write_digests(digests)
            atomic_write(path, data)
            placed = True
            digests[path.name] = sha256_hex(data)
            self._write_digests(digests)
        except BaseException:
            if placed:  # a checkpoint without its digest: drop it with its metrics row
                path.unlink(missing_ok=True)
            raise

    def _take_back(self, pending: tuple[int, int] | None) -> None:
        """No metrics row for a round without its checkpoint: cut metrics.csv back to before ``pending``'s row."""
        if pending is not None:
            os.truncate(self.metrics_path, pending[1])
            self._pending_row = None

    def _read_digests(self) -> dict[str, str]:
        if not self.digests_path.exists():
            return {}
        out = {}
        for line in self.digests_path.read_text().splitlines():
            digest, _, name = line.partition("  ")
            out[Path(name).name] = digest
        return out

    def _write_digests(self, digests: dict[str, str]) -> None:
        text = "".join(f"{d}  checkpoints/{n}\n" for n, d in sorted(digests.items()))
        atomic_write(self.digests_path, text.encode())

    def verify_checkpoint(self, path: str | Path) -> str | None:
        """None when ``path`` is intact, else why not (its sha256 differs, or it does not load)."""
        path = Path(path)
        digest = self._read_digests().get(path.name)
        try:
            data = path.read_bytes()
        except OSError as exc:
            return str(exc)
        if digest is not None:
            return None if sha256_hex(data) == digest else f"sha256 differs from {self.digests_path.name}"
        try:  # written before digests existed, or a crash came between the file and its digest
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (any decoding error means damaged)
            return f"{type(exc).__name__}: {exc}".strip(": ") or "unreadable"
        return None

    def last_checkpoint(self) -> Path | None:
        """Path of the intact checkpoint with the highest round, or None when there is no checkpoint.

        A damaged checkpoint (digest mismatch, truncated, empty) is skipped with a warning naming it.

        Raises
        ------
        ValueError
            When checkpoints exist but none is intact.
        """
        found = sorted(self.ckpt_dir.glob("round_*.pt")) if self.ckpt_dir.exists() else []
        broken = []
        for path in reversed(found):
            if (why := self.verify_checkpoint(path)) is None:
                return path
            log.warning("checkpoint %s is damaged (%s); falling back to an earlier one", path, why)
            broken.append(path.name)
        if broken:
            raise ValueError(f"{self.ckpt_dir}: no intact checkpoint (damaged: {', '.join(broken)})")
        return None

    @staticmethod
    def load_checkpoint(path: str | Path) -> tuple[int, dict[str, np.ndarray], dict, dict]:
        """Load ``(round, arrays, state, extra)`` from a checkpoint file, verified against its digest.

        Raises
        ------
        ValueError
            Naming the file when it is damaged.
        """
        path = Path(path)
        if (why := RunDir(path.parent.parent).verify_checkpoint(path)) is not None:
            raise ValueError(f"checkpoint {path} is damaged ({why})")
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arrays = {k: v.numpy() for k, v in ckpt["arrays"].items()}
        return int(ckpt["round"]), arrays, json.loads(ckpt["state"]), ckpt.get("extra", {})

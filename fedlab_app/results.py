"""The run directory: config.yaml, metrics.csv, summary.json, checkpoints/, plots/.

Contract (users, plots, comparisons and tests rely on it):
- ``config.yaml``: the resolved config.
- ``metrics.csv``: one row per evaluated round; communication columns are cumulative.
- ``summary.json``: ``status`` (finished|diverged|failed|stopped), ``final.test_acc``,
  ``final.test_loss``, ``rounds``, ``comm.messages``, ``comm.bytes``, ``wall_time_s``, ...
- ``checkpoints/round_NNNN.pt``: global model + the server state needed to resume.
Every write is atomic (temporary file + rename) and metrics rows are flushed as they come, so a
crash loses at most the round in progress.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

METRIC_COLUMNS = ["round", "wall_time_s", "sim_time_s", "lr", "clients", "local_steps", "failures", "train_loss", "train_acc",
                  "test_loss", "test_acc", "val_loss", "val_acc", "messages", "bytes", "messages_down",
                  "messages_up", "bytes_down", "bytes_up", "messages_p2p", "bytes_p2p", "consensus_dist", "avg_drift",
                  "node_acc_mean", "node_acc_min", "node_acc_max", "staleness_mean", "staleness_max"]


def default_out_dir(strategy: str, dataset: str) -> Path:
    """``$FEDLAB_RESULTS_DIR`` (default ``results/runs``) / ``<date>_<time>_<strategy>_<dataset>_<id>``."""
    root = Path(os.environ.get("FEDLAB_RESULTS_DIR", "results/runs"))
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    return (root / f"{stamp}_{strategy}_{dataset}_{uuid.uuid4().hex[:4]}").resolve()


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.ckpt_dir = self.path / "checkpoints"
        self.plots_dir = self.path / "plots"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.csv"

    def create(self) -> None:
        """Create the directory tree."""
        for d in (self.path, self.ckpt_dir, self.plots_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- config / summary
    def write_config(self, nested: dict) -> None:
        _atomic_write(self.path / "config.yaml", yaml.safe_dump(nested, sort_keys=False).encode())

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def write_summary(self, summary: dict) -> None:
        _atomic_write(self.path / "summary.json", json.dumps(summary, indent=2, default=_json_default).encode())

    def read_summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())

    # ---------------------------------------------------------------- metrics
    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one row to metrics.csv (header written on first use), flushed to disk."""
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: _fmt(row.get(k)) for k in METRIC_COLUMNS})
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, float]]:
        """metrics.csv as a list of rows of floats (NaN where a cell is empty)."""
        if not self.metrics_path.exists():
            return []
        with open(self.metrics_path, newline="") as f:
            return [{k: float(v) if v != "" else float("nan") for k, v in r.items()} for r in csv.DictReader(f)]

    def truncate_metrics(self, last_round: int) -> None:
        """Drop rows after ``last_round`` (used on resume: those rounds are recomputed)."""
        if not self.metrics_path.exists():
            return
        with open(self.metrics_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(float(r["round"])) <= last_round]
        self.metrics_path.unlink()
        for r in rows:
            self.append_metrics(r)

    # ---------------------------------------------------------------- checkpoints
    def save_checkpoint(self, server_round: int, arrays: dict[str, np.ndarray], state: dict,
                        extra: dict | None = None) -> Path:
        """Save the global model, JSON-able ``state`` and tensor-valued ``extra`` (e.g. an optimizer's
        state_dict) as ``checkpoints/round_NNNN.pt``."""
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        path = self.ckpt_dir / f"round_{server_round:04d}.pt"
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save({"round": server_round, "arrays": {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()},
                    "state": json.dumps(state, default=_json_default), "extra": extra or {}}, tmp)
        os.replace(tmp, path)
        return path

    def last_checkpoint(self) -> Path | None:
        """Path of the checkpoint with the highest round, or None."""
        found = sorted(self.ckpt_dir.glob("round_*.pt")) if self.ckpt_dir.exists() else []
        return found[-1] if found else None

    @staticmethod
    def load_checkpoint(path: str | Path) -> tuple[int, dict[str, np.ndarray], dict, dict]:
        """Load ``(round, arrays, state, extra)`` from a checkpoint file."""
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        arrays = {k: v.numpy() for k, v in ckpt["arrays"].items()}
        return int(ckpt["round"]), arrays, json.loads(ckpt["state"]), ckpt.get("extra", {})


def _fmt(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}" if abs(v) < 1e15 else repr(v)
    return v


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o)}")

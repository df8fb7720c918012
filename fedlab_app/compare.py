"""``fedlab compare RUN_DIR...``: put finished runs side by side as a table and plots.

Run directories are found recursively (a sweep folder works). The config keys whose values differ
between the runs label them; with ``--rows KEY --cols KEY`` (or when exactly two keys differ) the
table is a pivot of ``--metric`` (default ``final.test_acc``): e.g. batch size x optimizer for the
large-batch study. Diverged runs show as ``diverged`` (the studies' "no convergence").
Writes ``compare.csv``, ``compare.png`` (the metric against the row key, one line per column value)
and ``curves.png`` (test accuracy against rounds and against bytes sent) into ``--out``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from fedlab_app.config import flatten
from fedlab_app.results import RunDir

IGNORED_KEYS = {"out_dir", "resume", "verbose", "checkpoint_every", "stop_after", "eval.batch_size"}


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict
    metrics: list[dict]

    def get(self, key: str):
        """A config key (``client.batch_size``) or a summary field (``final.test_acc``, ``comm.bytes``)."""
        if key in self.config:
            return self.config[key]
        node = self.summary
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node


def load_runs(paths: list[str | Path]) -> list[Run]:
    """Every run directory (holding summary.json and config.yaml) at or below ``paths``."""
    found = []
    for p in map(Path, paths):
        for s in sorted([p / "summary.json"] if (p / "summary.json").exists() else p.rglob("summary.json")):
            rd = RunDir(s.parent)
            if (s.parent / "config.yaml").exists():
                found.append(Run(s.parent, flatten(rd.read_config()), rd.read_summary(), rd.read_metrics()))
    if not found:
        raise FileNotFoundError(f"no run directories (with summary.json and config.yaml) under {[str(p) for p in paths]}")
    return found


def varying_keys(runs: list[Run]) -> list[str]:
    """Config keys that differ between runs and are not implied by an earlier one, in config order.

    A key whose value is a function of an already kept key is dropped: in a sweep over
    ``optimizer`` x ``client.batch_size`` where each optimizer brings its own weight decay and lr,
    the keys are ``optimizer.name`` and ``client.batch_size``. Bookkeeping keys are ignored.
    """
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    kept: list[str] = []
    for k in keys:
        if k in IGNORED_KEYS or len({repr(r.config.get(k)) for r in runs}) < 2:
            continue
        implied = any(all(len({repr(r.config.get(k)) for r in runs if repr(r.config.get(j)) == v}) == 1
                          for v in {repr(r.config.get(j)) for r in runs}) for j in kept)
        if not implied:
            kept.append(k)
    return kept


def cell(run: Run, metric: str) -> str:
    """The table entry for ``run``: the metric, or the status when the run did not finish."""
    status = run.summary.get("status", "?")
    if status not in ("finished", "stopped"):
        return status
    v = run.get(metric)
    return "-" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def pivot(runs: list[Run], rows: str, cols: str, metric: str) -> tuple[list, list, dict]:
    """``(row values, column values, {(row, col): cell})``; later runs win on duplicates."""
    rv = sorted({r.config.get(rows) for r in runs}, key=_sort_key)
    cv = sorted({r.config.get(cols) for r in runs}, key=_sort_key)
    return rv, cv, {(r.config.get(rows), r.config.get(cols)): cell(r, metric) for r in runs}


def first_reaching(run: Run, target: float) -> dict | None:
    """The first metrics row whose test accuracy is at least ``target`` (None if never)."""
    return next((m for m in run.metrics if (m.get("test_acc") or 0.0) >= target), None)


def flat_table(runs: list[Run], keys: list[str], metric: str,
               target: float | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per run: the varying keys, the metric, rounds, messages, MB, simulated seconds, status;
    with ``target``: the round, messages and MB at which test accuracy first reached it."""
    header = [*keys, metric, "rounds", "messages", "MB", "sim_s", "status"]
    if target is not None:
        header += [f"round@{target:g}", f"messages@{target:g}", f"MB@{target:g}"]
    body = []
    for r in runs:
        row = [str(r.config.get(k)) for k in keys] + [
            cell(r, metric), str(r.summary.get("rounds")), str(r.get("comm.messages")),
            f"{(r.get('comm.bytes') or 0) / 1e6:.2f}", f"{r.summary.get('sim_time_s') or 0.0:.2f}",
            r.summary.get("status", "?")]
        if target is not None:
            hit = first_reaching(r, target)
            row += ([str(int(hit["round"])), str(int(hit["messages"])), f"{hit['bytes'] / 1e6:.2f}"] if hit
                    else ["-", "-", "-"])
        body.append(row)
    return header, body


def compare(paths: list[str], rows: str | None = None, cols: str | None = None, metric: str = "final.test_acc",
            out: str | None = None, console=None, flat: bool = False, target: float | None = None) -> Path:
    """Print the comparison and write compare.csv / compare.png / curves.png into ``out``; returns ``out``."""
    from rich.console import Console
    from rich.table import Table

    from fedlab_app import plots

    console = console or Console()
    runs = load_runs(paths)
    keys = varying_keys(runs)
    if rows is None and cols is None and len(keys) == 2 and not flat:  # the key with more values makes the rows
        rows, cols = sorted(keys, key=lambda k: -len({repr(r.config.get(k)) for r in runs}))
    out_dir = Path(out) if out else Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else Path(".")
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows and cols:
        rv, cv, cells = pivot(runs, rows, cols, metric)
        header = [f"{rows} \\ {cols}", *map(str, cv)]
        body = [[str(r), *(cells.get((r, c), "") for c in cv)] for r in rv]
        plots.plot_pivot(rv, cv, cells, rows, cols, metric, out_dir / "compare.png")
    else:
        header, body = flat_table(runs, keys, metric, target)
    with open(out_dir / "compare.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    plots.plot_curves([(", ".join(f"{k}={r.config.get(k)}" for k in keys) or r.path.name, r.metrics) for r in runs],
                      out_dir / "curves.png")
    table = Table(title=f"{metric} over {len(runs)} runs")
    for h in header:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)
    console.print(f"written: {out_dir / 'compare.csv'}, {out_dir / 'curves.png'}"
                  + (f", {out_dir / 'compare.png'}" if rows and cols else ""))
    return out_dir


def as_float(text: str) -> float:
    """A table cell as a number (NaN for statuses such as ``diverged``)."""
    try:
        return float(text)
    except ValueError:
        return math.nan

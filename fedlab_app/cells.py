"""The per-cell table of a reproduced study: one row per cell of its ``_reproduce`` block, seeds pooled.

``fedlab compare`` groups runs by the config keys that vary, which names a cell only indirectly (and by
one key where two vary together); this table keeps the study's own cell names, in the study's order:

    cell, n, diverged, failed, test_acc, val_acc, messages, MB, sim_s

each number ``mean ± 95% CI half-width`` over the seeds (Student t, ``fedlab_app.stats``). ``test_acc``
and ``val_acc`` are the final ones; a diverged run is counted in ``diverged`` and left out of the means
(its accuracy is that of a broken model), a run that failed or has no summary is counted in ``failed``.
Written as ``cells.csv`` (machine-readable, the numbers unrounded) and ``cells.md`` (a Markdown table).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path

from fedlab_app.stats import Stat, fmt, summarize

COLUMNS = ("test_acc", "val_acc", "messages", "MB", "sim_s")


def read_summary(run_dir: Path) -> dict:
    """A run's ``summary.json`` as a dict; ``{}`` when it is missing or unreadable."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _values(s: dict) -> dict[str, float]:
    final, comm = s.get("final") or {}, s.get("comm") or {}
    return {"test_acc": final.get("test_acc", math.nan), "val_acc": final.get("val_acc", math.nan),
            "messages": comm.get("messages", math.nan), "MB": comm.get("bytes", math.nan) / 1e6,
            "sim_s": s.get("sim_time_s", math.nan)}


def cell_stats(jobs: Iterable) -> list[dict]:
    """One dict per cell (in first-seen order): ``cell``, ``n``, ``diverged``, ``failed`` and a
    :class:`~fedlab_app.stats.Stat` per column of ``COLUMNS`` over the cell's finished runs.

    ``jobs`` are objects with ``cell`` and ``out_dir`` (``reproduce.Job``).
    """
    by_cell: dict[str, list[dict]] = {}
    for job in jobs:
        by_cell.setdefault(job.cell, []).append(read_summary(job.out_dir))
    rows = []
    for cell, summaries in by_cell.items():
        ok = [s for s in summaries if s.get("status") == "finished"]
        row = {"cell": cell, "n": len(summaries), "diverged": sum(s.get("status") == "diverged" for s in summaries),
               "failed": sum(s.get("status") not in ("finished", "diverged") for s in summaries)}
        vals = [_values(s) for s in ok]
        row.update({c: summarize(v[c] for v in vals) for c in COLUMNS})
        rows.append(row)
    return rows


def _digits(col: str) -> int:
    return 4 if col.endswith("acc") else (0 if col == "messages" else 2)


def write_cells(jobs: Iterable, out: Path) -> list[Path]:
    """Write ``out/cells.csv`` and ``out/cells.md``; returns their paths. Columns with no value in any
    cell (``val_acc`` without a validation split) or 0 in every cell (the messages of centralized
    training) are left out of the Markdown table."""
    rows, out = cell_stats(jobs), Path(out)
    with open(out / "cells.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["cell", "n", "diverged", "failed", *(f"{c}_{p}" for c in COLUMNS for p in ("mean", "ci95"))])
        for r in rows:
            w.writerow([r["cell"], r["n"], r["diverged"], r["failed"],
                        *(f"{x:.6g}" for c in COLUMNS for x in (r[c].mean, r[c].half))])
    shown = [c for c in COLUMNS if any(isinstance(r[c], Stat) and r[c].n and r[c].mean != 0 for r in rows)]
    lines = ["| cell | runs | diverged | " + " | ".join(shown) + " |", "|---" * (3 + len(shown)) + "|"]
    for r in rows:
        bad = f"{r['diverged']}" + (f" (+{r['failed']} failed)" if r["failed"] else "")
        lines.append(f"| {r['cell']} | {r['n']} | {bad} | "
                     + " | ".join(fmt(r[c], _digits(c)) for c in shown) + " |")
    (out / "cells.md").write_text("\n".join(lines) + "\n")
    return [out / "cells.csv", out / "cells.md"]

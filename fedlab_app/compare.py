"""``fedlab compare RUN_DIR...``: put finished runs side by side as a table and plots, seeds pooled.

Run directories are found recursively (a sweep folder works). Runs that differ only in ``seed`` form
a group; every number is given per group as the mean with its 95% Student-t confidence interval over
the seeds (``0.8512 ± 0.0123``; a single seed is shown as ``0.8512 (n=1)``, see ``stats.py``). The
config keys that differ between groups label them, in short form (``J=16``, ``matrix=ring``). With
``--rows KEY --cols KEY`` (or when exactly two keys differ) the table is a pivot of ``--metric``
(default ``final.test_acc``; ``best.test_acc`` is the best evaluated accuracy of the run); otherwise
one row per group: n, final and best accuracy, rounds, messages, MB, simulated seconds and, with
``--target``, the round, messages and MB at which test accuracy first reached the target. A group
whose runs all diverged reads ``diverged at round r`` (the studies' "NC").
Writes ``compare.csv`` (the table shown), ``groups.csv`` (the numbers: mean, std, CI half-width, n),
``curves.png`` (mean test accuracy with its CI band against rounds, messages, MB and simulated time)
and, for a pivot, ``compare.png`` into ``--out``.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from fedlab_app import compare_plots
from fedlab_app.config import flatten
from fedlab_app.results import RunDir
from fedlab_app.stats import Stat, fmt, summarize

IGNORED_KEYS = {"out_dir", "resume", "verbose", "checkpoint_every", "stop_after", "eval.batch_size"}
SEED_KEY = "seed"
OK_STATUSES = ("finished", "stopped")
SHORT = {"client.local_steps": "J", "client.local_epochs": "E", "client.batch_size": "B", "num_clients": "K",
         "strategy.fraction_train": "C"}
# (column, metrics.csv key, scale, digits) of the per-group table; MB are bytes * 1e-6
TOTALS = (("rounds", "summary.rounds", 1.0, 1), ("messages", "comm.messages", 1.0, 0), ("MB", "comm.bytes", 1e-6, 2),
          ("sim_s", "sim_time_s", 1.0, 2))


@dataclass
class Run:
    path: Path
    config: dict
    summary: dict
    metrics: list[dict]

    def get(self, key: str):
        """A config key (``client.batch_size``), a summary field (``final.test_acc``, ``comm.bytes``;
        ``summary.rounds`` for the rounds run rather than the configured ``rounds``) or ``best.test_acc``
        (the best evaluated test accuracy)."""
        if key.startswith("summary."):
            return self.summary.get(key.removeprefix("summary."))
        if key in self.config:
            return self.config[key]
        if key == "best.test_acc":
            accs = [m["test_acc"] for m in self.metrics if not math.isnan(m.get("test_acc", math.nan))]
            return max(accs) if accs else None
        node = self.summary
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    @property
    def ok(self) -> bool:
        return self.summary.get("status") in OK_STATUSES

    def outcome(self) -> str:
        """``finished``, ``diverged at round r`` or the status (failed, ...)."""
        status = self.summary.get("status", "?")
        if status != "diverged":
            return status
        r = self.summary.get("rounds") or (self.metrics[-1]["round"] if self.metrics else None)
        return "diverged" if r is None else f"diverged at round {int(r)}"


@dataclass
class Group:
    """Runs with the same config up to ``seed``; ``values`` holds the varying keys' values."""

    values: dict
    runs: list[Run] = field(default_factory=list)

    @property
    def ok_runs(self) -> list[Run]:
        return [r for r in self.runs if r.ok]

    def label(self, names: dict[str, str]) -> str:
        """``"J=16, matrix=ring"`` from the short ``names`` of the varying keys."""
        return ", ".join(f"{names[k]}={v}" for k, v in self.values.items())

    def stat(self, key: str) -> Stat:
        """Mean/std/CI of ``key`` (see :meth:`Run.get`) over the runs that did not diverge or fail."""
        return summarize(_num(r.get(key)) for r in self.ok_runs)

    def cell(self, key: str, digits: int = 4, scale: float = 1.0, label_n1: bool = True) -> str:
        """``mean ± half`` of ``key``, noting runs that did not finish; their outcome when none did."""
        bad = [r.outcome() for r in self.runs if not r.ok]
        if not self.ok_runs:
            return "; ".join(dict.fromkeys(bad))
        text = fmt(self.stat(key), digits, scale, label_n1)
        return text + (f" ({len(bad)} of {len(self.runs)}: {'; '.join(dict.fromkeys(bad))})" if bad else "")

    def outcome(self) -> str:
        """``finished`` when every run finished, else the count of each outcome."""
        counts: dict[str, int] = {}
        for r in self.runs:
            counts[r.outcome()] = counts.get(r.outcome(), 0) + 1
        return next(iter(counts)) if len(counts) == 1 else ", ".join(f"{n} {o}" for o, n in counts.items())


def _num(v) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


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


def varying_keys(runs: list[Run], exclude: tuple[str, ...] = (SEED_KEY,)) -> list[str]:
    """Config keys that differ between runs and are not implied by an earlier one, in config order.

    A key whose value is a function of an already kept key is dropped: in a sweep over
    ``optimizer`` x ``client.batch_size`` where each optimizer brings its own weight decay and lr,
    the keys are ``optimizer.name`` and ``client.batch_size``. Bookkeeping keys and ``exclude``
    (the seed: runs differing only in it are replicates of one group) are ignored.
    """
    keys = list(dict.fromkeys(k for r in runs for k in r.config))
    kept: list[str] = []
    for k in keys:
        if k in IGNORED_KEYS or k in exclude or len({repr(r.config.get(k)) for r in runs}) < 2:
            continue
        implied = any(all(len({repr(r.config.get(k)) for r in runs if repr(r.config.get(j)) == v}) == 1
                          for v in {repr(r.config.get(j)) for r in runs}) for j in kept)
        if not implied:
            kept.append(k)
    return kept


def short_names(keys: list[str]) -> dict[str, str]:
    """Short labels: ``client.local_steps`` -> ``J``, ``strategy.name`` -> ``strategy``,
    ``strategy.matrix`` -> ``matrix``; the full key where two short forms would clash."""
    short = {k: SHORT.get(k) or (k.rsplit(".", 2)[-2] if k.endswith(".name") else k.rsplit(".", 1)[-1])
             for k in keys}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clash else s) for k, s in short.items()}


def _sort_key(v):
    return (0, v, "") if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, 0, str(v))


def group_runs(runs: list[Run], keys: list[str]) -> list[Group]:
    """Runs grouped by their config without the seed (and bookkeeping keys), sorted by ``keys``' values."""
    groups: dict[str, Group] = {}
    for r in runs:
        ident = repr(sorted((k, repr(v)) for k, v in r.config.items() if k not in IGNORED_KEYS and k != SEED_KEY))
        groups.setdefault(ident, Group({k: r.config.get(k) for k in keys})).runs.append(r)
    return sorted(groups.values(), key=lambda g: [_sort_key(g.values[k]) for k in keys])


def first_reaching(run: Run, target: float) -> dict | None:
    """The first metrics row whose test accuracy is at least ``target`` (None if never)."""
    return next((m for m in run.metrics if (m.get("test_acc") or 0.0) >= target), None)


def target_cells(group: Group, target: float) -> list[str]:
    """Round, messages and MB at which test accuracy first reached ``target``: ``mean ± half`` over the
    runs that reached it, ``(k of n reached)`` when some did not, ``-`` when none did."""
    hits = [first_reaching(r, target) for r in group.runs]
    got = [h for h in hits if h]
    note = f" ({len(got)} of {len(hits)} reached)" if got and len(got) < len(hits) else ""
    return [fmt(summarize(h[col] for h in got), d, s, label_n1=False) + note if got else "-"
            for col, s, d in (("round", 1.0, int(len(got) > 1)), ("messages", 1.0, 0), ("bytes", 1e-6, 2))]


def flat_table(groups: list[Group], names: dict[str, str], metric: str = "final.test_acc",
               target: float | None = None) -> tuple[list[str], list[list[str]]]:
    """One row per group: the varying keys, n, final and best test accuracy (and ``metric``), rounds,
    messages, MB, simulated seconds, outcome; with ``target``: round, messages and MB to reach it."""
    accs = list(dict.fromkeys(["final.test_acc", "best.test_acc", metric]))
    header = [*names.values(), "n", *accs, *(t[0] for t in TOTALS), "status"]
    if target is not None:
        header += [f"round@{target:g}", f"messages@{target:g}", f"MB@{target:g}"]
    body = []
    for g in groups:
        row = [str(v) for v in g.values.values()] + [str(len(g.runs)), *(g.cell(a, label_n1=False) for a in accs)]
        whole = len(g.ok_runs) == 1  # a single run's rounds and messages are integers
        row += [g.cell(key, 0 if whole and s == 1.0 and key != "sim_time_s" else d, s, False) if g.ok_runs else "-"
                for _, key, s, d in TOTALS] + [g.outcome()]
        body.append(row + (target_cells(g, target) if target is not None else []))
    return header, body


def pivot(groups: list[Group], rows: str, cols: str, metric: str) -> tuple[list, list, dict]:
    """``(row values, column values, {(row, col): Group})``; later groups win on duplicates."""
    rv = sorted({g.values[rows] for g in groups}, key=_sort_key)
    cv = sorted({g.values[cols] for g in groups}, key=_sort_key)
    return rv, cv, {(g.values[rows], g.values[cols]): g for g in groups}


def group_numbers(groups: list[Group], names: dict[str, str]) -> tuple[list[str], list[list]]:
    """``groups.csv``: per group, n and the mean, std and CI half-width of each summary metric."""
    keys = ["final.test_acc", "best.test_acc", *(t[1] for t in TOTALS)]
    cols = ["final.test_acc", "best.test_acc", "rounds", "messages", "bytes", "sim_time_s"]
    header = [*names.values(), "n", "n_ok"] + [f"{k}_{s}" for k in cols for s in ("mean", "std", "ci95")]
    body = []
    for g in groups:
        stats = [g.stat(k) for k in keys]
        body.append([*g.values.values(), len(g.runs), len(g.ok_runs)]
                    + [f"{v:.6g}" for s in stats for v in (s.mean, s.std, s.half)])
    return header, body


def compare(paths: list[str], rows: str | None = None, cols: str | None = None, metric: str = "final.test_acc",
            out: str | None = None, console=None, flat: bool = False, target: float | None = None) -> Path:
    """Print the comparison and write compare.csv, groups.csv, curves.png (and compare.png) into ``out``."""
    console = console or Console()
    runs = load_runs(paths)
    keys = varying_keys(runs)
    groups = group_runs(runs, keys)
    names = short_names(keys)
    if rows is None and cols is None and len(keys) == 2 and not flat:  # the key with more values makes the rows
        rows, cols = sorted(keys, key=lambda k: -len({repr(r.config.get(k)) for r in runs}))
    out_dir = Path(out) if out else Path(paths[0]) if len(paths) == 1 and Path(paths[0]).is_dir() else Path(".")
    out_dir.mkdir(parents=True, exist_ok=True)
    if rows and cols:
        groups = group_runs(runs, list(dict.fromkeys([rows, cols, *keys])))
        rv, cv, cells = pivot(groups, rows, cols, metric)
        short = short_names([rows, cols])
        many = any(len(g.runs) > 1 for g in groups)  # else every cell is n=1, said once in the title
        header = [f"{short[rows]} \\ {short[cols]}", *map(str, cv)]
        body = [[str(r), *(cells[(r, c)].cell(metric, label_n1=many) if (r, c) in cells else "" for c in cv)]
                for r in rv]
        compare_plots.plot_pivot_ci(rv, cv, cells, short, rows, cols, metric, out_dir / "compare.png")
    else:
        header, body = flat_table(groups, names, metric, target)
    with open(out_dir / "compare.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *body])
    names = short_names(list(groups[0].values))
    with open(out_dir / "groups.csv", "w", newline="") as f:
        header, numbers = group_numbers(groups, names)
        csv.writer(f).writerows([header, *numbers])
    compare_plots.plot_group_curves(groups, names, out_dir / "curves.png")
    ns = sorted({len(g.runs) for g in groups})
    table = Table(title=f"{metric} over {len(runs)} runs in {len(groups)} groups (seeds per group: "
                        f"{', '.join(map(str, ns))}; mean ± 95% CI half-width)")
    for h in header:
        table.add_column(h)
    for row in body:
        table.add_row(*row)
    console.print(table)
    console.print(f"written: {out_dir / 'compare.csv'}, {out_dir / 'groups.csv'}, {out_dir / 'curves.png'}"
                  + (f", {out_dir / 'compare.png'}" if rows and cols else ""))
    return out_dir


def as_float(text: str) -> float:
    """A table cell's mean as a number (``0.85 ± 0.01`` -> 0.85; NaN for ``diverged at round 3``)."""
    m = re.match(r"\s*(-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", str(text))
    return float(m.group(1)) if m else math.nan

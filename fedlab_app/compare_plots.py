"""Figures of ``fedlab compare``: mean curves over seeds with 95% CI bands, and the pivot with error bars.

A group's curve is the mean test accuracy of its runs at the rounds that all of them evaluated, with a
shaded band of +- the 95% Student-t half-width (``stats.summarize``); a group with one run is drawn as
a plain line labelled ``(n=1)``, never with a zero-width band. A diverged run is drawn dashed up to its
last evaluation, ended by a cross and labelled ``diverged at round r``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedlab_app.stats import summarize  # noqa: E402

# x axes of the curves: (metrics.csv column, scale, label)
AXES = (("round", 1.0, "round (epoch when centralized)"), ("messages", 1.0, "cumulative messages"),
        ("bytes", 1e-6, "cumulative MB sent"), ("sim_time_s", 1.0, "simulated time (s)"))


def mean_curve(metrics: list[list[dict]], y: str = "test_acc") -> dict[str, np.ndarray]:
    """Average ``y`` over runs at the rounds that every run evaluated.

    Parameters
    ----------
    metrics : list of list of dict
        Each run's metrics.csv rows (``read_metrics``).
    y : str
        The column to average (default ``test_acc``).

    Returns
    -------
    dict
        ``round`` and the mean of every ``AXES`` column (shape (R,)), ``mean`` and ``half`` of ``y``
        (the 95% CI half-width, NaN when there is a single run) and ``n``.
    """
    by_run = [{int(r["round"]): r for r in rows if not math.isnan(r.get(y, math.nan))} for rows in metrics]
    common = sorted(set.intersection(*(set(d) for d in by_run))) if by_run else []
    out = {col: np.array([np.mean([d[t].get(col, math.nan) for d in by_run]) for t in common]) for col, _, _ in AXES}
    stats = [summarize(d[t][y] for d in by_run) for t in common]
    out.update(mean=np.array([s.mean for s in stats]), half=np.array([s.half for s in stats]),
               n=np.array(len(by_run)))
    return out


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_group_curves(groups, names: dict[str, str], path: Path) -> Path:
    """Mean test accuracy per group (CI band) against rounds, messages, MB and simulated time (2 x 2).

    Parameters
    ----------
    groups : list of compare.Group
        The groups to draw, one colour each.
    names : dict
        Short name of each varying key, for the legend (``J=16, matrix=ring``).
    path : Path
        Output PNG.
    """
    fig, axes = plt.subplots(2, 2, figsize=(13, 8.5))
    axes = axes.ravel()
    colors = plt.get_cmap("tab10" if len(groups) <= 10 else "tab20").colors
    for i, g in enumerate(groups):
        color, label = colors[i % len(colors)], g.label(names) or "all runs"
        ok = [r.metrics for r in g.ok_runs if r.metrics]
        if ok:
            c = mean_curve(ok)
            n = int(c["n"])
            text = f"{label} (n={n}, band: 95% CI)" if n > 1 else f"{label} (n=1)"
            for ax, (col, scale, _) in zip(axes, AXES):
                x = c[col] * scale
                ax.plot(x, c["mean"], marker="o", ms=2.5, color=color, label=text)
                if n > 1:
                    ax.fill_between(x, c["mean"] - c["half"], c["mean"] + c["half"], color=color, alpha=0.2, lw=0)
        for j, r in enumerate(run for run in g.runs if not run.ok and run.metrics):
            rows = [m for m in r.metrics if not math.isnan(m.get("test_acc", math.nan))]
            for ax, (col, scale, _) in zip(axes, AXES):
                xs, ys = [m.get(col, math.nan) * scale for m in rows], [m["test_acc"] for m in rows]
                ax.plot(xs, ys, ls="--", lw=1, color=color, label=f"{label}: {r.outcome()}" if j == 0 else None)
                if xs:
                    ax.plot(xs[-1:], ys[-1:], "x", ms=9, mew=2, color=color)
    for ax, (col, scale, xlabel) in zip(axes, AXES):
        ax.set(xlabel=xlabel, ylabel="test accuracy")
        ax.grid(alpha=0.3)
        xs = [x for line in ax.get_lines() for x in np.asarray(line.get_xdata(), float) if x > 0]
        if col != "round" and xs and max(xs) / min(xs) > 50:
            ax.set_xscale("log")
        if col == "round":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if col == "sim_time_s" and not xs:
            ax.text(0.5, 0.5, "no simulated time recorded", transform=ax.transAxes, ha="center", color="gray")
    if len(groups) <= 40:
        axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=1 + len(groups) // 20)
    return _save(fig, path)


def plot_pivot_ci(row_values, col_values, cells: dict, names: dict[str, str], rows: str, cols: str, metric: str,
                  path: Path) -> Path:
    """``metric`` against the row key, one line per column value, error bars = 95% CI over seeds.

    Groups with one run are drawn with hollow markers (no error bar); groups that did not finish as
    crosses at the bottom of the axis. ``cells`` maps ``(row value, column value)`` to a compare.Group.
    """
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row_values)
    xs = list(row_values) if numeric else list(range(len(row_values)))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for c in col_values:
        stats = [cells[(r, c)].stat(metric) if (r, c) in cells else summarize([]) for r in row_values]
        ys = [s.mean for s in stats]
        err = [s.half if s.n > 1 else 0.0 for s in stats]
        line = ax.errorbar(xs, ys, yerr=err, marker="o", ms=4, capsize=3, label=str(c))[0]
        single = [(x, s.mean) for x, s in zip(xs, stats) if s.n == 1]
        if single:
            ax.plot(*zip(*single), "o", ms=7, mfc="white", color=line.get_color())
        bad = [x for x, r in zip(xs, row_values) if (r, c) in cells and not cells[(r, c)].ok_runs]
        if bad:
            ax.plot(bad, [0.0] * len(bad), "x", color=line.get_color(), ms=8)
    if numeric and min(xs) > 0 and max(xs) / min(xs) >= 16:
        ax.set_xscale("log", base=2)
    if not numeric:
        ax.set_xticks(xs, [str(v) for v in row_values])
    ax.set(xlabel=names[rows], ylabel=metric,
           title=f"{metric} (bars: 95% CI; hollow: n=1; x: did not finish)")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    ax.legend(title=names[cols])
    return _save(fig, path)

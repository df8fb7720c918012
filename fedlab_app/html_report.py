"""``fedlab report PATH...``: one self-contained static HTML page for a run, a sweep or a comparison.

The page (rendered with Jinja2 from ``templates/report.html.j2``) holds the config keys that vary
between groups (short names as in ``fedlab compare``) and those common to all runs, the summary
table with 95% confidence intervals over seeds (one row per group, ``compare.flat_table``), the
comparison curves (mean and CI band against rounds, messages, MB and simulated time; a pivot when
two keys vary) and, per run, every ``plots/*.png`` of the run directory and its per-class
precision/recall/F1. Every image is embedded as a base64 ``data:`` URI and the CSS is inline: the
page needs no network and no other file, so it opens offline and can be mailed.
``screenshot`` renders the page to PNG with headless Chromium (Debian package ``chromium``).
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from fedlab_app import compare_plots
from fedlab_app.compare import (Group, Run, flat_table, group_runs, load_runs, pivot, short_names,
                                varying_keys)

TEMPLATES = Path(__file__).with_name("templates")
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# a quiet, offline, throw-away browser: no sandbox (containers run as root), no GPU, no network chatter
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def data_uri(path: str | Path) -> str:
    """The file as a ``data:image/png;base64,...`` (or ``image/svg+xml``) URI."""
    path = Path(path)
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def config_tables(runs: list[Run], keys: list[str], names: dict[str, str]) -> tuple[list, list]:
    """``(varying, fixed)``: ``(key, short name, "a, b, c")`` for each varying key and ``(key, value)``
    for each key with one value in every run (the seed is listed with the varying ones when it varies)."""
    all_keys = list(dict.fromkeys(k for r in runs for k in r.config))
    values = {k: list(dict.fromkeys(repr(r.config.get(k)) for r in runs)) for k in all_keys}
    shown = [*keys, *(["seed"] if len(values.get("seed", [])) > 1 else [])]
    varying = [(k, names.get(k, k), ", ".join(v.strip("'") for v in values[k])) for k in shown]
    fixed = [(k, runs[0].config.get(k)) for k in all_keys if len(values[k]) == 1]
    return varying, fixed


def summary_rows(groups: list[Group], names: dict[str, str], target: float | None) -> tuple[list, list]:
    """The summary table (``compare.flat_table``) as header and rows of ``{text, col, cls}`` cells."""
    header, body = flat_table(groups, names, target=target)
    nkeys = len(names)
    rows = [{"bad": any(not r.ok for r in g.runs),
             "cells": [{"text": t, "col": h, "cls": "num" if i >= nkeys else ""} for i, (h, t) in
                       enumerate(zip(header, row))]} for g, row in zip(groups, body)]
    return header, rows


def _run_entry(run: Run, group: Group, names: dict[str, str], root: Path) -> dict:
    try:
        name = str(run.path.resolve().relative_to(root))
    except ValueError:
        name = str(run.path)
    pc = run.summary.get("per_class") or {}
    per_class = list(zip(range(len(pc.get("f1", []))), pc.get("precision", []), pc.get("recall", []),
                         pc.get("f1", []), pc.get("support", []))) if pc else []
    plots = [{"src": data_uri(p), "caption": p.name} for p in sorted((run.path / "plots").glob("*.png"))]
    label = ", ".join(x for x in (group.label(names), f"seed={run.config.get('seed')}") if x)
    acc = run.get("final.test_acc")
    return {"name": name if name != "." else run.path.name, "label": label, "outcome": run.outcome(),
            "acc": acc if isinstance(acc, (int, float)) and acc == acc else None, "plots": plots,
            "per_class": per_class}


def build_report(paths: list[str], out: str | None = None, target: float | None = None,
                 title: str | None = None) -> Path:
    """Render the report page of the runs at or below ``paths``.

    Parameters
    ----------
    paths : list of str
        Run directories or folders holding them (a sweep, a study).
    out : str, optional
        Output HTML file (default: ``<path>/report.html`` for a single folder, else ``report.html``).
    target : float, optional
        Also report the round, messages and MB at which test accuracy first reached it.
    title : str, optional
        Page title (default: the paths).

    Returns
    -------
    Path
        The written page.
    """
    import jinja2

    runs = load_runs(paths)
    keys = varying_keys(runs)
    names = short_names(keys)
    groups = group_runs(runs, keys)
    single = len(paths) == 1 and Path(paths[0]).is_dir()
    out_path = Path(out) if out else (Path(paths[0]) / "report.html" if single else Path("report.html"))
    root = Path(os.path.commonpath([str(r.path.resolve()) for r in runs]))
    root = root.parent if len(runs) == 1 else root
    header, body = summary_rows(groups, names, target)
    varying, fixed = config_tables(runs, keys, names)
    comparison = []
    with tempfile.TemporaryDirectory() as tmp:
        if any(r.metrics for r in runs):
            compare_plots.plot_group_curves(groups, names, Path(tmp) / "curves.png")
            comparison.append({"src": data_uri(Path(tmp) / "curves.png"), "caption": "test accuracy per group "
                               "against rounds, messages, MB and simulated time (band: 95% CI over seeds)"})
        if len(keys) == 2:
            rows, cols = sorted(keys, key=lambda k: -len({repr(r.config.get(k)) for r in runs}))
            rv, cv, cells = pivot(groups, rows, cols, "final.test_acc")
            compare_plots.plot_pivot_ci(rv, cv, cells, names, rows, cols, "final.test_acc", Path(tmp) / "pivot.png")
            comparison.append({"src": data_uri(Path(tmp) / "pivot.png"),
                               "caption": f"final test accuracy by {names[rows]} and {names[cols]}"})
    entries = [_run_entry(r, g, names, root) for g in groups for r in g.runs]
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("report.html.j2").render(
        title=title or f"fedlab report: {', '.join(map(str, paths))}", sources=[str(p) for p in paths],
        generated=dt.datetime.now().strftime("%Y-%m-%d %H:%M"), runs=entries, groups=groups, varying=varying,
        fixed=fixed, header=header, body=body, comparison=comparison, open_runs=len(entries) <= 4)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(html, encoding="utf-8")
    return out_path


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary (``$FEDLAB_CHROMIUM`` first), or None."""
    candidates = [os.environ.get("FEDLAB_CHROMIUM", ""), *CHROMIUM_NAMES]
    return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)


def chromium_command(url: str, *args: str, user_data_dir: str) -> list[str]:
    """A headless Chromium command line for ``url`` with ``args`` (e.g. ``--dump-dom``)."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no Chromium found: apt-get install -y chromium (or set FEDLAB_CHROMIUM)")
    return [exe, *CHROMIUM_FLAGS, f"--user-data-dir={user_data_dir}", *args, url]


def screenshot(html: str | Path, png: str | Path, width: int = 1280, height: int = 1800, timeout: float = 120) -> Path:
    """Render the page ``html`` to ``png`` (``width`` x ``height`` pixels) with headless Chromium."""
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        cmd = chromium_command(Path(html).resolve().as_uri(), f"--window-size={width},{height}",
                               f"--screenshot={png}", user_data_dir=profile)
        subprocess.run(cmd, check=True, capture_output=True, timeout=timeout)
    if not png.exists():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png

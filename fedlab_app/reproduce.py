"""``fedlab reproduce STUDY``: run every job of a study, resumably, then write its table, plots and report.

A study is ``conf/experiment/<study>.yaml`` with a ``_reproduce`` block (keys starting with ``_`` never
reach the run's config) naming its cells, each a list of overrides on top of ``+experiment=<study>``::

    _reproduce:
      seeds: 3                 # default for --seeds: seeds 0 .. seeds-1 per cell
      target: 0.8              # optional: rounds / messages / MB to this test accuracy in the table
      title: Unequal local steps
      cells:
        plain_mean: [strategy=localsgd]
        wait_slowest: [system.budget=0, client.local_steps=32, rounds=3]

Job ``<cell>_seed<s>`` runs ``fedlab run +experiment=<study> <cell overrides> seed=<s>
out_dir=<out>/runs/<job> resume=true`` in its own process (log: ``<out>/logs/<job>.log``). A job whose
``summary.json`` says ``finished`` or ``diverged`` is skipped, so an interrupted reproduction resumes
without redoing finished runs; any other run (stopped, interrupted, failed, killed) continues from its
last checkpoint (``resume=true`` starts afresh when there is none). Once every job is done,
``fedlab compare`` (seeds pooled: mean ± 95% CI, diverged runs shown) writes ``compare.csv``,
``groups.csv`` and ``curves.png`` into ``<out>`` (default ``results/<study>``), ``cells.csv`` and
``cells.md`` hold one row per cell of the study (``fedlab_app.cells``), and ``fedlab report`` writes
``report.html`` and its screenshot ``report.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from omegaconf import OmegaConf

from fedlab_app.cells import read_summary, write_cells
from fedlab_app.compare import compare
from fedlab_app.compose import CONF_DIR
from fedlab_app.html_report import build_report, find_chromium, screenshot

DONE = ("finished", "diverged")
RUN_CMD = (sys.executable, "-c", "from fedlab_app.launch import main; main()", "run")  # the fedlab script
_LIVE: set[subprocess.Popen] = set()  # the jobs running now
_SIGNALLED: set[subprocess.Popen] = set()  # the running jobs that got their one SIGINT


@dataclass(frozen=True)
class Job:
    """One run of a study: its name (``<cell>_seed<s>``), run directory and ``fedlab run`` overrides."""

    name: str
    cell: str
    seed: int
    out_dir: Path
    overrides: tuple[str, ...]


def load_study(study: str, conf_dir: Path = CONF_DIR) -> dict:
    """The ``_reproduce`` block of ``<conf_dir>/experiment/<study>.yaml`` as a plain dict.

    Raises
    ------
    FileNotFoundError
        No such study file.
    ValueError
        The file has no ``_reproduce`` block with at least one cell.
    """
    path = Path(conf_dir) / "experiment" / f"{study}.yaml"
    if not path.is_file():
        have = sorted(p.stem for p in (Path(conf_dir) / "experiment").glob("*.yaml"))
        raise FileNotFoundError(f"no study {study!r}: {path} does not exist (studies: {', '.join(have)})")
    block = OmegaConf.to_container(OmegaConf.load(path)).get("_reproduce") or {}
    if not isinstance(block.get("cells"), dict) or not block["cells"]:
        raise ValueError(f"{path} has no _reproduce.cells block (cell name -> list of overrides)")
    return block


def plan_jobs(study: str, block: dict, seeds: int, out: Path, conf_dir: Path = CONF_DIR,
              extra: tuple[str, ...] = (), cells: str = "") -> list[Job]:
    """Every job of the study: each cell of ``block`` with seeds ``0 .. seeds-1``, cell by cell.

    Parameters
    ----------
    study : str
        The experiment name (``+experiment=<study>``).
    block : dict
        The study's ``_reproduce`` block (:func:`load_study`).
    seeds : int
        Seeds per cell.
    out : Path
        The study's results folder; runs go to ``out/runs/<job>``.
    conf_dir : Path
        Config folder holding ``experiment/<study>.yaml``; added to Hydra's search path when it is not
        fedlab's own ``conf/``.
    extra : tuple of str
        Overrides appended to every job (after the cell's).
    cells : str
        Comma-separated shell patterns of the cells to run (``"*_K4_*,fixed"``); empty: every cell.
    """
    search = () if Path(conf_dir).resolve() == CONF_DIR.resolve() else \
        (f"hydra.searchpath=[file://{Path(conf_dir).resolve()}]",)
    jobs = []
    patterns = [p.strip() for p in cells.split(",") if p.strip()]
    for cell, overrides in block["cells"].items():
        if patterns and not any(fnmatch.fnmatchcase(cell, p) for p in patterns):
            continue
        for seed in range(seeds):
            name = f"{cell}_seed{seed}"
            run_dir = Path(out) / "runs" / name
            ovr = (*search, f"+experiment={study}", *map(str, overrides or ()), f"seed={seed}",
                   f"out_dir={run_dir}", "resume=true", *extra)
            jobs.append(Job(name, cell, seed, run_dir, ovr))
    return jobs


def job_status(job: Job) -> str | None:
    """The status in the job's ``summary.json`` (``finished``, ``stopped``, ...), or None if there is none."""
    try:
        return json.loads((job.out_dir / "summary.json").read_text()).get("status")
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        return None


def run_job(job: Job, log_path: Path) -> int:
    """Run ``fedlab run <job overrides>`` in a new process, its output to ``log_path``; its exit code.

    The job runs in a session of its own, so that a terminal's Ctrl-C reaches only this process, which
    passes exactly one SIGINT on to every job in ``_LIVE`` (a second one would make ``fedlab run`` exit
    without stopping its Ray processes).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"\n# {time.strftime('%Y-%m-%d %H:%M:%S')} fedlab run {' '.join(job.overrides)}\n")
        log.flush()
        # RAY_ADDRESS=local: a Ray cluster of its own, even when another one runs on this machine (Ray would
        # otherwise join it and refuse the run's CPU count)
        env = {**os.environ, "RAY_ADDRESS": os.environ.get("RAY_ADDRESS", "local")}
        with subprocess.Popen([*RUN_CMD, *job.overrides], stdout=log, stderr=subprocess.STDOUT, env=env,
                              start_new_session=True) as proc:
            _LIVE.add(proc)
            try:
                return proc.wait()
            finally:
                _LIVE.discard(proc)
                _SIGNALLED.discard(proc)


def _interrupt_live() -> None:
    """Send SIGINT to every job still running: each saves its state and stops (``fedlab run`` on Ctrl-C)."""
    for proc in list(_LIVE):
        if proc not in _SIGNALLED:
            _SIGNALLED.add(proc)
            with contextlib.suppress(OSError):
                proc.send_signal(signal.SIGINT)


def run_jobs(jobs: list[Job], out: Path, *, max_jobs: int = 0, parallel: int = 1, runner=run_job,
             echo=print) -> tuple[list[Job], list[Job]]:
    """Run the jobs that are not done yet (at most ``max_jobs`` of them when > 0), ``parallel`` at a time.

    Prints one line per job: ``[i/n] skip <job> (finished)``, ``[i/n] start <job>`` and ``[i/n] <status>
    <job>: test_acc ... (s)``. Returns ``(ran, left)``: the jobs run now and those still not done
    afterwards. A Ctrl-C in a job (exit 130) or in this process stops the reproduction: no further job
    starts, the running ones get SIGINT and are waited for (each saves its checkpoint), then
    :class:`KeyboardInterrupt`.
    """
    n, todo = len(jobs), []
    for i, job in enumerate(jobs, 1):
        status = job_status(job)
        if status in DONE:
            echo(f"[{i}/{n}] skip {job.name} ({status})")
        else:
            todo.append((i, job))
            if status:
                echo(f"[{i}/{n}] {job.name} is {status}: continuing it from its last checkpoint")
    todo = todo[:max_jobs] if max_jobs > 0 else todo

    stop = threading.Event()  # set by a job's Ctrl-C (exit 130) or this process's: no job starts after it

    def one(item: tuple[int, Job]) -> int | None:
        i, job = item
        if stop.is_set():
            return None
        echo(f"[{i}/{n}] start {job.name}")
        t0 = time.monotonic()
        rc = runner(job, Path(out) / "logs" / f"{job.name}.log")
        summary = read_summary(job.out_dir)
        acc = (summary.get("final") or {}).get("test_acc")
        echo(f"[{i}/{n}] {summary.get('status', 'no summary')} {job.name}: exit {rc}"
             + (f", test_acc {acc:.4f}" if isinstance(acc, float) else "") + f" ({time.monotonic() - t0:.0f} s)")
        if rc == 130:
            stop.set()
            _interrupt_live()  # the other jobs running now (--jobs > 1) stop too
        return rc

    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    try:
        for future in [pool.submit(one, item) for item in todo]:
            future.result()
    except KeyboardInterrupt:  # Ctrl-C here: start nothing more, stop what runs, wait for it to save
        stop.set()
        _interrupt_live()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if stop.is_set():
        raise KeyboardInterrupt
    return [job for _, job in todo], [job for job in jobs if job_status(job) not in DONE]


def write_outputs(study: str, block: dict, out: Path, jobs: list[Job], echo=print) -> list[Path]:
    """``fedlab compare`` (flat table, seeds pooled) and ``fedlab report`` (+ screenshot) of the ``jobs``' runs."""
    runs, target = [str(j.out_dir) for j in jobs], block.get("target")
    compare(runs, out=str(out), flat=True, target=target)
    page = build_report(runs, str(Path(out) / "report.html"), target, block.get("title") or f"fedlab reproduce {study}")
    written = [Path(out) / f for f in ("compare.csv", "groups.csv", "curves.png")] + [page]
    written += write_cells(jobs, Path(out))
    if find_chromium() is None:
        echo("no Chromium found: report.png not rendered (apt-get install -y chromium)")
    else:
        written.append(screenshot(page, Path(out) / "report.png"))
    return written


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    """``fedlab reproduce STUDY [--seeds N] [--dry-run] [--max-jobs N] [--jobs N] [--out DIR] [key=value ...]``.

    Returns the exit code: 0 when every job is done (finished or diverged) and the outputs are written,
    1 when a job failed, 3 when jobs are left (``--max-jobs``), 2 for an unknown study, 130 on Ctrl-C.
    """
    ap = argparse.ArgumentParser(prog="fedlab reproduce", description=__doc__.split("\n\n")[0])
    ap.add_argument("study", help="name of conf/experiment/<study>.yaml (it needs a _reproduce block)")
    ap.add_argument("overrides", nargs="*", help="key=value appended to every job run now (e.g. stop_after=2)")
    ap.add_argument("--seeds", type=int, help="seeds per cell (default: the study's _reproduce.seeds, else 3)")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs, their state and commands; run nothing")
    ap.add_argument("--max-jobs", type=int, default=0, help="run at most N jobs now, leave the rest for later")
    ap.add_argument("--jobs", type=int, default=1, help="jobs run at the same time (default 1)")
    ap.add_argument("--out", help="results folder (default results/<study>)")
    ap.add_argument("--cells", default="", help="only these cells: comma-separated patterns, e.g. '*_K4_*' "
                    "(the table and report then show only their runs)")
    ap.add_argument("--conf", default=str(CONF_DIR), help="config folder holding experiment/<study>.yaml")
    args = ap.parse_intermixed_args(argv)  # overrides may come after the options
    try:
        block = load_study(args.study, Path(args.conf))
    except (FileNotFoundError, ValueError) as exc:
        print(f"fedlab reproduce: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out or Path("results") / args.study)
    seeds = args.seeds or int(block.get("seeds", 3))
    jobs = plan_jobs(args.study, block, seeds, out, Path(args.conf), tuple(args.overrides), args.cells)
    if not jobs:
        print(f"fedlab reproduce: no cell matches --cells {args.cells!r}", file=sys.stderr)
        return 2
    print(f"fedlab reproduce {args.study}: {len(jobs) // seeds} cells x {seeds} seeds = {len(jobs)} jobs -> {out}")
    if args.dry_run:
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job.name} ({job_status(job) or 'not started'}): fedlab run "
                  f"{' '.join(job.overrides)}")
        return 0
    main_thread = threading.current_thread() is threading.main_thread()
    old_term = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None  # kill: like Ctrl-C
    try:
        ran, left = run_jobs(jobs, out, max_jobs=args.max_jobs, parallel=args.jobs)
    except KeyboardInterrupt:
        print("fedlab reproduce: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, old_term)
    failed = [j for j in ran if job_status(j) in (None, "failed")]  # ran now: failed, or no summary at all
    if left:
        print(f"{len(left)} of {len(jobs)} jobs not done ({', '.join(j.name for j in left[:6])}"
              f"{', ...' if len(left) > 6 else ''}); run the same command again to continue")
        return 1 if failed else 3
    for path in write_outputs(args.study, block, out, jobs):
        print(f"written: {path}")
    return 0

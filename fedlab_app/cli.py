"""``fedlab`` command line.

    fedlab run [key=value ...]            one experiment (Hydra overrides, e.g. num_clients=20 partition=dirichlet)
    fedlab run --multirun k=a,b,c ...     a sweep, one run directory per combination
    fedlab plot RUN_DIR                   redraw a run's plots from its results files
    fedlab compare RUN_DIR... [--rows KEY --cols KEY | --flat [--target ACC]] [--metric final.test_acc] [--out DIR]
                                          runs side by side: a table (a pivot for two keys) and plots
    fedlab deploy up|run|status|down|certs|key|connect ...
                                          the same app on a real SuperLink and SuperNodes (`fedlab deploy --help`)
    fedlab report PATH... [--out FILE] [--target ACC] [--title TEXT] [--screenshot PNG]
                                          one self-contained HTML page: varying config, CI table, every plot
    fedlab landscape RUN_DIR... [--out DIR] [--grid N] [--samples N] [--filter-norm]
                                          loss contours on the trajectories' first two PCA axes (from checkpoints)
    fedlab reproduce STUDY [--seeds N] [--dry-run] [--max-jobs N] [--jobs N] [key=value ...]
                                          every job of conf/experiment/STUDY.yaml, resumably; table, plots, report
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

# Each command imports what it needs when it runs: ``fedlab deploy`` need not import torch and matplotlib,
# nor ``fedlab run`` Flower's SuperNode and the report's templates (a config error is refused sooner).

USAGE = __doc__


EXIT_CODES = {"finished": 0, "stopped": 0, "failed": 1, "config": 2, "diverged": 3, "interrupted": 130}


def _run_task(dcfg) -> str:
    """One Hydra job: compose -> validate -> simulate -> one-screen summary. Returns the run status.

    A config or preflight error exits with 2, an interrupted run (Ctrl-C) with 130 after one line
    saying how to resume (this also ends a sweep).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedlab_app import config, report
    from fedlab_app.simulate import PreflightError, simulate

    nested = config.from_hydra(dcfg)
    hydra_cfg = HydraConfig.get()
    if not nested.get("out_dir") and hydra_cfg.mode == RunMode.MULTIRUN:  # sweep job -> its folder in the sweep
        nested["out_dir"] = hydra_cfg.runtime.output_dir
    try:
        cfg = config.parse(config.flatten(nested))
        config.check_paths(cfg)  # resume: true, false or an existing run directory; out_dir not a file
    except config.ConfigError as exc:
        print(f"fedlab: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CODES["config"]) from None
    try:
        summary = simulate(cfg)
    except PreflightError as exc:
        print(f"fedlab: cannot start: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CODES["config"]) from None
    if summary.get("status") == "interrupted":
        print(f"fedlab: interrupted; round {summary.get('rounds', 0)} is the last one saved. Continue with: "
              f"{summary.get('resume')}", file=sys.stderr)
        raise SystemExit(EXIT_CODES["interrupted"])
    report.print_summary(summary)
    return summary.get("status", "failed")


def _hydra_main(argv: list[str]) -> int:
    import hydra

    from fedlab_app.compose import CONF_DIR, register_resolvers

    register_resolvers()

    statuses: list[str] = []

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def task(dcfg) -> None:
        statuses.append(_run_task(dcfg))

    sys.argv = [sys.argv[0], *argv]
    before = set(threading.enumerate())
    try:
        task()
    except SystemExit as exc:  # a config/preflight error or an interrupt: its code, once no thread is left
        return _no_threads_left(before, exc.code if isinstance(exc.code, int) else int(exc.code is not None))
    except KeyboardInterrupt:  # outside a run (composing the config, printing the summary)
        print("fedlab: interrupted", file=sys.stderr)
        return _no_threads_left(before, EXIT_CODES["interrupted"])
    codes = [EXIT_CODES.get(s, EXIT_CODES["failed"]) for s in statuses] or [EXIT_CODES["failed"]]
    return _no_threads_left(before, 1 if 1 in codes else max(codes))  # a failed run first, then diverged


def _no_threads_left(before: set, code: int, timeout_s: float = 10.0) -> int:
    """Return ``code`` once the non-daemon threads started since ``before`` have ended; if one is stuck,
    end the process with ``code`` (a failed run must never leave the command waiting)."""
    deadline, new = time.monotonic() + timeout_s, [t for t in threading.enumerate() if t not in before and not t.daemon]
    for t in new:
        t.join(max(0.0, deadline - time.monotonic()))
    if any(t.is_alive() for t in new):
        print("fedlab: a thread of the run did not stop; exiting anyway", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _compare(argv: list[str]) -> int:
    from fedlab_app.compare import compare

    ap = argparse.ArgumentParser(prog="fedlab compare", description="Compare finished runs.")
    ap.add_argument("paths", nargs="+", help="run directories or folders holding them (e.g. a sweep)")
    ap.add_argument("--rows", help="config key for the table's rows, e.g. client.batch_size")
    ap.add_argument("--cols", help="config key for the table's columns, e.g. optimizer.name")
    ap.add_argument("--metric", default="final.test_acc", help="summary field (default final.test_acc)")
    ap.add_argument("--out", help="where to write compare.csv and the plots (default: the single path, or .)")
    ap.add_argument("--flat", action="store_true", help="one row per run (rounds, messages, MB, sim time) even "
                    "when two keys vary")
    ap.add_argument("--target", type=float, help="also show the round, messages and MB at which test accuracy "
                    "first reached this value (flat table)")
    args = ap.parse_args(argv)
    if bool(args.rows) != bool(args.cols):
        ap.error("give both --rows and --cols, or neither")
    try:
        compare(args.paths, args.rows, args.cols, args.metric, args.out, flat=args.flat, target=args.target)
    except FileNotFoundError as exc:
        print(f"fedlab compare: {exc}", file=sys.stderr)
        return 2
    return 0


def _report(argv: list[str]) -> int:
    from fedlab_app.html_report import build_report, screenshot

    ap = argparse.ArgumentParser(prog="fedlab report", description="One self-contained HTML page of runs.")
    ap.add_argument("paths", nargs="+", help="run directories or folders holding them (a sweep, a study)")
    ap.add_argument("--out", help="HTML file (default: <path>/report.html for one folder, else ./report.html)")
    ap.add_argument("--target", type=float, help="also show rounds, messages and MB to reach this test accuracy")
    ap.add_argument("--title", help="page title")
    ap.add_argument("--screenshot", help="also render the page to this PNG with headless Chromium")
    args = ap.parse_args(argv)
    try:
        page = build_report(args.paths, args.out, args.target, args.title)
        print(page)
        if args.screenshot:
            print(screenshot(page, args.screenshot))
    except FileNotFoundError as exc:
        print(f"fedlab report: {exc}", file=sys.stderr)
        return 2
    return 0


def _landscape(argv: list[str]) -> int:
    from fedlab_app.landscape_io import run_landscape

    ap = argparse.ArgumentParser(prog="fedlab landscape", description="Loss landscape around runs' trajectories.")
    ap.add_argument("paths", nargs="+", help="run directories with checkpoints (one common PCA basis)")
    ap.add_argument("--out", help="folder for landscape.png/.json (default: the first run's plots/)")
    ap.add_argument("--grid", type=int, default=21, help="grid points per axis (default 21)")
    ap.add_argument("--samples", type=int, default=2000, help="training samples the loss is evaluated on")
    ap.add_argument("--filter-norm", action="store_true", help="filter-normalised directions (Li et al. 2018)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the training subset")
    args = ap.parse_args(argv)
    try:
        print(run_landscape(args.paths, args.out, args.grid, args.samples, args.filter_norm, seed=args.seed))
    except FileNotFoundError as exc:
        print(f"fedlab landscape: {exc}", file=sys.stderr)
        return 2
    return 0


def _reproduce(argv: list[str]) -> int:
    """``fedlab reproduce ...``: see :mod:`fedlab_app.reproduce`."""
    from fedlab_app import reproduce as reproduce_study

    return reproduce_study.main(argv)


def main() -> None:
    """Entry point of the ``fedlab`` script."""
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        raise SystemExit(0 if args else 2)
    cmd, rest = args[0], args[1:]
    if cmd == "run":
        raise SystemExit(_hydra_main(rest))
    if cmd == "plot":
        from fedlab_app.plots import plot_run
        from fedlab_app.results import RunDir

        for path in rest:
            for p in plot_run(RunDir(path)):
                print(p)
        raise SystemExit(0)
    if cmd == "compare":
        raise SystemExit(_compare(rest))
    if cmd == "report":
        raise SystemExit(_report(rest))
    if cmd == "landscape":
        raise SystemExit(_landscape(rest))
    if cmd == "deploy":
        from fedlab_app.deploy_cli import main as deploy_main

        raise SystemExit(deploy_main(rest))
    if cmd == "reproduce":
        raise SystemExit(_reproduce(rest))
    print(f"fedlab: unknown command {cmd!r}; allowed: run, plot, compare, report, landscape, deploy, reproduce\n{USAGE}", file=sys.stderr)
    raise SystemExit(2)

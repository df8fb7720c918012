"""ServerApp: run_config -> validated Config -> strategy -> round loop -> results files."""

from __future__ import annotations

import logging
import sys
import traceback
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedlab_app import config, driver
from fedlab_app.results import RunDir, default_out_dir

app = ServerApp()
log = logging.getLogger("fedlab")


def setup_logging() -> None:
    """Make fedlab's per-round progress lines visible (once per process)."""
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s fedlab %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def resolve_run_dir(cfg: config.Config) -> RunDir:
    """``resume=<path>`` -> that path; else ``out_dir``; else a new dated folder under results/runs."""
    if cfg.resume_requested and cfg.resume.lower() != "true":
        return RunDir(Path(cfg.resume))
    return RunDir(cfg.out_dir or default_out_dir(cfg.strategy.name, cfg.dataset.name))


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point of the ServerApp (simulation and deployment alike)."""
    setup_logging()
    cfg = config.parse(context.run_config, strict=False)
    config.check_paths(cfg)  # this machine's paths: a resume directory that exists, an out_dir that is no file
    run_dir = resolve_run_dir(cfg)
    with run_dir.lock():  # already held by this process under `fedlab run`; taken here under `flwr run`
        record_failure(run_dir, lambda: driver.run(cfg, grid, run_dir))


def record_failure(run_dir: RunDir, fn):
    """Call ``fn()``; on an exception write ``summary.json`` with ``status: failed`` and re-raise."""
    log.info("run directory: %s", run_dir.path)
    try:
        return fn()
    except BaseException as exc:
        run_dir.create()
        summary = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                   "traceback": traceback.format_exc(), "out_dir": str(run_dir.path)}
        run_dir.write_summary(summary)
        raise

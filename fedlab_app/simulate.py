"""Run the Flower app on Flower's simulation engine, in this process (what ``fedlab run`` does).

This is what ``flwr run .`` does under the hood (``flwr-simulation`` calls the same
``_run_simulation``), without a background SuperLink: the ServerApp runs in a thread, the
ClientApps in Ray actors, and every context gets the same flat run_config. ``_run_simulation`` is
private Flower API, hence the ``flwr<1.42`` pin; ``tests/test_app_smoke.py`` guards it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from pathlib import Path

from fedlab_app import config
from fedlab_app.results import RunDir

APP_DIR = Path(__file__).resolve().parents[1]  # holds pyproject.toml with [tool.flwr.app.config]


class PreflightError(RuntimeError):
    """The run cannot start: its data set is missing or cannot be split as configured."""


def preflight(cfg: config.Config) -> None:
    """Load the data set and build the shards before anything starts (and warm the caches).

    Catches what config validation alone cannot: a missing data set, more clients than samples, a
    partition scheme that cannot give every client ``partition.min_size`` samples.
    """
    from fedlab_app.splits import make_splits

    try:
        make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    except (FileNotFoundError, ValueError) as exc:
        raise PreflightError(str(exc)) from exc


def simulate(cfg: config.Config) -> dict:
    """Simulate ``cfg`` with ``cfg.num_clients`` virtual SuperNodes; returns the run's summary.json content.

    Raises :class:`PreflightError` before starting anything if the data cannot be loaded or split.
    ``out_dir`` is fixed here (a new dated folder when empty) so that the caller knows where the
    results are; a failed run is reported through ``summary["status"] == "failed"``.
    """
    preflight(cfg)
    from strategies import REGISTRY

    if (direct := REGISTRY[cfg.strategy.name].run) is not None:  # a mode without Flower
        return _run_direct(cfg, direct)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    from flwr.app import Context, RecordDict
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.constant import NOOP_FEDERATION_ID
    from flwr.supercore.run import Run
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.supercore.telemetry import EventType

    from fedlab_app import server_app

    run_dir = server_app.resolve_run_dir(cfg)
    cfg = dataclasses.replace(cfg, out_dir=str(run_dir.path))
    run_config = config.to_run_config(cfg)
    run = Run.create_empty(run_id=secrets.randbits(63))
    run.override_config = run_config
    run.primary_task_id = secrets.randbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    backend_config = {
        "client_resources": {"num_cpus": cfg.sim.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False,
                      "logging_level": logging.INFO if cfg.verbose else logging.ERROR},
    }
    quiet = logging.getLogger("flwr")
    old_level = quiet.level
    if not cfg.verbose:
        quiet.setLevel(logging.WARNING)
    server_app.setup_logging()
    try:
        _run_simulation(num_supernodes=cfg.num_clients, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app_attr="fedlab_app.client_app:app", server_app_attr="fedlab_app.server_app:app",
                        backend_config=backend_config, server_app_context=context, app_dir=str(APP_DIR),
                        is_app=True, run=run, verbose_logging=cfg.verbose)
    except Exception as exc:  # the ServerApp has already written summary.json with status=failed
        logging.getLogger("fedlab").error("simulation failed: %s", exc)
    finally:
        quiet.setLevel(old_level)
    try:
        return RunDir(run_dir.path).read_summary()
    except FileNotFoundError:
        return {"status": "failed", "error": "the run wrote no summary.json", "out_dir": str(run_dir.path)}


def _run_direct(cfg: config.Config, run_fn) -> dict:
    """Run a non-Flower mode in this process with the same results handling as the ServerApp."""
    from fedlab_app import server_app

    server_app.setup_logging()
    run_dir = server_app.resolve_run_dir(cfg)
    cfg = dataclasses.replace(cfg, out_dir=str(run_dir.path))
    try:
        return server_app.record_failure(run_dir, lambda: run_fn(cfg, run_dir))
    except Exception as exc:  # recorded in summary.json; a sweep goes on with its next run
        logging.getLogger("fedlab").error("run failed: %s", exc)
        return run_dir.read_summary()

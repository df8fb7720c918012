"""Run the Flower app on Flower's simulation engine, in this process (what ``fedlab run`` does).

This is what ``flwr run .`` does under the hood (``flwr-simulation`` calls the same
``_run_simulation``), without a background SuperLink: the ServerApp runs in a thread, the
ClientApps in Ray actors, and every context gets the same flat run_config. ``_run_simulation`` is
private Flower API, hence the ``flwr<1.42`` pin; ``tests/test_app_smoke.py`` guards it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from flwr.app import Context, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

import strategies
from fedlab_app import config, driver, ray_start, server_app, sim_waits
from fedlab_app.interrupt import INTERRUPTED_EXIT, _first_sigint_raises, _stop_threads
from fedlab_app.recorder import LoopState, make_summary
from fedlab_app.results import RunDir, RunDirBusy
from fedlab_app.splits import make_splits

APP_DIR = Path(__file__).resolve().parents[1]  # holds pyproject.toml with [tool.flwr.app.config]


class PreflightError(RuntimeError):
    """The run cannot start: its data set is missing or cannot be split as configured, its resources
    exceed the machine, or its run directory is unusable or in use by another run."""


__all__ = ["APP_DIR", "INTERRUPTED_EXIT", "PreflightError", "preflight", "simulate"]


def preflight(cfg: config.Config, simulation: bool = False) -> None:
    """Check what config validation alone cannot, before anything starts (and warm the data caches).

    A missing data set, more clients than samples, a partition scheme that cannot give every client
    ``partition.min_size`` samples, and (``simulation``: on Flower's simulation engine)
    ``sim.cpus_per_client`` above this machine's cores: Ray would never place a client and the run
    would wait forever.
    """
    try:
        config.check_paths(cfg)
    except config.ConfigError as exc:
        raise PreflightError(str(exc)) from None
    cores = os.cpu_count() or 1
    if simulation and not cfg.sim.ray_address and not cfg.sim.cpus_per_client <= cores:  # a cluster: Ray says
        raise PreflightError(f"sim.cpus_per_client={cfg.sim.cpus_per_client} is more than this machine's "
                             f"{cores} cores (os.cpu_count()); allowed: a number in (0, {cores}]")
    try:
        make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    except (FileNotFoundError, ValueError) as exc:
        raise PreflightError(str(exc)) from exc


@contextlib.contextmanager
def _locked(run_dir: RunDir) -> Iterator[None]:
    """``run_dir.lock()``, its refusals raised as :class:`PreflightError`."""
    try:
        ctx = run_dir.lock()
        ctx.__enter__()
    except RunDirBusy as exc:
        raise PreflightError(str(exc)) from None
    except OSError as exc:
        raise PreflightError(f"out_dir={str(run_dir.path)!r} cannot be used: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        ctx.__exit__(None, None, None)


def simulate(cfg: config.Config) -> dict:
    """Simulate ``cfg`` with ``cfg.num_clients`` virtual SuperNodes; returns the run's summary.json content.

    Raises :class:`PreflightError` before starting anything if the data cannot be loaded or split,
    the resources exceed the machine, or another process holds the run directory's lock (held here
    for the whole run). ``out_dir`` is fixed here (a new dated folder when empty) so that the caller
    knows where the results are; a failed run is reported through ``summary["status"] == "failed"``,
    a Ctrl-C through ``"interrupted"`` (the clients and the ServerApp stopped, resumable).
    """
    run_dir = server_app.resolve_run_dir(cfg)
    cfg = dataclasses.replace(cfg, out_dir=str(run_dir.path),
                              sim=dataclasses.replace(cfg.sim, clients_per_worker=clients_per_worker(cfg)))
    spec = strategies.REGISTRY[cfg.strategy.name]
    direct = driver.run if spec.mode is not None and not spec.mode.uses_nodes else None  # a mode without Flower
    with _locked(run_dir), _first_sigint_raises():
        try:
            preflight(cfg, simulation=direct is None)
            if direct is not None:
                ray_start.discard()  # the fedlab script may have started Ray: this mode does not use it
                return _run_direct(cfg, run_dir, direct)
            return _run_flower(cfg, run_dir)
        except KeyboardInterrupt:
            return _write_interrupted(run_dir, cfg)


MAX_AUTO_PACKING = 64


def clients_per_worker(cfg: config.Config) -> int:
    """How many virtual clients one simulated node holds and trains together (``sim.clients_per_worker``).

    Auto (0): the synchronous strategies, gossip and asynchronous SGD on the virtual clock spread
    ``num_clients`` over as many nodes as Ray can run at once (cores / ``sim.cpus_per_client``), so that
    each worker trains its clients in one fused computation per round (``clients/fused.py``; async: per
    batch of jobs sent together, ``strategies/async_mode.py``); asynchronous SGD on the real clock (whose
    workers run on their own clocks), the centralized baseline and a run on a Ray cluster
    (``sim.ray_address``, whose cores this machine cannot see) keep one client per node. Where nodes
    reply with one model per client (gossip, asynchronous SGD, Flower's FedAdam/FedYogi/FedAvgM), at most ``MAX_AUTO_PACKING`` clients per node: a message and its
    reply then stay small (64 LeNet-5 models: 16 MB), so that neither a worker nor the server holds half
    the federation's models in one message, and fusing more than that gains nothing (``train_fused``
    trains groups of 8). Where nodes reply with block sums (the FedAvg family, ``strategies/blocks.py``)
    a reply is one model's sums whatever the count, so there is no cap: fewer messages per round.
    """
    if cfg.sim.clients_per_worker:
        return cfg.sim.clients_per_worker
    spec = strategies.REGISTRY[cfg.strategy.name]
    if not strategies.packs(cfg) or cfg.sim.ray_address:  # a cluster: spread them
        return 1
    workers = ray_start.actors_at_once(cfg.sim.cpus_per_client)
    per_worker = math.ceil(cfg.num_clients / workers)
    block_sums = spec.mode is None and spec.build(cfg).block_rule() is not None
    return max(1, per_worker if block_sums else min(per_worker, MAX_AUTO_PACKING))


def ray_init_args(cfg: config.Config) -> dict:
    """What Flower's RayBackend passes to ``ray.init``: a private instance with this machine's cores, or
    (``sim.ray_address``) the address of a running cluster, whose nodes bring their own resources
    (``ray.init`` refuses ``num_cpus`` when it joins one).

    Joining a cluster, Flower sizes its actor pool from every node's CPUs, and each Ray worker gets
    this process's ``sys.path`` as ``PYTHONPATH``: every machine needs the project at the same path.
    """
    if cfg.sim.ray_address:
        return {**ray_start.common_init_args(cfg.verbose), "address": cfg.sim.ray_address}
    return ray_start.private_init_args(cfg.verbose)


def _run_flower(cfg: config.Config, run_dir: RunDir) -> dict:
    """Run ``cfg`` on Flower's simulation engine in this process; always returns with no thread left."""
    ray_start.set_worker_env()
    from flwr.simulation.run_simulation import (
        _run_simulation,  # starts Ray: imported only when simulating
    )

    sim_waits.shorten()  # Flower's 0.1 s polls between the ServerApp and the actors
    run_config = config.to_run_config(cfg)
    run = Run.create_empty(run_id=secrets.randbits(63))
    run.override_config = run_config
    run.primary_task_id = secrets.randbits(63)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)
    backend_config = {"client_resources": {"num_cpus": cfg.sim.cpus_per_client, "num_gpus": 0.0},
                      "init_args": ray_init_args(cfg)}
    quiet = logging.getLogger("flwr")
    old_level = quiet.level
    if not cfg.verbose:
        quiet.setLevel(logging.WARNING)
    server_app.setup_logging()
    before, error = set(threading.enumerate()), None
    try:
        if not cfg.sim.ray_address:  # a cluster is left to Flower: its machines need the runtime environment
            ray_start.start(backend_config["init_args"])
        _run_simulation(num_supernodes=math.ceil(cfg.num_clients / cfg.sim.clients_per_worker), exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
                        client_app_attr="fedlab_app.client_app:app", server_app_attr="fedlab_app.server_app:app",
                        backend_config=backend_config, server_app_context=context, app_dir=str(APP_DIR),
                        is_app=True, run=run, verbose_logging=cfg.verbose)
    except KeyboardInterrupt:  # Flower has stopped the clients (Ray); the ServerApp thread waits on
        _stop_threads(before)  # replies that will never come
        raise
    except Exception as exc:  # the ServerApp may still wait for replies: stop it, then record the failure
        logging.getLogger("fedlab").error("simulation failed: %s", exc)
        error = exc
    finally:
        quiet.setLevel(old_level)
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():  # Flower shuts Ray down unless it failed before its backend
            ray.shutdown()
    stuck = _stop_threads(before)
    summary = _read_summary(run_dir)
    if stuck or (error is not None and summary.get("status") != "failed"):
        why = f"{type(error).__name__}: {error}" if error else "the simulation engine stopped before the ServerApp"
        summary = {**summary, "status": "failed", "error": why, "out_dir": str(run_dir.path)}
        summary.pop("traceback", None)
        run_dir.write_summary(summary)
    return summary


def _run_direct(cfg: config.Config, run_dir: RunDir, run_fn) -> dict:
    """Run a non-Flower mode in this process with the same results handling as the ServerApp."""
    server_app.setup_logging()
    try:
        return server_app.record_failure(run_dir, lambda: run_fn(cfg, None, run_dir))
    except KeyboardInterrupt:
        return _write_interrupted(run_dir, cfg)
    except Exception as exc:  # recorded in summary.json; a sweep goes on with its next run
        logging.getLogger("fedlab").error("run failed: %s", exc)
        return run_dir.read_summary()


def _read_summary(run_dir: RunDir) -> dict:
    try:
        return run_dir.read_summary()
    except FileNotFoundError:
        return {"status": "failed", "error": "the run wrote no summary.json", "out_dir": str(run_dir.path)}


def _write_interrupted(run_dir: RunDir, cfg: config.Config) -> dict:
    """Write summary.json with ``status: interrupted``, as of the last round saved (a checkpoint)."""
    rnd, state = 0, LoopState()
    try:
        if (ckpt := run_dir.last_checkpoint()) is not None:
            rnd, _, saved, _ = RunDir.load_checkpoint(ckpt)
            state = LoopState.from_json(saved)
    except (ValueError, KeyError, TypeError):  # damaged checkpoints: a resume will say so
        pass
    try:
        last = [r for r in run_dir.read_metrics() if r["round"] <= rnd][-1:]
    except ValueError:
        last = []
    final = {k: v for k, v in (last[0] if last else {}).items() if k.startswith(("test_", "val_")) and v == v}
    summary = {"out_dir": str(run_dir.path), **make_summary(cfg, state, final, "interrupted"), "rounds": rnd,
               "resume": f"fedlab run out_dir={run_dir.path} resume=true"}
    summary["final"]["round"] = rnd
    run_dir.write_summary(summary)
    return summary

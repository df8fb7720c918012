"""The server's round loop: configure -> send/receive (counted) -> aggregate -> record.

Flower's ``Strategy.start`` runs a fixed loop; this one adds what a lab needs around the same
strategy calls: the round's learning rate in the train config, communication accounting,
simulated time, and (through :class:`~fedlab_app.recorder.Recorder`) evaluation, checkpoints,
resume, divergence detection and the results files.
"""

from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
from flwr.app import ConfigRecord

from clients.schedule import lr_at, scaled_lr
from fedlab_app import plots
from fedlab_app.comm import CountingGrid
from fedlab_app.config import Config
from fedlab_app.models import build_model
from fedlab_app.partition import label_counts
from fedlab_app.planner import RoundPlanner
from fedlab_app.recorder import Recorder
from fedlab_app.results import RunDir
from fedlab_app.splits import make_splits
from strategies.fedavg import to_numpy, to_record

log = logging.getLogger("fedlab")
NODE_WAIT_S = 60.0  # how long the server waits for num_clients nodes to connect


def initial_arrays(cfg: Config) -> dict[str, np.ndarray]:
    """The seeded initial global model as ``{name: array}``."""
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    model = build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes, seed=cfg.seed)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def wait_for_nodes(grid, num_clients: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    """Wait until ``num_clients`` nodes are connected (simulated nodes register after the ServerApp starts).

    Raises a clear error if the federation is larger than ``num_clients`` or stays smaller for ``timeout_s``.
    """
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) > num_clients:
            raise ValueError(f"the federation has {len(nodes)} nodes but num_clients={num_clients}; make them equal "
                             f"(with `flwr run`: --federation-config \"num-supernodes={num_clients}\")")
        if len(nodes) == num_clients:
            return nodes
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"only {len(nodes)} of num_clients={num_clients} nodes connected within {timeout_s:.0f} s "
                               f"(with `flwr run`: --federation-config \"num-supernodes={num_clients}\")")
        time.sleep(0.2)


def run(cfg: Config, grid, strategy, run_dir: RunDir) -> dict:
    """Run ``cfg.rounds`` rounds of ``strategy`` over ``grid``, writing into ``run_dir``; returns the summary."""
    rec = Recorder(cfg, run_dir, cfg.rounds, "round")
    arrays, extra = rec.start()
    arrays = arrays if arrays is not None else initial_arrays(cfg)
    base_lr = scaled_lr(cfg.client.lr, cfg.client.batch_size, cfg.schedule)
    planner = RoundPlanner(cfg, base_lr)
    strategy.load_state(tree_numpy(extra.get("strategy", {})))
    planner.load_state(extra.get("planner", {}))
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    plots.plot_label_distribution(label_counts(s.data.y_train, list(s.parts), s.data.num_classes),
                                  run_dir.plots_dir / "label_distribution.png",
                                  f"{cfg.dataset.name}, partition={cfg.partition.name}: labels per client")
    wait_for_nodes(grid, cfg.num_clients)
    cgrid = CountingGrid(grid, rec.state.ledger)
    for rnd in range(rec.state.server_round + 1, cfg.rounds + 1):
        lr = lr_at(rnd - 1, cfg.rounds, base_lr, cfg.schedule)
        steps = planner.steps(rnd, lr)
        train_cfg = ConfigRecord({"lr": lr, "local-epochs": cfg.client.local_epochs, "local-steps": steps})
        replies = cgrid.send_and_receive(strategy.configure_train(rnd, to_record(arrays), train_cfg, cgrid))
        ok = [r for r in replies if not r.has_error()]
        rec.state.failures += len(replies) - len(ok)
        for r in replies:
            if r.has_error():  # a node that died (Node Unavailable) or whose ClientApp raised: logged, counted, skipped
                node = cgrid.name_of(r)
                reason = (r.error.reason or f"error code {r.error.code}").strip()[-500:]
                log.warning("round %d: node %s failed (the round goes on without it): %s", rnd, node, reason)
                rec.state.failure_events.append({"round": rnd, "node": str(node), "reason": reason})
        new, metrics = strategy.aggregate_train(rnd, replies)
        if new is None:
            raise RuntimeError(f"round {rnd}: no client returned a result ({len(replies)} errors): "
                               + "; ".join((r.error.reason or "")[:200] for r in replies if r.has_error()))
        arrays = to_numpy(new)
        reply_metrics = [dict(r.content["metrics"]) for r in ok]
        rec.state.sim_time_s += planner.round_time(reply_metrics, cgrid.last_bytes)
        if cfg.eval.fraction_clients > 0:
            fed = strategy.aggregate_evaluate(rnd, cgrid.send_and_receive(
                strategy.configure_evaluate(rnd, to_record(arrays), ConfigRecord(), cgrid)))
            log.info("round %d federated evaluation: %s", rnd, dict(fed or {}))
        metrics = metrics or {}
        train_loss = float(metrics.get("train-loss", math.nan))
        planner.observe(train_loss)
        mean_steps = sum(m["steps"] for m in reply_metrics) / len(reply_metrics)
        if rec.end_of_round(rnd, arrays, lr, len(ok), train_loss, float(metrics.get("train-acc", math.nan)),
                            extra={"strategy": tree_torch(strategy.state()), "planner": planner.state()},
                            row={"local_steps": mean_steps}):
            break
    return rec.finish()


def tree_torch(tree: dict) -> dict:
    """Nested ``{name: ndarray | dict}`` -> torch tensors (checkpoints load with ``weights_only=True``)."""
    return {k: tree_torch(v) if isinstance(v, dict) else torch.from_numpy(np.array(v)) for k, v in tree.items()}


def tree_numpy(tree: dict) -> dict:
    """Inverse of :func:`tree_torch`."""
    return {k: tree_numpy(v) if isinstance(v, dict) else v.numpy() for k, v in tree.items()}

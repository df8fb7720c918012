"""The server's round loop: configure -> send/receive (counted) -> aggregate -> evaluate -> record.

Flower's ``Strategy.start`` runs a fixed loop; this one adds what a lab needs around the same
strategy calls: per-round learning rate in the train config, communication accounting,
simulated time, checkpoints and resume, divergence detection, and the results files.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from flwr.app import ConfigRecord

from clients.train import Normalizer, evaluate
from fedlab_app import plots
from fedlab_app.comm import CountingGrid, Ledger
from fedlab_app.config import Config, flatten, to_nested
from fedlab_app.models import build_model, use_channels_last
from fedlab_app.partition import label_counts
from fedlab_app.results import RunDir
from fedlab_app.splits import make_splits
from strategies.fedavg import to_numpy, to_record

log = logging.getLogger("fedlab")
NODE_WAIT_S = 60.0  # how long the server waits for num_clients nodes to connect


@dataclass
class LoopState:
    """Everything a checkpoint must hold to continue a run exactly."""

    server_round: int = 0
    wall_time_s: float = 0.0
    sim_time_s: float = 0.0
    failures: int = 0
    ledger: Ledger = field(default_factory=Ledger)

    def to_json(self) -> dict:
        return {"server_round": self.server_round, "wall_time_s": self.wall_time_s, "sim_time_s": self.sim_time_s,
                "failures": self.failures, "ledger": self.ledger.state()}

    @classmethod
    def from_json(cls, d: dict) -> LoopState:
        return cls(d["server_round"], d["wall_time_s"], d["sim_time_s"], d["failures"], Ledger.from_state(d["ledger"]))


class CentralEvaluator:
    """Evaluates the global model on the test set (and the validation split, if any) in the server process."""

    def __init__(self, cfg: Config) -> None:
        s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
        self.data, self.batch = s.data, cfg.eval.batch_size
        self.model = build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes)
        self.norm = Normalizer.from_stats(s.data.mean, s.data.std, use_channels_last(cfg.model))
        self.test = (torch.from_numpy(s.data.x_test.copy()), torch.from_numpy(s.data.y_test.astype(np.int64)))
        self.val = (torch.from_numpy(s.data.x_train[s.val_idx]), torch.from_numpy(s.data.y_train[s.val_idx].astype(np.int64)))

    def __call__(self, arrays: dict[str, np.ndarray]) -> dict[str, float]:
        self.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        out = {}
        for name, (x, y) in (("test", self.test), ("val", self.val)):
            if len(y):
                out[f"{name}_loss"], out[f"{name}_acc"] = evaluate(self.model, x, y, self.norm, self.batch)
        return out


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
    state, arrays = LoopState(), None
    if cfg.resume_requested and (ckpt := run_dir.last_checkpoint()) is not None:
        rnd, arrays, saved = RunDir.load_checkpoint(ckpt)
        state = LoopState.from_json(saved)
        run_dir.truncate_metrics(rnd)
        log.info("resuming %s from round %d (%s)", run_dir.path, rnd, ckpt.name)
    elif cfg.resume_requested:
        log.warning("resume requested but %s has no checkpoint: starting from round 1", run_dir.path)
    arrays = arrays if arrays is not None else initial_arrays(cfg)
    run_dir.create()
    if state.server_round:
        check_resume_config(cfg, run_dir)
    run_dir.write_config(to_nested(cfg))
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    plots.plot_label_distribution(label_counts(s.data.y_train, list(s.parts), s.data.num_classes),
                            run_dir.plots_dir / "label_distribution.png",
                            f"{cfg.dataset.name}, partition={cfg.partition.name}: labels per client")
    evaluator = CentralEvaluator(cfg)
    wait_for_nodes(grid, cfg.num_clients)
    cgrid = CountingGrid(grid, state.ledger)
    summary = {"status": "running", "out_dir": str(run_dir.path)}
    last_eval: dict[str, float] = {}
    t_start = time.perf_counter() - state.wall_time_s
    status = "finished"
    for rnd in range(state.server_round + 1, cfg.rounds + 1):
        lr = cfg.client.lr
        train_cfg = ConfigRecord({"lr": lr, "local-epochs": cfg.client.local_epochs,
                                  "local-steps": cfg.client.local_steps})
        replies = cgrid.send_and_receive(strategy.configure_train(rnd, to_record(arrays), train_cfg, cgrid))
        ok = [r for r in replies if not r.has_error()]
        state.failures += len(replies) - len(ok)
        new, train_metrics = strategy.aggregate_train(rnd, replies)
        if new is None:
            raise RuntimeError(f"round {rnd}: no client returned a result ({len(replies)} errors): "
                               + "; ".join(r.error.reason[:200] for r in replies if r.has_error()))
        arrays = to_numpy(new)
        state.sim_time_s += max(float(r.content["metrics"]["compute-s"]) for r in ok)
        if cfg.eval.fraction_clients > 0:
            fed = strategy.aggregate_evaluate(rnd, cgrid.send_and_receive(
                strategy.configure_evaluate(rnd, to_record(arrays), ConfigRecord(), cgrid)))
            log.info("round %d federated evaluation: %s", rnd, dict(fed or {}))
        state.server_round = rnd
        state.wall_time_s = time.perf_counter() - t_start
        train_loss = float(train_metrics.get("train-loss", math.nan)) if train_metrics else math.nan
        diverged = not math.isfinite(train_loss)
        if rnd % cfg.eval.every == 0 or rnd == cfg.rounds or diverged:
            last_eval = evaluator(arrays)
            led = state.ledger
            row = {"round": rnd, "wall_time_s": state.wall_time_s, "sim_time_s": state.sim_time_s, "lr": lr,
                   "clients": len(ok), "failures": state.failures, "train_loss": train_loss,
                   "train_acc": float(train_metrics.get("train-acc", math.nan)), **last_eval,
                   "messages": led.total_messages, "bytes": led.total_bytes,
                   "messages_down": led.messages["down"], "messages_up": led.messages["up"],
                   "bytes_down": led.bytes["down"], "bytes_up": led.bytes["up"]}
            run_dir.append_metrics(row)
            log.info("[round %d/%d] test_acc=%.4f test_loss=%.4f train_loss=%.4f | %d msgs %.2f MB | %.1fs",
                     rnd, cfg.rounds, last_eval.get("test_acc", math.nan), last_eval.get("test_loss", math.nan),
                     train_loss, led.total_messages, led.total_bytes / 1e6, state.wall_time_s)
            diverged = diverged or not math.isfinite(last_eval.get("test_loss", 0.0))
        if rnd % cfg.checkpoint_every == 0 or rnd == cfg.rounds or diverged:
            run_dir.save_checkpoint(rnd, arrays, state.to_json())
        if diverged:
            log.warning("round %d: loss is not finite; stopping the run as diverged", rnd)
            status = "diverged"
            break
    summary.update(make_summary(cfg, state, last_eval, status))
    run_dir.write_summary(summary)
    plots.plot_run(run_dir)
    return summary


RESUMABLE_CHANGES = {"rounds", "resume", "out_dir", "verbose", "checkpoint_every", "eval.every", "eval.batch_size",
                     "sim.cpus_per_client", "sim.threads_per_client"}


def check_resume_config(cfg: Config, run_dir: RunDir) -> None:
    """Refuse to resume a run under a config that would change its results (rounds may grow)."""
    if not (run_dir.path / "config.yaml").exists():
        return
    old, new = flatten(run_dir.read_config()), flatten(to_nested(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUMABLE_CHANGES)
    if changed:
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"cannot resume {run_dir.path}: the config differs from the checkpointed run ({diff})")


def make_summary(cfg: Config, state: LoopState, last_eval: dict, status: str) -> dict:
    """The summary.json content for a run in ``state``."""
    led = state.ledger
    per_node = {k: v for k, v in sorted(led.per_node.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)}
    return {
        "status": status, "rounds": state.server_round, "rounds_planned": cfg.rounds,
        "final": {"round": state.server_round, **last_eval},
        "comm": {"messages": led.total_messages, "bytes": led.total_bytes, "messages_down": led.messages["down"],
                 "messages_up": led.messages["up"], "bytes_down": led.bytes["down"], "bytes_up": led.bytes["up"],
                 "max_node_messages": max((v["messages"] for v in per_node.values()), default=0),
                 "per_node": per_node},
        "wall_time_s": state.wall_time_s, "sim_time_s": state.sim_time_s, "failures": state.failures,
        "strategy": cfg.strategy.name, "dataset": cfg.dataset.name, "num_clients": cfg.num_clients,
    }

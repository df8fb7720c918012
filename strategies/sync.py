"""The synchronous mode: the FedAvg family (FedAvg, LocalSGD, SlowMo, step-weighted, FedNova, FedOpt).

Each round the Flower strategy (``strategies/fedavg.py`` and the modules built on it) samples the
clients and builds their messages (``configure_train``), every sampled client trains from the
global model, and the strategy's pure maths turns the replies into the next global model
(``aggregate_train``). Failure policy: a node that fails (dies, or its ClientApp raises) is logged,
counted and skipped; the round goes on with the others and fails only when none replied.

On the node (:func:`client_fit`): a fresh optimizer each round, or (``momentum_mode``) the node's
own optimizer state kept in its ``context.state`` (keep), or the server's average sent with the
model and returned with the reply's arrays under ``optimizer/`` (average).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from clients.optim import load_optimizer_state, optimizer_state
from strategies.fedavg import to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan

OPT_KEY = "optimizer"  # the optimizer state's ArrayRecord: in context.state (keep), from the server (average)
OPT_PREFIX = "optimizer/"  # ... and back to the server inside the reply's ArrayRecord (average)


def tree_torch(tree: dict) -> dict:
    """Nested ``{name: ndarray | dict}`` -> torch tensors (checkpoints load with ``weights_only=True``)."""
    return {k: tree_torch(v) if isinstance(v, dict) else torch.from_numpy(np.array(v)) for k, v in tree.items()}


def tree_numpy(tree: dict) -> dict:
    """Inverse of :func:`tree_torch`."""
    return {k: tree_numpy(v) if isinstance(v, dict) else v.numpy() for k, v in tree.items()}


class SyncMode:
    """Rounds of a Flower strategy (``configure_train`` -> send/receive -> ``aggregate_train``)."""

    name: ClassVar[str] = "sync"
    columns: ClassVar[tuple[str, ...]] = ()
    tolerates_failures: ClassVar[bool] = True
    uses_nodes: ClassVar[bool] = True

    def __init__(self, strategy: Any) -> None:
        self.strategy = strategy

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        self.run, self.arrays = run, arrays
        self.strategy.load_state(tree_numpy(state.get("strategy", {})))
        self.strategy.partition_nodes = run.node_of  # seeded sampling over partition ids, not random node ids

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        rnd, s = plan.rnd, self.strategy
        conf = ConfigRecord({k: v for k, v in plan.train_config(self.name).items() if k != "server-round"})
        replies = grid.send_and_receive(s.configure_train(rnd, to_record(self.arrays), conf, grid))
        ok = self.run.keep_ok(rnd, replies, grid)
        new, _ = s.aggregate_train(rnd, replies)
        if new is None:
            raise RuntimeError(f"round {rnd}: no client returned a result ({len(replies)} errors)")
        self.arrays = to_numpy(new)
        bytes_by_node = dict(grid.round_bytes)  # the training exchange only: federated evaluation is not timed
        if self.run.cfg.eval.fraction_clients > 0:
            fed = s.aggregate_evaluate(rnd, grid.send_and_receive(
                s.configure_evaluate(rnd, to_record(self.arrays), ConfigRecord(), grid)))
            self.run.log.info("round %d federated evaluation: %s", rnd, dict(fed or {}))
        return RoundOut(self.arrays, [dict(r.content["metrics"]) for r in ok], len(ok), bytes_by_node=bytes_by_node)

    def state(self) -> dict:
        return {"strategy": tree_torch(self.strategy.state())}

    def finish(self) -> dict:
        return {}


def client_fit(msg: Any, node: Any) -> Any:
    """Train the received model on this node's shard; reply with it (and the optimizer state, average)."""
    conf = msg.content["config"]
    mode = str(conf.get("momentum-mode", "reset"))
    opt = node.optimizer(float(conf["lr"]))
    carried = node.state.get(OPT_KEY) if mode == "keep" else msg.content.get(OPT_KEY) if mode == "average" else None
    if carried is not None:
        load_optimizer_state(opt, {k: v.numpy() for k, v in carried.items()})
    res = node.fit(opt, conf)
    state = {k: Array(v.contiguous().numpy()) for k, v in node.model.state_dict().items()}
    if mode != "reset":
        opt_state = {k: Array(v) for k, v in optimizer_state(opt).items()}
        if mode == "keep":
            node.state[OPT_KEY] = ArrayRecord(opt_state)
        else:  # Flower's strategies expect one ArrayRecord per reply: the state travels in it, prefixed
            state.update({OPT_PREFIX + k: v for k, v in opt_state.items()})
    return node.reply(msg, ArrayRecord(state), res)


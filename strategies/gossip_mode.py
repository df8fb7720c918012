"""The gossip mode: the ServerApp as the network fabric between nodes that hold their own models.

The maths is ``strategies/gossip.py``. Nodes keep their state (numerator y_i, weight w_i, and with
``momentum_mode=keep`` their optimizer state) in their Flower ``context.state``. Round t, one
message to each node carries what its in-neighbours sent in the previous round's mixing step
(their models, plus link noise, with the mixing weights); the node mixes them into its state,
trains J local steps on z_i = y_i / w_i and replies with its new y_i (:func:`gossip.local_update`)
and w_i. The server draws round t's matrix A(t) and the link noise, forwards the models in the next
round's messages (a relay: counted as the node-to-node messages they are, one per nonzero
off-diagonal A_ij, in ``messages_p2p``/``bytes_p2p``), and mirrors each node's state with the same
pure functions, bit for bit, for evaluation and checkpoints: the consensus model
x_bar = sum y_i / sum w_i is evaluated on the test set, the nodes' z_i on ``node_eval_samples``.
The first message of a run (and of a resumed run) restores every node's state ("down" messages).
Failure policy: every node holds part of the state, so a failed node fails the run, named.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord

from clients.optim import load_optimizer_state, optimizer_state
from strategies import gossip
from strategies.fedavg import to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan
from strategies.sync import tree_numpy, tree_torch

Y_KEY, W_KEY, OPT_KEY = "gossip-y", "gossip-w", "gossip-optimizer"


class GossipMode:
    """D-PSGD, SGP and GoSGD rounds over the counting grid (``run.cfg.strategy.name`` picks the method)."""

    name: ClassVar[str] = "gossip"
    columns: ClassVar[tuple[str, ...]] = ("consensus_dist", "avg_drift", "node_acc_mean", "node_acc_min",
                                          "node_acc_max")
    tolerates_failures: ClassVar[bool] = False
    uses_nodes: ClassVar[bool] = True

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        cfg = run.cfg
        self.run, self.method, self.p, self.m = run, cfg.strategy.name, cfg.strategy.params, cfg.num_clients
        if state.get("nodes"):
            self.ys = [tree_numpy(state["nodes"][str(i)]) for i in range(self.m)]
            self.ws = [float(w) for w in state["weights"].tolist()]
        else:
            self.ys, self.ws = gossip.initial_state(self.method, self.m, arrays)
        self.pending: list[dict | None] = [None] * self.m
        self.restore = True  # the first message restores every node's state
        run.plots.plot_mixing_matrix(gossip.matrix_at(self.p, self.m, 1, cfg.seed),
                                     run.run_dir.plots_dir / "mixing_matrix.png",
                                     f"{self.method}: strategy.matrix={self.p.matrix}, {self.m} nodes (round 1)")

    def _message(self, i: int, conf: dict) -> Any:
        content, conf, pending = {}, dict(conf), self.pending[i]
        if pending:
            conf.update({"self-coef": pending["self"], "mix-src": pending["src"], "mix-coef": pending["coefs"],
                         "mix-w": pending["ws"]})
            content["incoming"] = to_record({f"{j}/{k}": v for j, y in zip(pending["src"], pending["models"])
                                             for k, v in y.items()})
        if self.restore:
            content["restore"] = to_record(self.ys[i])
            conf["restore-w"] = self.ws[i]
        return self.run.message(i, {**content, "config": ConfigRecord(conf)})

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        rnd, cfg, m, run = plan.rnd, self.run.cfg, self.m, self.run
        conf = plan.train_config(self.name, **{"gossip": self.method, "momentum-mode": self.p.momentum_mode})
        msgs = [self._message(i, conf) for i in range(m)]
        # restore messages are server -> node; the relayed models are counted below as node-to-node transfers
        replies = grid.send_and_receive(msgs, count="down" if self.restore else None)
        self.restore = False
        by_pid = {int(r.content["metrics"]["partition-id"]): r.content for r in run.keep_ok(rnd, replies, grid)}
        post_y = [to_numpy(by_pid[i]["arrays"]) for i in range(m)]
        post_w = [float(by_pid[i]["metrics"][W_KEY]) for i in range(m)]
        # this round's mixing step: matrix, link noise, the node-to-node messages, the mirrored states
        A = gossip.matrix_at(self.p, m, rnd, cfg.seed)
        sigma = self.p.noise_std * self.p.noise_decay ** (rnd - 1)
        sizes = [to_record(y).count_bytes() for y in post_y]
        round_bytes: dict[int, int] = {i: 0 for i in range(m)}
        sent = {}
        for i in range(m):
            for j in gossip.senders(A, i):
                sent[(j, i)] = gossip.link_noise(post_y[j], sigma, cfg.seed, rnd, j, i)
                grid.transfer(j, i, sizes[j])
                round_bytes[i] += sizes[j]
                round_bytes[j] += sizes[j]
        before = gossip.consensus(post_y, post_w)
        self.ys, self.ws = gossip.mix_all(A, post_y, post_w, sent)
        self.pending = [{"self": float(A[i, i]), "src": gossip.senders(A, i),
                         "coefs": [float(A[i, j]) for j in gossip.senders(A, i)],
                         "ws": [post_w[j] for j in gossip.senders(A, i)],
                         "models": [sent[(j, i)] for j in gossip.senders(A, i)]} for i in range(m)]
        x_bar = gossip.consensus(self.ys, self.ws)
        zs = [gossip.debias(y, w) for y, w in zip(self.ys, self.ws)]
        row = {"consensus_dist": gossip.consensus_distance(zs), "avg_drift": gossip.distance(x_bar, before)}
        if run.eval_due(rnd) and self.p.node_eval_samples > 0:
            accs = run.evaluate_subset(zs, self.p.node_eval_samples)
            row.update({"node_acc_mean": float(np.mean(accs)), "node_acc_min": float(np.min(accs)),
                        "node_acc_max": float(np.max(accs))})
        return RoundOut(x_bar, [dict(by_pid[i]["metrics"]) for i in range(m)], m, row=row, bytes_by_node=round_bytes)

    def state(self) -> dict:
        return {"nodes": {str(i): tree_torch(y) for i, y in enumerate(self.ys)},
                "weights": torch.tensor(self.ws, dtype=torch.float64)}

    def finish(self) -> dict:
        self.run.plots.plot_gossip(self.run.run_dir.read_metrics(), self.run.run_dir.plots_dir / "gossip.png",
                                   self.run.run_dir.path.name)
        return {}


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def client_fit(msg: Any, node: Any) -> Any:
    """One gossip round on a node: restore or load its state, mix the incoming models, train, keep the state."""
    conf = msg.content["config"]
    if "restore" in msg.content:
        y, w = _arrays(msg.content["restore"]), float(conf["restore-w"])
    elif Y_KEY in node.state:
        y, w = _arrays(node.state[Y_KEY]), float(node.state[W_KEY]["w"])
    else:
        raise RuntimeError(f"gossip node {node.pid} has no state and the message brought none (node restarted?)")
    if "incoming" in msg.content:
        src, coefs = list(conf["mix-src"]), [float(c) for c in conf["mix-coef"]]
        flat = _arrays(msg.content["incoming"])
        incoming = [{k: flat[f"{j}/{k}"] for k in y} for j in src]
        self_coef = float(conf["self-coef"])
        y = gossip.mix(self_coef, y, coefs, incoming)
        w = gossip.mix_weight(self_coef, w, coefs, [float(v) for v in conf["mix-w"]])
    z = gossip.debias(y, w)
    node.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in z.items()})
    opt = node.optimizer(float(conf["lr"]))
    keep = str(conf.get("momentum-mode", "reset")) == "keep"
    if keep and OPT_KEY in node.state:
        load_optimizer_state(opt, {k: v.numpy() for k, v in node.state[OPT_KEY].items()})
    res = node.fit(opt, conf)
    if keep:
        node.state[OPT_KEY] = ArrayRecord({k: Array(v) for k, v in optimizer_state(opt).items()})
    z_new = {k: v.detach().contiguous().numpy() for k, v in node.model.state_dict().items()}
    y = gossip.local_update(str(conf["gossip"]), y, w, z, z_new)
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in y.items()})
    node.state[Y_KEY] = record
    node.state[W_KEY] = ConfigRecord({"w": w})
    return node.reply(msg, record, res, **{W_KEY: w})

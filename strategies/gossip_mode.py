"""The gossip mode: the ServerApp as the network fabric between nodes that hold their own models.

The maths is ``strategies/gossip.py``. Node i's state is its numerator y_i and weight w_i (and, with
``momentum_mode=keep``, its optimizer state, which stays on the node in its Flower ``context.state``).
Round t: node i trains J local steps from its de-biased model z_i = y_i / w_i and returns z_i'; its
numerator becomes y_i' = :func:`gossip.local_update` (y_i, w_i, z_i, z_i'). The mixing step then
sends y_j' (plus link noise) along every nonzero off-diagonal A_ij of round t's matrix A(t), and
each node mixes what it received into its new (y_i, w_i).

Where each part runs: the nodes train; the server, which relays every node-to-node model anyway,
applies the pure functions of ``gossip.py`` to the relayed models (local update, link noise, mixing)
and sends each node the state its own mixing step would have produced, as z_i = y_i / w_i: the
result is bit for bit what the node would compute from the relayed models, since it is the same
function on the same arrays. So a node's message carries one model whatever its degree, nodes keep
no model between rounds (a restarted node loses only its momentum), and with
``sim.clients_per_worker`` > 1 a worker trains many nodes fused, as the synchronous mode does.

Accounting stays logical: each nonzero off-diagonal A_ij is one node-to-node message of y_j's size
(``messages_p2p``/``bytes_p2p``); the first message of a run (and of a resumed run) hands every node
its state ("down"). What crossed Flower (one model each way per node and round) is ``transport_*``.
The consensus model x_bar = sum y_i / sum w_i is evaluated on the test set, the nodes' z_i on
``node_eval_samples``. Failure policy: every node holds part of the state, so a failed node fails the
run, named.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import ConfigRecord

from strategies import gossip
from strategies.fedavg import to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan
from strategies.sync import send_packed, tree_numpy


def restored_states(state: dict, m: int) -> list[dict]:
    """The nodes' y_i from a checkpoint's state: stacked per array (:meth:`GossipMode.state`), or one dict per
    node (``state["nodes"][str(i)]``, checkpoints written before the states were stacked)."""
    if state.get("stacked"):
        stacked = tree_numpy(state["stacked"])
        return [{k: np.array(v[i]) for k, v in stacked.items()} for i in range(m)]
    return [tree_numpy(state["nodes"][str(i)]) for i in range(m)]


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
        if state.get("stacked") or state.get("nodes"):
            self.ys = restored_states(state, self.m)
            self.ws = [float(w) for w in state["weights"].tolist()]
        else:
            self.ys, self.ws = gossip.initial_state(self.method, self.m, arrays)
        self.zs: list[dict] | None = None
        self.restore = True  # the first message restores every node's state
        run.plots.plot_mixing_matrix(gossip.matrix_at(self.p, self.m, 1, cfg.seed),
                                     run.run_dir.plots_dir / "mixing_matrix.png",
                                     f"{self.method}: strategy.matrix={self.p.matrix}, {self.m} nodes (round 1)")

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        rnd, cfg, m, run = plan.rnd, self.run.cfg, self.m, self.run
        conf = ConfigRecord(plan.train_config(self.name, **{"momentum-mode": self.p.momentum_mode}))
        z_in = self.zs if self.zs is not None else [gossip.debias(y, w) for y, w in zip(self.ys, self.ws)]
        msgs = [run.message(i, {"arrays": to_record(z_in[i]), "config": conf}) for i in range(m)]
        self.zs = None
        z_sgp = z_in if self.method == "sgp" else None  # only SGP's local update reads z (y + z_new - z)
        del z_in  # the messages hold the models meanwhile
        count = "down" if self.restore else None  # later messages carry the relayed models, counted below
        if run.packing > 1:
            replies, names, _ = send_packed(msgs, list(range(m)), grid, count=count, own_arrays=True)
        else:
            replies, names = grid.send_and_receive(msgs, count=count), None
        del msgs
        self.restore = False
        by_pid = {int(r.content["metrics"]["partition-id"]): r.content for r in run.keep_ok(rnd, replies, grid, names)}
        del replies
        metrics, post_y = [], []
        for i in range(m):  # each reply's model read once and dropped: the server holds the states, not the replies
            reply = by_pid.pop(i)
            metrics.append(dict(reply["metrics"]))
            z_i = z_sgp[i] if z_sgp is not None else None
            post_y.append(gossip.local_update(self.method, self.ys[i], self.ws[i], z_i, to_numpy(reply["arrays"])))
        post_w = list(self.ws)
        del z_sgp
        # this round's mixing step: matrix, link noise, the node-to-node messages, the mirrored states
        A = gossip.matrix_at(self.p, m, rnd, cfg.seed)
        sigma = self.p.noise_std * self.p.noise_decay ** (rnd - 1)
        size = to_record(post_y[0]).count_bytes()  # every node's y has the same keys, shapes and dtypes
        round_bytes: dict[int, int] = {i: 0 for i in range(m)}
        for i in range(m):
            for j in gossip.senders(A, i):
                grid.transfer(j, i, size)
                round_bytes[i] += size
                round_bytes[j] += size
        before = gossip.consensus(post_y, post_w)
        self.ys, self.ws = gossip.mix_all(A, post_y, post_w,
                                          lambda j, i: gossip.link_noise(post_y[j], sigma, cfg.seed, rnd, j, i))
        post_y = None  # the round's evaluation and the next round's models need only the mixed states
        x_bar = gossip.consensus(self.ys, self.ws)
        zs = self.zs = [gossip.debias(y, w) for y, w in zip(self.ys, self.ws)]  # next round's models
        row = {"consensus_dist": gossip.consensus_distance(zs), "avg_drift": gossip.distance(x_bar, before)}
        if run.eval_due(rnd) and self.p.node_eval_samples > 0:
            accs = run.evaluate_subset(zs, self.p.node_eval_samples)
            row.update({"node_acc_mean": float(np.mean(accs)), "node_acc_min": float(np.min(accs)),
                        "node_acc_max": float(np.max(accs))})
        return RoundOut(x_bar, metrics, m, row=row, bytes_by_node=round_bytes)

    def state(self) -> dict:
        """Every node's y_i, stacked per array (``stacked[k][i]`` is node i's ``k``), and the weights w_i.

        Stacked, a checkpoint of 256 LeNet-5 nodes pickles 10 tensors instead of 2,560: pickling them one by one
        took about a fifth of the server's time in each round (py-spy).
        """
        return {"stacked": {k: torch.from_numpy(np.stack([y[k] for y in self.ys])) for k in self.ys[0]},
                "weights": torch.tensor(self.ws, dtype=torch.float64)}

    def finish(self) -> dict:
        self.run.plots.plot_gossip(self.run.run_dir.read_metrics(), self.run.run_dir.plots_dir / "gossip.png",
                                   self.run.run_dir.path.name)
        return {}

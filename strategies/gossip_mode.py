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
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from strategies import gossip
from strategies import gossip_stacked as stacked
from strategies.fedavg import array_numpy, to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan
from strategies.sync import STACKED, tree_numpy


def restored_states(state: dict, m: int) -> dict[str, np.ndarray]:
    """The nodes' y_i from a checkpoint's state, stacked (``Y[k][i]`` is node i's ``k``): stacked per array
    (:meth:`GossipMode.state`), or one dict per node (``state["nodes"][str(i)]``, checkpoints written before
    the states were stacked)."""
    if state.get("stacked"):
        return {k: np.array(v) for k, v in tree_numpy(state["stacked"]).items()}
    return stacked.stack([tree_numpy(state["nodes"][str(i)]) for i in range(m)])


def send_stacked(run: Any, zs: dict[str, np.ndarray], conf: ConfigRecord, grid: Any, rnd: int,
                 down_bytes: int | None) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Send every node its model and return the trained models (stacked) and the metrics, in node order.

    With ``sim.clients_per_worker`` > 1 each transport message carries its node's clients' models as one
    stacked array per name (``STACKED``, rows in ``pids`` order) and the node replies so
    (``strategies/sync.py``, :func:`client_fit_block`): one array per name a message instead of one per name and
    client. Counted as the unpacked exchange: with ``down_bytes`` (the first message, which restores every
    node's state), one "down" message of that many bytes, one model's, per client; None: not counted.
    """
    m = run.cfg.num_clients
    out = {k: np.empty_like(v) for k, v in zs.items()}
    metrics: list[dict | None] = [None] * m
    if run.packing == 1:
        msgs = [run.message(i, {"arrays": to_record(stacked.row(zs, i)), "config": conf}) for i in range(m)]
        replies = grid.send_and_receive(msgs, count=None if down_bytes is None else "down")
        del msgs
        for r in run.keep_ok(rnd, replies, grid):
            i = int(r.content["metrics"]["partition-id"])
            metrics[i] = dict(r.content["metrics"])
            for k, v in to_numpy(r.content["arrays"]).items():
                out[k][i] = v
        return out, metrics
    by_node: dict[int, list[int]] = {}
    for pid in range(m):
        by_node.setdefault(run.node_of[pid], []).append(pid)
    msgs = [Message(RecordDict({STACKED: ArrayRecord({k: Array(v[_rows(pids)]) for k, v in zs.items()}),
                                "config": ConfigRecord({**dict(conf), "pids": pids})}),
                    dst_node_id=node, message_type="train") for node, pids in by_node.items()]
    replies = grid.send_and_receive(msgs, count=None)
    del msgs
    names = [_clients(by_node.get(grid.replier(r), [])) for r in replies]
    for r in run.keep_ok(rnd, replies, grid, names):
        pids = by_node[grid.replier(r)]
        for k, a in r.content[STACKED].items():  # straight into ``out``: no copy of the reply's bytes on the way
            out[k][_rows(pids)] = array_numpy(a, copy=False)
        for pid in pids:
            metrics[pid] = dict(r.content[f"metrics/{pid}"])
    if down_bytes is not None:
        for pid in range(m):
            grid.count_virtual("down", pid, None, down_bytes)
    return out, metrics


def _rows(pids: list[int]) -> slice | list[int]:
    """The rows of a stacked state that hold clients ``pids``: a slice (a view, no gathered copy) when they are
    consecutive, as a node's clients are (``sim.clients_per_worker``), else the list."""
    if pids and pids == list(range(pids[0], pids[0] + len(pids))):
        return slice(pids[0], pids[0] + len(pids))
    return pids


def _clients(pids: list[int]) -> str:
    """A node named by its clients: "3" or "0-63"."""
    return "?" if not pids else str(pids[0]) if len(pids) == 1 else f"{pids[0]}-{pids[-1]}"


class GossipMode:
    """D-PSGD, SGP and GoSGD rounds over the counting grid (``run.cfg.strategy.name`` picks the method)."""

    name: ClassVar[str] = "gossip"
    columns: ClassVar[tuple[str, ...]] = ("consensus_dist", "avg_drift", "node_acc_mean", "node_acc_min",
                                          "node_acc_max")
    tolerates_failures: ClassVar[bool] = False
    uses_nodes: ClassVar[bool] = True
    overlaps_end_of_round: ClassVar[bool] = True  # a round replaces the stacked states, never in place

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        cfg = run.cfg
        self.run, self.method, self.p, self.m = run, cfg.strategy.name, cfg.strategy.params, cfg.num_clients
        if state.get("stacked") or state.get("nodes"):
            self.ys = restored_states(state, self.m)
            self.ws = [float(w) for w in state["weights"].tolist()]
        else:
            ys, self.ws = gossip.initial_state(self.method, self.m, arrays)
            self.ys = stacked.stack(ys)
        self.zs: dict[str, np.ndarray] | None = None
        self.restore = True  # the first message restores every node's state
        run.plots.plot_mixing_matrix(gossip.matrix_at(self.p, self.m, 1, cfg.seed),
                                     run.run_dir.plots_dir / "mixing_matrix.png",
                                     f"{self.method}: strategy.matrix={self.p.matrix}, {self.m} nodes (round 1)")

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        rnd, cfg, m, run = plan.rnd, self.run.cfg, self.m, self.run
        conf = ConfigRecord(plan.train_config(self.name, **{"momentum-mode": self.p.momentum_mode}))
        z_in = self.zs if self.zs is not None else stacked.debias(self.ys, self.ws)
        self.zs = None
        size = to_record(stacked.row(z_in, 0)).count_bytes()  # every node's y and z: the same names, shapes, dtypes
        z_new, metrics = send_stacked(run, z_in, conf, grid, rnd, size if self.restore else None)
        self.restore = False
        # only SGP's local update reads z (y + z_new - z)
        post_y = stacked.local_update(self.method, self.ys, self.ws, z_in if self.method == "sgp" else None, z_new)
        del z_in, z_new
        post_w = list(self.ws)
        # this round's mixing step: matrix, link noise, the node-to-node messages, the mirrored states
        A = gossip.matrix_at(self.p, m, rnd, cfg.seed)
        sigma = self.p.noise_std * self.p.noise_decay ** (rnd - 1)
        round_bytes: dict[int, int] = {i: 0 for i in range(m)}
        for i in range(m):
            for j in gossip.senders(A, i):
                grid.transfer(j, i, size)
                round_bytes[i] += size
                round_bytes[j] += size
        before = gossip.consensus(stacked.rows(post_y), post_w)
        noisy = None if sigma == 0.0 else (
            lambda j, i: gossip.link_noise(stacked.row(post_y, j), sigma, cfg.seed, rnd, j, i))
        self.ys, self.ws = stacked.mix(A, post_y, post_w, noisy)
        post_y = None  # the round's evaluation and the next round's models need only the mixed states
        x_bar = gossip.consensus(stacked.rows(self.ys), self.ws)
        self.zs = stacked.debias(self.ys, self.ws)  # next round's models
        zs = stacked.rows(self.zs)
        row = {"consensus_dist": stacked.consensus_distance(self.zs), "avg_drift": gossip.distance(x_bar, before)}
        if run.eval_due(rnd) and self.p.node_eval_samples > 0:
            accs = run.evaluate_subset(zs, self.p.node_eval_samples)
            row.update({"node_acc_mean": float(np.mean(accs)), "node_acc_min": float(np.min(accs)),
                        "node_acc_max": float(np.max(accs))})
        return RoundOut(x_bar, metrics, m, row=row, bytes_by_node=round_bytes)

    def state(self) -> dict:
        """Every node's y_i, stacked per array (``stacked[k][i]`` is node i's ``k``), and the weights w_i.

        Stacked, a checkpoint of 256 LeNet-5 nodes pickles 10 tensors instead of 2,560: pickling them one by one
        took about a fifth of the server's time in each round (py-spy). The arrays are the mode's own (a round
        makes new ones), so the checkpoint shares them without a copy.
        """
        return {"stacked": {k: torch.from_numpy(v) for k, v in self.ys.items()},
                "weights": torch.tensor(self.ws, dtype=torch.float64)}

    def finish(self) -> dict:
        self.run.plots.plot_gossip(self.run.run_dir.read_metrics(), self.run.run_dir.plots_dir / "gossip.png",
                                   self.run.run_dir.path.name)
        return {}

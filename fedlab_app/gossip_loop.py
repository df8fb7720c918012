"""The gossip round loop: the ServerApp as the network fabric between nodes that hold their own models.

Nodes keep their state (numerator y_i, weight w_i; ``strategies/gossip.py``) in their Flower
``context.state``. Round t, one message to each node carries what its in-neighbours sent in the
previous round's mixing step (their models, plus link noise, with the mixing weights); the node
mixes them into its state, trains J local steps on z_i = y_i / w_i and replies with its new y_i
and w_i. The server draws round t's matrix A(t) and the link noise, forwards the models in the
next round's messages (a relay: counted as the node-to-node messages they are, one per nonzero
off-diagonal A_ij, in ``messages_p2p``/``bytes_p2p``), and mirrors each node's state with the same
pure functions, bit for bit, for evaluation and checkpoints: the consensus model
x_bar = sum y_i / sum w_i is evaluated on the test set, the nodes' z_i on ``node_eval_samples``.
The first message of a run (and of a resumed run) restores every node's state ("down" messages).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from clients.schedule import lr_at, scaled_lr
from clients.train import evaluate
from fedlab_app import plots
from fedlab_app.comm import message_bytes
from fedlab_app.config import Config
from fedlab_app.planner import RoundPlanner
from fedlab_app.recorder import Recorder
from fedlab_app.results import RunDir
from fedlab_app.server_loop import initial_arrays, tree_numpy, tree_torch, wait_for_nodes
from strategies import gossip
from strategies.fedavg import to_numpy, to_record

log = logging.getLogger("fedlab")


def discover(grid, node_ids: list[int]) -> dict[int, int]:
    """Ask every node for its partition id (a "query" message, no payload): ``{partition id: node id}``."""
    msgs = [Message(RecordDict({"config": ConfigRecord({"ask": "partition-id"})}), dst_node_id=n,
                    message_type="query") for n in node_ids]
    out = {}
    for rep in grid.send_and_receive(msgs):
        if rep.has_error():
            raise RuntimeError(f"node {rep.metadata.src_node_id} did not answer the partition query: {rep.error.reason}")
        out[int(rep.content["metrics"]["partition-id"])] = rep.metadata.src_node_id
    return out


def node_message(i: int, node_id: int, conf: dict, pending: dict | None, restore: tuple | None) -> Message:
    """Round message for partition ``i``: config, the models to mix in (``pending``), an optional restore."""
    content = {}
    conf = dict(conf)
    if pending:
        conf.update({"self-coef": pending["self"], "mix-src": pending["src"], "mix-coef": pending["coefs"],
                     "mix-w": pending["ws"]})
        content["incoming"] = to_record({f"{j}/{k}": v for j, y in zip(pending["src"], pending["models"])
                                         for k, v in y.items()})
    if restore is not None:
        content["restore"] = to_record(restore[0])
        conf["restore-w"] = restore[1]
    content["config"] = ConfigRecord(conf)
    return Message(RecordDict(content), dst_node_id=node_id, message_type="train")


def node_accuracies(rec: Recorder, zs: list[dict[str, np.ndarray]], samples: int, seed: int) -> dict[str, float]:
    """Test accuracy of each node's de-biased model on ``samples`` test images: mean/min/max.

    The images are a seeded random subset, the same every round (test sets may be sorted by class).
    """
    if samples <= 0:
        return {}
    ev = rec.evaluator
    idx = torch.from_numpy(np.sort(np.random.default_rng(seed).permutation(len(ev.test[1]))[:samples]))
    x, y = ev.test[0][idx], ev.test[1][idx]
    accs = []
    for z in zs:
        ev.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in z.items()})
        accs.append(evaluate(ev.model, x, y, ev.norm, ev.batch)[1])
    return {"node_acc_mean": float(np.mean(accs)), "node_acc_min": float(np.min(accs)), "node_acc_max": float(np.max(accs))}


def run(cfg: Config, grid, run_dir: RunDir) -> dict:
    """Run ``cfg.rounds`` gossip rounds over ``grid``; returns the summary."""
    method, params, m = cfg.strategy.name, cfg.strategy.params, cfg.num_clients
    rec = Recorder(cfg, run_dir, cfg.rounds, "round")
    _, extra = rec.start()
    if extra.get("nodes"):
        ys = [tree_numpy(extra["nodes"][str(i)]) for i in range(m)]
        ws = [float(w) for w in extra["weights"].tolist()]
    else:
        ys, ws = gossip.initial_state(method, m, initial_arrays(cfg))
    base_lr = scaled_lr(cfg.client.lr, cfg.client.batch_size, cfg.schedule)
    planner = RoundPlanner(cfg, base_lr)
    planner.load_state(extra.get("planner", {}))
    plots.plot_mixing_matrix(gossip.matrix_at(params, m, 1, cfg.seed), run_dir.plots_dir / "mixing_matrix.png",
                             f"{method}: strategy.matrix={params.matrix}, {m} nodes (round 1)")
    node_of = discover(grid, wait_for_nodes(grid, m))
    led = rec.state.ledger
    pending: list[dict | None] = [None] * m
    restore = True
    for rnd in range(rec.state.server_round + 1, cfg.rounds + 1):
        lr = lr_at(rnd - 1, cfg.rounds, base_lr, cfg.schedule)
        conf = {"lr": lr, "local-epochs": cfg.client.local_epochs, "local-steps": planner.steps(rnd, lr),
                "server-round": rnd, "gossip": method}
        msgs = [node_message(i, node_of[i], conf, pending[i], (ys[i], ws[i]) if restore else None) for i in range(m)]
        if restore:
            for i, msg in enumerate(msgs):
                led.record("down", i, message_bytes(msg))
        restore = False
        replies = list(grid.send_and_receive(msgs))
        bad = [r for r in replies if r.has_error()]
        if bad:
            rec.state.failures += len(bad)
            raise RuntimeError(f"round {rnd}: {len(bad)} node(s) failed; gossip needs every node: "
                               + "; ".join(r.error.reason[:200] for r in bad))
        by_pid = {int(r.content["metrics"]["partition-id"]): r.content for r in replies}
        post_y = [to_numpy(by_pid[i]["arrays"]) for i in range(m)]
        post_w = [float(by_pid[i]["metrics"]["gossip-w"]) for i in range(m)]
        # this round's mixing step: matrix, link noise, the node-to-node messages, the mirrored states
        A = gossip.matrix_at(params, m, rnd, cfg.seed)
        sigma = params.noise_std * params.noise_decay ** (rnd - 1)
        sizes = [to_record(y).count_bytes() for y in post_y]
        round_bytes: dict[int, int] = {i: 0 for i in range(m)}
        sent = {}
        for i in range(m):
            for j in gossip.senders(A, i):
                sent[(j, i)] = gossip.link_noise(post_y[j], sigma, cfg.seed, rnd, j, i)
                led.transfer(j, i, sizes[j])
                round_bytes[i] += sizes[j]
                round_bytes[j] += sizes[j]
        before = gossip.consensus(post_y, post_w)
        ys, ws = gossip.mix_all(A, post_y, post_w, sent)
        pending = [{"self": float(A[i, i]), "src": gossip.senders(A, i),
                    "coefs": [float(A[i, j]) for j in gossip.senders(A, i)],
                    "ws": [post_w[j] for j in gossip.senders(A, i)],
                    "models": [sent[(j, i)] for j in gossip.senders(A, i)]} for i in range(m)]
        metrics = [dict(by_pid[i]["metrics"]) for i in range(m)]
        rec.state.sim_time_s += planner.round_time(metrics, round_bytes)
        n = sum(mt["examples-processed"] for mt in metrics)
        train_loss = sum(mt["train-loss"] * mt["examples-processed"] for mt in metrics) / max(n, 1)
        train_acc = sum(mt["train-acc"] * mt["examples-processed"] for mt in metrics) / max(n, 1)
        planner.observe(train_loss)
        x_bar = gossip.consensus(ys, ws)
        zs = [gossip.debias(y, w) for y, w in zip(ys, ws)]
        row = {"local_steps": sum(mt["steps"] for mt in metrics) / m, "consensus_dist": gossip.consensus_distance(zs),
               "avg_drift": gossip.distance(x_bar, before)}
        if rec.eval_due(rnd):
            row.update(node_accuracies(rec, zs, params.node_eval_samples, cfg.seed))
        state = {"nodes": {str(i): tree_torch(y) for i, y in enumerate(ys)}, "weights": torch.tensor(ws, dtype=torch.float64),
                 "planner": planner.state()}
        if rec.end_of_round(rnd, x_bar, lr, m, train_loss, train_acc, extra=state, row=row):
            break
    return rec.finish()

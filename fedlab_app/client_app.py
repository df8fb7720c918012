"""ClientApp: unpack the Message -> the mode's client_fit on this node's shard -> the reply.

Static settings (dataset, model, optimizer, batch size) come from the run_config, parsed once per
run and process; per-round settings (mode, lr, epochs or steps, round) come in the message's
ConfigRecord. One dispatch on the message's ``mode`` value picks what the node does
(``strategies.client_fits()``); every mode trains through :meth:`fedlab_app.local.Node.fit`. The
shard is loaded once per process and cached; nothing that must survive rounds is kept in Python
globals (it lives in the node's ``context.state``). Arrays arrive and leave flat (``fedlab_app/wire.py``).
"""

from __future__ import annotations

import json
import os
import time

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import strategies
from clients.perf import tune_process
from clients.train import evaluate
from fedlab_app import config, trace, wire
from fedlab_app.local import Node

app = ClientApp()
FITS = strategies.client_fits()
BLOCK_FITS = strategies.client_fits(block=True)
LOADED = time.time()  # this module imported (after Python, Flower's runtime, the FAB install, torch)
TIMELINE = "FEDLAB_TIMELINE"  # a file: each training message appends its timeline to it (bench/bench_deploy.py)
_SEEN: list[float] = []  # this process's training messages so far (only with FEDLAB_TIMELINE)


def process_start() -> float:
    """When this process started (Unix time; Linux ``/proc``, else this module's import time)."""
    return trace.process_start() or LOADED


def _log_timeline(conf, t_handler: float, t_data: float, t_trained: float, run: int | None = None,
                  cpu: float | None = None) -> None:
    """Append one JSON line: process start, imports done, handler start, data + model loaded, trained, and the
    handler thread's CPU seconds (``cpu``: against its wall time, how much of the handler waited for a core)."""
    if trace.enabled():
        rnd = int(conf.get("server-round", 0))
        trace.mark("clientapp", "handler", t=t_handler, run=run, round=rnd, type="train")
        trace.mark("clientapp", "trained", t=t_trained, run=run, round=rnd, type="train")
    if path := os.environ.get(TIMELINE):
        start = process_start()  # a process forked with this module imported: "imported" when it started
        _SEEN.append(t_handler)  # the n-th message of this process (deployed: always the first)
        with open(path, "a") as f:
            f.write(json.dumps({"round": int(conf.get("server-round", 0)), "pid": os.getpid(), "nth": len(_SEEN),
                                "start": start, "loaded": max(LOADED, start), "handler": t_handler,
                                "data": t_data, "trained": t_trained, "cpu": cpu}) + "\n")


def node_for(msg: Message, context: Context, pid: int | None = None, load: bool = True) -> Node:
    """This node (config parsed once per process), with the message's model loaded when it brings one.

    A simulated node that holds several virtual clients (``sim.clients_per_worker`` = p) is node b of
    ceil(K/p) and holds partitions b*p .. b*p+p-1; ``pid`` picks one of them. ``load=False``: leave the
    message's model for the caller (a block of clients trains from it without a model per client).
    """
    cfg = config.parse_cached(context.run_config)
    tune_process(cfg.sim.threads_per_client)
    p = max(1, cfg.sim.clients_per_worker)
    block = int(context.node_config["partition-id"])
    num = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num != -(-cfg.num_clients // p):
        raise ValueError(f"this node was told num-partitions={num} but the run has num_clients={cfg.num_clients} "
                         f"with sim.clients_per_worker={p}")
    if not 0 <= block < num:
        raise ValueError(f"this node was told partition-id={block}; allowed: 0 .. {num - 1} (num-partitions={num})")
    pid = block * p if pid is None else pid
    if not block * p <= pid < min((block + 1) * p, cfg.num_clients):
        raise ValueError(f"client {pid} is not held by node {block} (sim.clients_per_worker={p})")
    node = Node(cfg, pid, cfg.num_clients, context.state)
    if load and "arrays" in msg.content:
        node.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return node


@app.train()
@wire.flat_wire
def train_handler(msg: Message, context: Context) -> Message:
    """Do what the message's ``mode`` asks of this node (train, mix and train, compute a gradient)."""
    conf = msg.content["config"]
    mode = str(conf.get("mode", ""))
    if mode not in FITS:
        raise ValueError(f"train message with mode={mode!r}; this node knows: {', '.join(sorted(FITS))}")
    t0, c0 = time.time(), time.thread_time()
    if "pids" in conf:  # several virtual clients of this node, trained together
        nodes = [node_for(msg, context, int(p), load=False) for p in conf["pids"]]
        t1 = time.time()
        reply = BLOCK_FITS[mode](msg, nodes)
    else:
        node = node_for(msg, context)
        t1 = time.time()
        reply = FITS[mode](msg, node)
    _log_timeline(conf, t0, t1, time.time(), msg.metadata.run_id, time.thread_time() - c0)
    return reply


@app.evaluate()
@wire.flat_wire
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's shard (federated evaluation)."""
    pid = msg.content["config"].get("pid") if "config" in msg.content else None
    node = node_for(msg, context, None if pid is None else int(pid))
    local = node.local
    loss, acc = evaluate(node.model, local.x, local.y, local.norm, node.cfg.eval.batch_size)
    metrics = MetricRecord({"num-examples": len(local.y), "eval-loss": loss, "eval-acc": acc, "partition-id": node.pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
@wire.flat_wire
def query_handler(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id (the driver addresses nodes by it)."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)

"""ClientApp: unpack the Message -> the mode's client_fit on this node's shard -> the reply.

Static settings (dataset, model, optimizer, batch size) come from the run_config, parsed once per
run and process; per-round settings (mode, lr, epochs or steps, round) come in the message's
ConfigRecord. One dispatch on the message's ``mode`` value picks what the node does
(``strategies.client_fits()``); every mode trains through :meth:`fedlab_app.local.Node.fit`. The
shard is loaded once per process and cached; nothing that must survive rounds is kept in Python
globals (it lives in the node's ``context.state``).
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

import strategies
from clients.perf import tune_process
from clients.train import evaluate
from fedlab_app import config
from fedlab_app.local import Node

app = ClientApp()
FITS = strategies.client_fits()


def node_for(msg: Message, context: Context) -> Node:
    """This node (config parsed once per process), with the message's model loaded when it brings one."""
    cfg = config.parse_cached(context.run_config)
    tune_process(cfg.sim.threads_per_client)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num != cfg.num_clients:
        raise ValueError(f"this node was told num-partitions={num} but the run has num_clients={cfg.num_clients}")
    if not 0 <= pid < num:
        raise ValueError(f"this node was told partition-id={pid}; allowed: 0 .. {num - 1} (num-partitions={num})")
    node = Node(cfg, pid, cfg.num_clients, context.state)
    if "arrays" in msg.content:  # gossip messages carry the neighbours' models instead
        node.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return node


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Do what the message's ``mode`` asks of this node (train, mix and train, compute a gradient)."""
    mode = str(msg.content["config"].get("mode", ""))
    if mode not in FITS:
        raise ValueError(f"train message with mode={mode!r}; this node knows: {', '.join(sorted(FITS))}")
    return FITS[mode](msg, node_for(msg, context))


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's shard (federated evaluation)."""
    node = node_for(msg, context)
    local = node.local
    loss, acc = evaluate(node.model, local.x, local.y, local.norm, node.cfg.eval.batch_size)
    metrics = MetricRecord({"num-examples": len(local.y), "eval-loss": loss, "eval-acc": acc, "partition-id": node.pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query_handler(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id (the driver addresses nodes by it)."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)

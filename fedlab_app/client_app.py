"""ClientApp: unpack the Message -> clients.train on this node's shard -> pack the reply.

Static settings (dataset, model, optimizer, batch size) come from the run_config; per-round
settings (lr, epochs or steps, round) come in the message's ConfigRecord. The shard is loaded once
per process and cached; nothing that must survive rounds is kept in Python globals.
"""

from __future__ import annotations

from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.optim import load_optimizer_state, make_optimizer, optimizer_state
from clients.train import evaluate, round_first_epoch, train
from fedlab_app import config
from fedlab_app.async_client import async_train
from fedlab_app.gossip_client import gossip_train
from fedlab_app.local import fresh_model, local_data, train_reply
from fedlab_app.perf import tune_process

app = ClientApp()
OPT_KEY = "optimizer"  # the optimizer state's ArrayRecord: in context.state (keep), from the server (average)
OPT_PREFIX = "optimizer/"  # ... and back to the server inside the reply's ArrayRecord (average)


def _setup(msg: Message, context: Context):
    cfg = config.parse(context.run_config, strict=False)
    tune_process(cfg.sim.threads_per_client)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num != cfg.num_clients:
        raise ValueError(f"this node was told num-partitions={num} but the run has num_clients={cfg.num_clients}")
    if not 0 <= pid < num:
        raise ValueError(f"this node was told partition-id={pid}; allowed: 0 .. {num - 1} (num-partitions={num})")
    local = local_data(cfg, pid, cfg.num_clients)
    model = fresh_model(cfg, local)
    if "arrays" in msg.content:  # gossip messages carry the neighbours' models instead
        model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    return cfg, pid, local, model


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Train the received model on this node's shard and send it back with its metrics.

    ``local-steps`` holds one entry per partition id (0: train ``local-epochs`` epochs). With
    ``momentum-mode`` keep, the optimizer state survives rounds in this node's ``context.state``;
    with average, it arrives with the model (from round 2) and goes back in the reply's arrays,
    its keys prefixed with ``optimizer/``.
    """
    cfg, pid, local, model = _setup(msg, context)
    conf = msg.content["config"]
    if "gossip" in conf:
        return gossip_train(msg, context, cfg, pid, local, model)
    if "async" in conf:
        return async_train(msg, context, cfg, pid, local, model)
    rnd, epochs, steps = int(conf["server-round"]), int(conf["local-epochs"]), int(conf["local-steps"][pid])
    mode = str(conf.get("momentum-mode", "reset"))
    first_epoch = round_first_epoch(rnd, epochs, steps)
    opt = make_optimizer(model, cfg.optimizer, float(conf["lr"]))
    carried = context.state.get(OPT_KEY) if mode == "keep" else msg.content.get(OPT_KEY) if mode == "average" else None
    if carried is not None:
        load_optimizer_state(opt, {k: v.numpy() for k, v in carried.items()})
    res = train(model, local.x, local.y, local.norm, opt, batch_size=cfg.client.batch_size, seed=cfg.seed,
                stream=pid, first_epoch=first_epoch, epochs=epochs, steps=steps, augment=local.augment)
    state = {k: Array(v.contiguous().numpy()) for k, v in model.state_dict().items()}
    if mode != "reset":
        opt_state = {k: Array(v) for k, v in optimizer_state(opt).items()}
        if mode == "keep":
            context.state[OPT_KEY] = ArrayRecord(opt_state)
        else:  # Flower's strategies expect one ArrayRecord per reply: the state travels in it, prefixed
            state.update({OPT_PREFIX + k: v for k, v in opt_state.items()})
    return train_reply(msg, ArrayRecord(state), local, res, pid)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's shard (federated evaluation)."""
    cfg, pid, local, model = _setup(msg, context)
    loss, acc = evaluate(model, local.x, local.y, local.norm, cfg.eval.batch_size)
    metrics = MetricRecord({"num-examples": len(local.y), "eval-loss": loss, "eval-acc": acc, "partition-id": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


@app.query()
def query_handler(msg: Message, context: Context) -> Message:
    """Tell the server this node's partition id (gossip uses it to address node-to-node messages)."""
    return Message(RecordDict({"metrics": MetricRecord({"partition-id": int(context.node_config["partition-id"])})}),
                   reply_to=msg)

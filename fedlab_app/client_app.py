"""ClientApp: unpack the Message -> clients.train on this node's shard -> pack the reply.

Static settings (dataset, model, optimizer, batch size) come from the run_config; per-round
settings (lr, epochs or steps, round) come in the message's ConfigRecord. The shard is loaded once
per process and cached; nothing that must survive rounds is kept in Python globals.
"""

from __future__ import annotations

import math

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.train import Normalizer, evaluate, train
from fedlab_app import config
from fedlab_app.models import build_model, use_channels_last
from fedlab_app.perf import tune_process
from fedlab_app.splits import client_shard, make_splits

app = ClientApp()


def _setup(msg: Message, context: Context):
    cfg = config.parse(context.run_config, strict=False)
    tune_process(cfg.sim.threads_per_client)
    pid = int(context.node_config["partition-id"])
    num = int(context.node_config.get("num-partitions", cfg.num_clients))
    if num != cfg.num_clients:
        raise ValueError(f"this node was told num-partitions={num} but the run has num_clients={cfg.num_clients}")
    x, y = client_shard(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed, pid)
    data = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed).data
    model = build_model(cfg.model, tuple(x.shape[1:]), data.num_classes)
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    norm = Normalizer.from_stats(data.mean, data.std, use_channels_last(cfg.model))
    return cfg, pid, x, y, model, norm


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Train the received model on this node's shard and send it back with its metrics."""
    cfg, pid, x, y, model, norm = _setup(msg, context)
    conf = msg.content["config"]
    rnd, epochs, steps = int(conf["server-round"]), int(conf["local-epochs"]), int(conf["local-steps"])
    batch = min(cfg.client.batch_size, len(y))
    per_round = epochs if steps == 0 else math.ceil(steps / max(len(y) // batch, 1))
    res = train(model, x, y, norm, cfg.optimizer, lr=float(conf["lr"]), batch_size=cfg.client.batch_size,
                seed=cfg.seed, stream=pid, first_epoch=(rnd - 1) * per_round, epochs=epochs, steps=steps)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    metrics = MetricRecord({"num-examples": len(y), "examples-processed": res.num_examples, "steps": res.steps,
                            "train-loss": res.loss, "train-acc": res.acc, "compute-s": res.seconds,
                            "partition-id": pid, "diverged": int(res.diverged)})
    return Message(RecordDict({"arrays": ArrayRecord(state), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this node's shard (federated evaluation)."""
    cfg, pid, x, y, model, norm = _setup(msg, context)
    loss, acc = evaluate(model, x, y, norm, cfg.eval.batch_size)
    metrics = MetricRecord({"num-examples": len(y), "eval-loss": loss, "eval-acc": acc, "partition-id": pid})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)

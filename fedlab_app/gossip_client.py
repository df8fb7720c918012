"""A gossip node's round (``strategies/gossip.py``): mix what the neighbours sent, train, keep the state.

The node's numerator y_i and weight w_i live in its Flower ``context.state`` between rounds (a
restore in the message replaces them: the first round of a run or of a resumed run). It mixes
the incoming models with the same pure function the server mirrors it with, trains J steps on
z_i = y_i / w_i, and replies with y_i = z_i' w_i and w_i.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message

from clients.optim import make_optimizer
from clients.train import round_first_epoch, train
from fedlab_app.local import train_reply
from strategies import gossip

Y_KEY, W_KEY = "gossip-y", "gossip-w"


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in record.items()}


def gossip_train(msg: Message, context: Context, cfg, pid: int, local, model) -> Message:
    """Handle one gossip round on this node (called by the ClientApp's train handler)."""
    conf = msg.content["config"]
    if "restore" in msg.content:
        y, w = _arrays(msg.content["restore"]), float(conf["restore-w"])
    elif Y_KEY in context.state:
        y, w = _arrays(context.state[Y_KEY]), float(context.state[W_KEY]["w"])
    else:
        raise RuntimeError(f"gossip node {pid} has no state and the message brought none (node restarted?)")
    if "incoming" in msg.content:
        src, coefs = list(conf["mix-src"]), [float(c) for c in conf["mix-coef"]]
        flat = _arrays(msg.content["incoming"])
        incoming = [{k: flat[f"{j}/{k}"] for k in y} for j in src]
        self_coef = float(conf["self-coef"])
        y = gossip.mix(self_coef, y, coefs, incoming)
        w = gossip.mix_weight(self_coef, w, coefs, [float(v) for v in conf["mix-w"]])
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in gossip.debias(y, w).items()})
    rnd, epochs, steps = int(conf["server-round"]), int(conf["local-epochs"]), int(conf["local-steps"][pid])
    opt = make_optimizer(model, cfg.optimizer, float(conf["lr"]))
    res = train(model, local.x, local.y, local.norm, opt, batch_size=cfg.client.batch_size, seed=cfg.seed,
                stream=pid, first_epoch=round_first_epoch(rnd, epochs, steps), epochs=epochs,
                steps=steps, augment=local.augment)
    z = {k: v.detach().contiguous().numpy() for k, v in model.state_dict().items()}
    y = {k: (v * w).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in z.items()}
    record = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in y.items()})
    context.state[Y_KEY] = record
    context.state[W_KEY] = ConfigRecord({"w": w})
    return train_reply(msg, record, local, res, pid, **{W_KEY: w})

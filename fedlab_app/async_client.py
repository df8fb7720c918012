"""An asynchronous-SGD worker's computation (``strategies/async_sgd.py``).

From the model it received, the worker runs J plain SGD steps (no momentum: momentum and delay
compensation live on the server) on batches of its shard and replies with the pseudo-gradient
g = (w_start - w_end)/lr (for J = 1, the mini-batch gradient). The batches of its k-th
computation come from the seeded permutation block k, so a result depends only on (model, worker,
k): the same work re-issued after a resume gives the same result. With ``clock=real`` it first
sleeps its delay.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message

from clients.train import train
from fedlab_app.local import train_reply


def async_train(msg: Message, context: Context, cfg, pid: int, local, model) -> Message:
    """Handle one asynchronous-SGD computation on this node (called by the ClientApp's train handler)."""
    conf = msg.content["config"]
    if float(conf["sleep-s"]) > 0:
        time.sleep(float(conf["sleep-s"]))
    lr, k, steps = float(conf["lr"]), int(conf["update-index"]), int(conf["local-steps"][pid])
    start = {k_: v.detach().clone() for k_, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    res = train(model, local.x, local.y, local.norm, opt, batch_size=cfg.client.batch_size, seed=cfg.seed,
                stream=pid, first_epoch=k << 20, steps=steps, augment=local.augment)
    grad = {}
    for name, v in model.state_dict().items():
        w0 = start[name]
        g = (w0.double() - v.double()) / lr if w0.is_floating_point() else torch.zeros_like(w0)
        grad[name] = Array(np.ascontiguousarray(g.to(w0.dtype).numpy()))
    return train_reply(msg, ArrayRecord(grad), local, res, pid)

"""The centralized baseline: one process, no Flower, the whole training set, epochs instead of rounds.

It shares the client's training code (``clients.train``) and the results contract with the
federated runs; one difference is deliberate: the optimizer (momentum, Adam moments) lives across
epochs, as in ordinary training. Its data is the one shard of an IID split into one client, so
FedAvg with one client and E local epochs in one round is the same computation (tested).
"""

from __future__ import annotations

import dataclasses
import os

from clients.optim import make_optimizer
from clients.schedule import lr_at, scaled_lr
from clients.train import train
from fedlab_app.config import Config, PartitionCfg
from fedlab_app.local import fresh_model, local_data
from fedlab_app.perf import tune_process
from fedlab_app.recorder import Recorder
from fedlab_app.results import RunDir


def run(cfg: Config, run_dir: RunDir) -> dict:
    """Train for ``strategy.epochs`` epochs in this process, recording into ``run_dir``; returns the summary."""
    params = cfg.strategy.params
    cfg = dataclasses.replace(cfg, num_clients=1, partition=PartitionCfg())
    tune_process(params.threads or os.cpu_count() or 1)
    local = local_data(cfg, 0, 1)
    model = fresh_model(cfg, local, seed=cfg.seed)
    base = scaled_lr(cfg.client.lr, cfg.client.batch_size, cfg.schedule)
    opt = make_optimizer(model, cfg.optimizer, base)
    rec = Recorder(cfg, run_dir, params.epochs, "epoch")
    arrays, extra = rec.start()
    if arrays is not None:
        model.load_state_dict(_to_torch(arrays))
        opt.load_state_dict(extra["optimizer"])
    n = len(local.y)
    steps_per_epoch = -(-n // min(cfg.client.batch_size, n))
    for epoch in range(rec.state.server_round, params.epochs):
        lr = lr_at(epoch, params.epochs, base, cfg.schedule)
        lr_fn = None
        if cfg.schedule.per_step:
            def lr_fn(i: int, e: int = epoch) -> float:
                return lr_at(e + i / steps_per_epoch, params.epochs, base, cfg.schedule)
        res = train(model, local.x, local.y, local.norm, opt, batch_size=cfg.client.batch_size, seed=cfg.seed,
                    stream=0, first_epoch=epoch, epochs=1, lr=lr, lr_fn=lr_fn, augment=local.augment)
        rec.state.sim_time_s += res.seconds
        arrays = {k: v.detach().contiguous().numpy().copy() for k, v in model.state_dict().items()}
        if rec.end_of_round(epoch + 1, arrays, lr, 1, res.loss, res.acc, {"optimizer": opt.state_dict()}):
            break
    return rec.finish()


def _to_torch(arrays):
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}

"""Centralized baseline (no federation): plain mini-batch training on the whole training set.

Update rule, each step on a mini-batch b of size B drawn from the seeded epoch permutation:
    x <- optimizer_step(x, grad L_b(x), lr_t)        (SGD/Nesterov/AdamW/LARS/LAMB, clients/optim.py)
with lr_t from the schedule over epochs (clients/schedule.py). A mode of the round driver that
uses no Flower node: one "round" is one epoch, trained in the server process; same results
contract, with no messages. One difference from the federated modes is deliberate: the optimizer
(momentum, Adam moments) lives across epochs, as in ordinary training (it is checkpointed). Its
data is the one shard of an IID split into one client, so FedAvg with one client and E local
epochs in one round is the same computation (tested).

Config keys (``strategy.*``):
    epochs   number of epochs (the run's "rounds" column counts epochs)
    threads  torch threads (0 = all cores)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import numpy as np
import torch

from clients.perf import tune_process
from clients.schedule import lr_at
from fedlab_base.checks import check
from fedlab_base.schema import PartitionCfg
from strategies.modes import RoundOut, RoundPlan


@dataclasses.dataclass(frozen=True)
class Params:
    epochs: int = 15
    threads: int = 0

    def validate(self, p: str) -> None:
        check(self.epochs >= 1, f"{p}.epochs", self.epochs, "an integer >= 1")
        check(self.threads >= 0, f"{p}.threads", self.threads, "0 (all cores) or an integer >= 1")


def prepare(cfg: Any) -> Any:
    """The run's config: one client holding the whole training set (an IID split into one shard)."""
    return dataclasses.replace(cfg, num_clients=1, partition=PartitionCfg())


def total(cfg: Any) -> int:
    """The run's length, in epochs."""
    return cfg.strategy.params.epochs


class CentralizedMode:
    """One epoch per round on the whole training set, in the server process."""

    name: ClassVar[str] = "local"
    columns: ClassVar[tuple[str, ...]] = ()
    tolerates_failures: ClassVar[bool] = False
    uses_nodes: ClassVar[bool] = False
    unit: ClassVar[str] = "epoch"

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        cfg = self.cfg = run.cfg
        tune_process(cfg.strategy.params.threads or os.cpu_count() or 1)
        self.run, self.node = run, run.local_node(0, 1)
        self.node.model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in arrays.items()})
        self.opt = self.node.optimizer(run.base_lr)
        if "optimizer" in state:
            self.opt.load_state_dict(state["optimizer"])
        n = len(self.node.local.y)
        self.steps_per_epoch = -(-n // min(cfg.client.batch_size, n))

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        epoch, cfg, base = plan.rnd - 1, self.cfg, self.run.base_lr
        lr_fn = None
        if cfg.schedule.per_step:
            def lr_fn(i: int, e: int = epoch) -> float:
                return lr_at(e + i / self.steps_per_epoch, self.run.total, base, cfg.schedule)
        res = self.node.fit(self.opt, first_epoch=epoch, epochs=1, steps=0, lr=plan.lr, lr_fn=lr_fn)
        arrays = {k: v.detach().contiguous().numpy().copy() for k, v in self.node.model.state_dict().items()}
        metrics = {"train-loss": res.loss, "train-acc": res.acc, "examples-processed": res.num_examples,
                   "steps": res.steps, "partition-id": 0, "compute-s": res.seconds}
        return RoundOut(arrays, [metrics], 1, duration_s=res.seconds)

    def state(self) -> dict:
        return {"optimizer": self.opt.state_dict()}

    def finish(self) -> dict:
        return {}

"""What a training process (a client, or the centralized baseline) builds from the config.

:class:`Node` is what every mode's ``client_fit`` (``strategies/*``) gets: this process's shard, a
model, the node's persistent state, and the one local-fit call (:meth:`Node.fit`) that every mode
trains through.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import sys
from dataclasses import dataclass
from typing import Any

import torch
from flwr.app import Message, MetricRecord, RecordDict

from clients.augment import Augmenter
from clients.optim import make_optimizer
from clients.train import Normalizer, TrainResult, round_first_epoch, train
from fedlab_app.data import ImageData
from fedlab_app.models import build_model, use_channels_last
from fedlab_app.splits import client_shard, make_splits
from fedlab_base.schema import Config


@functools.cache
def worker_id() -> int:
    """The machine (or Ray node) this process trains on, as a number a MetricRecord can carry.

    In a Ray worker (a simulation, possibly on a multi-machine cluster): the first 48 bits of its Ray
    node id, so ``f"{worker_id():012x}"`` is the node id's 12-character prefix (what ``ray status`` and
    ``ray.nodes()`` show in full); elsewhere (a deployed SuperNode): the first 48 bits of the SHA-1 of
    the host name. Ray is never imported here: only a process that already runs in Ray asks it.
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        node = ray.get_runtime_context().get_node_id()
    else:
        node = hashlib.sha1(socket.gethostname().encode()).hexdigest()
    return int(node[:12], 16)


@dataclass(frozen=True)
class LocalData:
    x: torch.Tensor  # uint8 (n, C, H, W): this process's shard
    y: torch.Tensor  # int64 (n,)
    data: ImageData
    norm: Normalizer
    augment: object  # clients.augment.Augmenter or None


def local_data(cfg: Config, partition_id: int, num_clients: int) -> LocalData:
    """Shard ``partition_id`` of ``num_clients`` with its normalizer and (optional) augmentation."""
    x, y = client_shard(cfg.dataset, cfg.partition, num_clients, cfg.seed, partition_id)
    data = make_splits(cfg.dataset, cfg.partition, num_clients, cfg.seed).data
    norm = Normalizer.from_stats(data.mean, data.std, use_channels_last(cfg.model))
    return LocalData(x, y, data, norm, Augmenter(pad=4, flip=True) if cfg.dataset.augment else None)


def fresh_model(cfg: Config, local: LocalData, seed: int | None = None) -> torch.nn.Module:
    """The configured model for this data set (seeded init when ``seed`` is given)."""
    return build_model(cfg.model, tuple(local.x.shape[1:]), local.data.num_classes, seed=seed)


class Node:
    """One node's view of a run: config, partition id, shard, a model, and state that survives rounds.

    ``state`` is the node's Flower ``context.state`` (a RecordDict; a plain dict in the server
    process for the centralized baseline).
    """

    def __init__(self, cfg: Config, pid: int, num: int, state: Any) -> None:
        self.cfg, self.pid, self.state = cfg, pid, state
        self.local = local_data(cfg, pid, num)

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        """This node's model, built on first use (a node holding hundreds of virtual clients trains them
        fused from one template and never builds the others)."""
        return fresh_model(self.cfg, self.local)

    def drop_model(self) -> None:
        """Free the model (the next use of :attr:`model` builds a fresh one)."""
        self.__dict__.pop("model", None)

    def optimizer(self, lr: float) -> torch.optim.Optimizer:
        """A fresh optimizer of the configured kind over this node's model."""
        return make_optimizer(self.model, self.cfg.optimizer, lr)

    def fit(self, opt: torch.optim.Optimizer, conf: Any = None, *, first_epoch: int | None = None,
            epochs: int | None = None, steps: int | None = None, lr: float | None = None,
            lr_fn: Any = None) -> TrainResult:
        """Train the model on this node's shard: the one local-fit call every mode uses.

        With a message's ``conf``, epochs and steps come from it (``local-epochs``, this node's entry
        of ``local-steps``) and the data order starts where round ``server-round`` starts
        (:func:`clients.train.round_first_epoch`), unless ``first_epoch`` is given.
        """
        if conf is not None:
            epochs, steps = int(conf["local-epochs"]), int(conf["local-steps"][self.pid])
            if first_epoch is None:
                first_epoch = round_first_epoch(int(conf["server-round"]), epochs, steps)
        return train(self.model, self.local.x, self.local.y, self.local.norm, opt, batch_size=self.cfg.client.batch_size,
                     seed=self.cfg.seed, stream=self.pid, first_epoch=first_epoch, epochs=epochs, steps=steps, lr=lr,
                     lr_fn=lr_fn, augment=self.local.augment)

    def metrics(self, res: TrainResult, **extra: Any) -> MetricRecord:
        """The training metrics the driver reads from a reply."""
        return MetricRecord({"num-examples": len(self.local.y), "examples-processed": res.num_examples,
                             "steps": res.steps, "train-loss": res.loss, "train-acc": res.acc,
                             "compute-s": res.seconds, "partition-id": self.pid, "diverged": int(res.diverged),
                             "worker": worker_id(), **extra})

    def reply(self, msg: Message, arrays: Any, res: TrainResult, **extra: Any) -> Message:
        """The reply to a training message: ``arrays`` (an ArrayRecord) and the metrics the driver reads."""
        return Message(RecordDict({"arrays": arrays, "metrics": self.metrics(res, **extra)}), reply_to=msg)

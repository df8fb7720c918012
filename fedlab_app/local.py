"""What a training process (a client, or the centralized baseline) builds from the config."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clients.train import Normalizer
from fedlab_app.config import Config
from fedlab_app.data import ImageData
from fedlab_app.models import build_model, use_channels_last
from fedlab_app.splits import client_shard, make_splits


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
    augment = None
    if cfg.dataset.augment:
        from clients.augment import Augmenter

        augment = Augmenter(pad=4, flip=True)
    return LocalData(x, y, data, norm, augment)


def fresh_model(cfg: Config, local: LocalData, seed: int | None = None) -> torch.nn.Module:
    """The configured model for this data set (seeded init when ``seed`` is given)."""
    return build_model(cfg.model, tuple(local.x.shape[1:]), local.data.num_classes, seed=seed)


def train_reply(msg, arrays, local: LocalData, res, pid: int, **extra):
    """The reply to a training message: ``arrays`` (an ArrayRecord) and the training metrics every loop reads."""
    from flwr.app import Message, MetricRecord, RecordDict

    metrics = MetricRecord({"num-examples": len(local.y), "examples-processed": res.num_examples, "steps": res.steps,
                            "train-loss": res.loss, "train-acc": res.acc, "compute-s": res.seconds,
                            "partition-id": pid, "diverged": int(res.diverged), **extra})
    return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

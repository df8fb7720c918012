"""Who holds which samples: the seeded train/validation split and the per-client shards.

The server and every client compute the same split from ``(dataset cfg, partition cfg, K, seed)``
(pure functions of the config, cached per process), so no index list travels over the network and
a deployed SuperNode only needs its own copy of the data set.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from fedlab_app.config import DatasetCfg, PartitionCfg
from fedlab_app.data import ImageData, load_dataset
from fedlab_app.partition import partition_indices, train_val_split


@dataclass(frozen=True)
class Splits:
    data: ImageData
    val_idx: np.ndarray  # indices into data.x_train held out for validation
    parts: tuple[np.ndarray, ...]  # per client: indices into data.x_train


@lru_cache(maxsize=4)
def make_splits(dcfg: DatasetCfg, pcfg: PartitionCfg, num_clients: int, seed: int) -> Splits:
    """Load the data set, optionally subsample it (``limit_train``), hold out validation, partition the rest."""
    data = load_dataset(dcfg.name, dcfg.data_dir, dcfg.source)
    n = len(data.y_train)
    pool = np.arange(n)
    if 0 < dcfg.limit_train < n:
        pool = np.sort(np.random.default_rng(seed).permutation(n)[: dcfg.limit_train])
    tr, va = train_val_split(len(pool), dcfg.val_fraction, seed)
    train_pool, val_idx = pool[tr], pool[va]
    if num_clients > len(train_pool):
        raise ValueError(f"num_clients={num_clients} is more than the {len(train_pool)} training samples available")
    local = partition_indices(data.y_train[train_pool], num_clients, pcfg.name, seed, alpha=pcfg.alpha,
                              classes_per_client=pcfg.classes_per_client,
                              shards_per_client=pcfg.shards_per_client, min_size=pcfg.min_size)
    return Splits(data, val_idx, tuple(train_pool[p] for p in local))


@lru_cache(maxsize=2)
def client_shard(dcfg: DatasetCfg, pcfg: PartitionCfg, num_clients: int, seed: int,
                 partition_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Client ``partition_id``'s shard as contiguous tensors: uint8 ``(n, C, H, W)`` and int64 ``(n,)``."""
    if not 0 <= partition_id < num_clients:
        raise ValueError(f"partition-id={partition_id} is outside [0, {num_clients})")
    s = make_splits(dcfg, pcfg, num_clients, seed)
    idx = s.parts[partition_id]
    return torch.from_numpy(s.data.x_train[idx].copy()), torch.from_numpy(s.data.y_train[idx].astype(np.int64))

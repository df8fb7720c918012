"""FedAvg: federated averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data", AISTATS 2017).

Update rule, each round t:
    S_t <- a seeded random sample of max(floor(C*K), min_train_clients) of the K clients
    x_i <- x_t, then client i runs E local epochs (or J steps) of SGD with batch B on its shard
    x_{t+1} <- sum_{i in S_t} (n_i / sum_{j in S_t} n_j) * x_i          (n_i = examples processed)

Config keys (``strategy.*``):
    fraction_train     C in (0, 1]: fraction of clients sampled per round
    min_train_clients  sample at least this many clients per round
E, J and B are ``client.local_epochs``, ``client.local_steps``, ``client.batch_size``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlab_base.checks import check
from strategies.blocks import combine


@dataclass(frozen=True)
class Params:
    fraction_train: float = 1.0
    min_train_clients: int = 1

    def validate(self, p: str) -> None:
        check(0.0 < self.fraction_train <= 1.0, f"{p}.fraction_train", self.fraction_train, "0 < C <= 1")
        check(self.min_train_clients >= 1, f"{p}.min_train_clients", self.min_train_clients, "an integer >= 1")


def weighted_average(models: Iterable[dict[str, np.ndarray]], weights: Sequence[float]) -> dict[str, np.ndarray]:
    """Weighted average of models given as ``{name: array}``: ``sum_i w_i x_i / sum_i w_i``.

    Accumulates in float64, in the order of ``models``, and casts back to each array's dtype (integer
    buffers such as BatchNorm's ``num_batches_tracked`` are rounded). ``models`` may be a generator:
    each model is read once and can be dropped at once, so that the server holds one reply's arrays
    at a time besides the sums (1,000 clients: 1 model, not 1,000 copies).
    """
    w = np.asarray(weights, dtype=np.float64)
    if np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    w = w / w.sum()
    acc: dict[str, np.ndarray] = {}
    dtypes: dict = {}
    n = 0
    for m in models:
        if n >= len(w):
            raise ValueError(f"need one weight per model, got more models than the {len(w)} weights")
        wi = w[n]
        for name, v in m.items():
            term = wi * v.astype(np.float64)
            if n == 0:
                acc[name], dtypes[name] = 0 + term, v.dtype  # 0 + term: as sum() starts, bit for bit
            else:
                acc[name] += term
        n += 1
    if n == 0 or n != len(w):
        raise ValueError(f"need one weight per model, got {n} models and {len(w)} weights")
    return {name: np.rint(a).astype(dtypes[name]) if np.issubdtype(dtypes[name], np.integer) else a.astype(dtypes[name])
            for name, a in acc.items()}


def sample_clients(node_ids: Iterable[int], fraction: float, minimum: int, seed: int, server_round: int) -> list[int]:
    """Seeded sample of ``max(floor(fraction*K), minimum)`` node ids (capped at K), sorted for determinism."""
    ids = sorted(node_ids)
    k = min(len(ids), max(int(fraction * len(ids)), minimum))
    return sorted(random.Random(seed * 1_000_003 + server_round).sample(ids, k))


def to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> ``{name: ndarray}``."""
    return {k: array_numpy(v) for k, v in record.items()}


def array_numpy(a: Array, copy: bool = True) -> np.ndarray:
    """``a.numpy()`` without parsing the .npy header with ``ast.literal_eval`` (what ``np.load`` does; 2,560
    arrays a round for 256 LeNet-5 gossip nodes): when ``a.data`` is what ``np.save`` writes for ``a``'s dtype
    and shape in C order, the array is read after the header (a writable copy, as ``np.load`` gives; with
    ``copy=False`` a read-only view of ``a.data``, for a caller that copies it anyway); anything else goes
    through ``a.numpy()``."""
    data, dtype = a.data, np.dtype(a.dtype)
    if a.stype == "numpy.ndarray" and data[:6] == b"\x93NUMPY" and data[6:7] == b"\x01" and len(data) >= 10:
        start = 10 + int.from_bytes(data[8:10], "little")
        shape = tuple(a.shape)
        header = f"{{'descr': '{dtype.str}', 'fortran_order': False, 'shape': {shape}, }}".encode()
        if data[10:10 + len(header)] == header and len(data) - start == dtype.itemsize * math.prod(shape):
            view = np.frombuffer(data, dtype, offset=start).reshape(shape)
            return view.copy() if copy else view
    return a.numpy()


def to_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """``{name: ndarray}`` -> ArrayRecord (order kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


class SeededSampling:
    """Mixin for Flower strategies: seeded client sampling and the round number in every config.

    Put it before the Flower class (``class X(SeededSampling, FedAvg)``); ``extra_content(config)``
    lets a subclass add records (e.g. optimizer state) to every training message.
    """

    def __init__(self, params: Params, seed: int, num_clients: int, fraction_evaluate: float = 0.0, **kw) -> None:
        super().__init__(fraction_train=params.fraction_train, fraction_evaluate=fraction_evaluate or 1.0,
                         min_train_nodes=params.min_train_clients, min_evaluate_nodes=1,
                         min_available_nodes=num_clients, **kw)
        self.fraction_evaluate = fraction_evaluate  # set after __init__: 0 would make Flower log a warning
        self.seed = seed

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, self.seed, server_round)
        config["server-round"] = server_round
        return self._construct_messages(self._record(arrays, config), nodes, "train")

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, 1, self.seed + 1, server_round)
        config["server-round"] = server_round
        return self._construct_messages(self._record(arrays, config), nodes, "evaluate")

    def _sample(self, grid: Grid, fraction: float, minimum: int, seed: int, server_round: int) -> list[int]:
        """Seeded sample of node ids: over partition ids when the driver has told them (``partition_nodes``,
        ``{partition id: node id}``), so that the sample does not depend on the random node ids of a run."""
        by_pid = getattr(self, "partition_nodes", None)
        if not by_pid:
            return sample_clients(grid.get_node_ids(), fraction, minimum, seed, server_round)
        self.sampled_pids = sample_clients(by_pid, fraction, minimum, seed, server_round)  # the messages' order
        return [by_pid[p] for p in self.sampled_pids]

    def _record(self, arrays: ArrayRecord, config: ConfigRecord) -> RecordDict:
        return RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config, **self.extra_content(config)})

    def extra_content(self, config: ConfigRecord) -> dict:
        """Records sent with the model and config (none by default)."""
        return {}

    def block_rule(self) -> dict | None:
        """The config that lets nodes send block sums (``strategies/blocks.py``): ``agg-weight`` is the rule of
        :func:`strategies.blocks.reply_weight`; None: this strategy needs every client's reply."""
        return None

    def aggregate_blocks(self, server_round: int, replies: list[Message],
                         blocks: list) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:meth:`aggregate_train` from the nodes' block sums; ``replies`` hold the clients' metrics only."""
        raise NotImplementedError(f"{type(self).__name__} has no block_rule")

    def state(self) -> dict:
        """Server state a checkpoint must hold to resume exactly (``{name: {key: ndarray}}``)."""
        return {}

    def load_state(self, extra: dict) -> None:
        """Inverse of :meth:`state`."""


def sorted_contents(replies: Iterable[Message]) -> list[RecordDict]:
    """The replies' contents in partition-id order: a fixed summation order, whatever the arrival order."""
    return sorted((m.content for m in replies), key=lambda c: c["metrics"].get("partition-id", 0))


class FedAvgStrategy(SeededSampling, FedAvg):
    """Flower's FedAvg with seeded client sampling and :func:`weighted_average` as its maths."""

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = sorted_contents(valid)
        models = (to_numpy(c[self.arrayrecord_key]) for c in contents)  # one at a time
        weights = [float(c["metrics"][self.weighted_by_key]) for c in contents]
        return to_record(weighted_average(models, weights)), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def block_rule(self) -> dict | None:
        return {"agg-weight": "num-examples"} if self.weighted_by_key == "num-examples" else None

    def aggregate_blocks(self, server_round: int, replies: list[Message],
                         blocks: list) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The example-weighted average from block sums: ``sum_B S_B / sum_B C_B``."""
        x, _ = combine(((b.sums, b.weight) for b in blocks), blocks[0].dtypes)
        return to_record(x), self.train_metrics_aggr_fn(sorted_contents(replies), self.weighted_by_key)


def build(cfg) -> FedAvgStrategy:
    """Build the strategy from a validated :class:`fedlab_app.config.Config`."""
    return FedAvgStrategy(cfg.strategy.params, cfg.seed, cfg.num_clients, cfg.eval.fraction_clients)

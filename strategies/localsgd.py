"""LocalSGD / periodic averaging (Stich, "Local SGD Converges Fast and Communicates Little", ICLR 2019),
and the family built on it: step-weighted averaging, FedNova (aggregation) and SlowMo (outer step).

Update rule, each round t: all K workers start from x_t and run J_i local steps of batch B
(J_i = J = ``client.local_steps``, or J_t from ``steps.rule``, or floor(budget * s_i) with
fixed-time rounds, ``system.budget``), then
    mean:     x_avg = (1/K) sum_i x_i
    steps:    x_avg = sum_i J_i x_i / sum_i J_i                    (strategies/step_weighted.py)
    fednova:  x_avg = x_t - tau_eff sum_i p_i (x_t - x_i)/a_i      (strategies/fednova.py)
    x_{t+1} = outer_step(x_t, x_avg)                               (x_avg here; SlowMo overrides)
K = J = 1 is centralized mini-batch SGD with batch B; J = 1 with K workers is mini-batch SGD with
batch K*B on the union of their batches (tested).

Config keys (``strategy.*``):
    aggregation    mean | steps | fednova
    momentum_mode  what happens to the clients' optimizer state (momentum buffers, Adam moments)
                   between rounds:
                   reset    a fresh optimizer every round, as FedAvg does (default);
                   keep     each node keeps its own state across rounds in its Flower
                            ``context.state`` (it lives on the node: a resumed run starts it fresh);
                   average  every client returns its state with its model, the server averages it
                            like the weights and sends it back with the next model (counted: about
                            twice the bytes with SGD momentum, three times with Adam).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from fedlab_base.checks import check, check_choice
from strategies.blocks import combine
from strategies.fedavg import Params as FedAvgParams
from strategies.fedavg import (
    SeededSampling,
    sorted_contents,
    to_numpy,
    to_record,
    weighted_average,
)
from strategies.fednova import fednova_a, fednova_aggregate
from strategies.params import MomentumParams
from strategies.step_weighted import step_weights

AGGREGATIONS = ("mean", "steps", "fednova")
OPTIMIZER_KEY = "optimizer"  # the ArrayRecord with the averaged optimizer state sent to clients (average)
OPTIMIZER_PREFIX = "optimizer/"  # clients return their optimizer state in the reply's arrays, keys prefixed


@dataclass(frozen=True)
class Params(MomentumParams):
    aggregation: str = "mean"

    def validate(self, p: str) -> None:
        super().validate(p)
        check_choice(f"{p}.aggregation", self.aggregation, AGGREGATIONS)
        check(self.aggregation != "fednova" or self.momentum_mode == "reset", f"{p}.momentum_mode", self.momentum_mode,
              "reset with aggregation=fednova (its a_i assume momentum buffers that start at zero)")


class LocalSGDStrategy(SeededSampling, FedAvg):
    """All K clients every round; aggregation by ``params.aggregation``; then :meth:`outer_step`.

    ``momentum`` and ``nesterov`` describe the clients' optimizer (FedNova's a_i depends on them).
    """

    def __init__(self, params, seed: int, num_clients: int, fraction_evaluate: float = 0.0,
                 momentum: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(FedAvgParams(1.0, num_clients), seed, num_clients, fraction_evaluate)
        self.params, self.client_momentum, self.nesterov = params, momentum, nesterov
        self.x_prev: dict[str, np.ndarray] = {}
        self.lr = 1.0
        self.opt_avg: dict[str, np.ndarray] | None = None  # averaged optimizer state (momentum_mode=average)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.x_prev, self.lr = to_numpy(arrays), float(config["lr"])
        config["momentum-mode"] = self.params.momentum_mode
        return super().configure_train(server_round, arrays, config, grid)

    def extra_content(self, config: ConfigRecord) -> dict:
        if self.params.momentum_mode == "average" and self.opt_avg is not None:
            return {OPTIMIZER_KEY: to_record(self.opt_avg)}
        return {}

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = sorted_contents(valid)

        def part(i: int):  # the replies' models (i = 0) or optimizer states (1), read one at a time
            return (split_prefix(to_numpy(c[self.arrayrecord_key]), OPTIMIZER_PREFIX)[i] for c in contents)

        x_avg = self.aggregate(part(0), contents)
        if self.params.momentum_mode == "average":
            self.opt_avg = weighted_average(part(1), [1.0] * len(contents))
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return to_record(self.outer_step(self.x_prev, x_avg, self.lr)), metrics

    def block_rule(self) -> dict | None:
        agg = self.params.aggregation
        rule = {"mean": "one", "steps": "steps", "fednova": "fednova"}[agg]
        return {"agg-weight": rule, "agg-momentum": float(self.client_momentum), "agg-nesterov": bool(self.nesterov)}

    def aggregate_blocks(self, server_round: int, replies: list[Message],
                         blocks: list) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """:meth:`aggregate_train` from block sums. FedNova: with ``q_i = n_i / a_i`` (the blocks' weights),
        ``x_hat = sum q_i x_i / sum q_i`` and ``N = sum n_i``, its ``x_t - tau_eff sum_i p_i (x_t - x_i)/a_i``
        is ``x_t - tau_eff (sum q_i / N) (x_t - x_hat)``."""
        contents = sorted_contents(replies)
        fednova = self.params.aggregation == "fednova"  # FedNova: x_hat stays float64 for its step
        x_hat, q = combine(((b.sums, b.weight) for b in blocks),
                           {k: "<f8" if fednova else blocks[0].dtypes[k] for k in blocks[0].sums})
        if fednova:
            sizes = [float(c["metrics"]["num-examples"]) for c in contents]
            a = [fednova_a(int(c["metrics"]["steps"]), self.client_momentum, self.nesterov) for c in contents]
            n = float(sum(sizes))
            tau_eff = float(np.dot(np.asarray(sizes) / n, a))
            x_avg = {k: (x0.astype(np.float64) - tau_eff * (q / n) * (x0.astype(np.float64) - x_hat[k])).astype(x0.dtype)
                     for k, x0 in self.x_prev.items()}
        else:
            x_avg = x_hat
        if self.params.momentum_mode == "average":
            opt_dtypes = {k[len(OPTIMIZER_PREFIX):]: v for k, v in blocks[0].dtypes.items() if k.startswith(OPTIMIZER_PREFIX)}
            self.opt_avg, _ = combine(((b.opt_sums, float(b.count)) for b in blocks), opt_dtypes)
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return to_record(self.outer_step(self.x_prev, x_avg, self.lr)), metrics

    def aggregate(self, models: Iterable[dict[str, np.ndarray]], contents) -> dict[str, np.ndarray]:
        """The replies' models (in ``contents`` order, possibly a generator) combined by ``params.aggregation``
        (pure functions of the other modules)."""
        steps = [int(c["metrics"]["steps"]) for c in contents]
        agg = self.params.aggregation
        if agg == "fednova":
            sizes = [float(c["metrics"]["num-examples"]) for c in contents]
            a = [fednova_a(j, self.client_momentum, self.nesterov) for j in steps]
            return fednova_aggregate(self.x_prev, list(models), a, sizes)
        return weighted_average(models, step_weights(steps) if agg == "steps" else [1.0] * len(contents))

    def outer_step(self, x_prev: dict[str, np.ndarray], x_avg: dict[str, np.ndarray], lr: float) -> dict[str, np.ndarray]:
        """The server's step after aggregation: plain LocalSGD takes the average."""
        return x_avg

    def state(self) -> dict:
        return {"opt_avg": self.opt_avg} if self.opt_avg is not None else {}

    def load_state(self, extra: dict) -> None:
        self.opt_avg = extra.get("opt_avg")


def split_prefix(arrays: dict[str, np.ndarray], prefix: str) -> tuple[dict, dict]:
    """``(arrays without the prefixed keys, the prefixed ones with the prefix stripped)``."""
    rest = {k: v for k, v in arrays.items() if not k.startswith(prefix)}
    return rest, {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}


def build(cfg, cls: type = LocalSGDStrategy) -> LocalSGDStrategy:
    """Build the strategy (``cls``: this class or a subclass) from a validated config."""
    opt = cfg.optimizer
    momentum = opt.momentum if opt.name in ("sgd", "lars") else 0.0
    return cls(cfg.strategy.params, cfg.seed, cfg.num_clients, cfg.eval.fraction_clients,
                            momentum=momentum, nesterov=opt.nesterov)

"""Server-side optimizers from Flower, in this harness: FedAvgM, FedAdam, FedYogi.

The maths is Flower's (``flwr.serverapp.strategy``); this module only adds the harness's seeded
client sampling and checkpointable server state. With Delta_t = mean_i(x_i) - x_t (example-weighted):

    fedavgm  (Hsu et al. 2019):  v <- mu v + (-Delta_t) ;  x <- x_t - eta_s v
                                 (Flower's first round sets v = -Delta_t; mu = 0, eta_s = 1 is FedAvg)
    fedadam  (Reddi et al., "Adaptive Federated Optimization", ICLR 2021):
             m <- b1 m + (1 - b1) Delta_t ;  v <- b2 v + (1 - b2) Delta_t^2
             x <- x_t + eta sqrt(1 - b2^(t+1))/(1 - b1^(t+1)) m / (sqrt(v) + tau)
    fedyogi  same with v <- v - (1 - b2) Delta_t^2 sign(v - Delta_t^2)

Config keys (``strategy.*``): ``fraction_train``, ``min_train_clients`` (as FedAvg);
fedavgm: ``server_lr`` (eta_s), ``server_momentum`` (mu); fedadam/fedyogi: ``eta``, ``beta_1``,
``beta_2``, ``tau``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvgM, FedYogi

from fedlab_base.checks import check
from strategies.fedavg import Params as FedAvgParams
from strategies.fedavg import SeededSampling, to_record


@dataclass(frozen=True)
class AvgMParams(FedAvgParams):
    server_lr: float = 1.0
    server_momentum: float = 0.9

    def validate(self, p: str) -> None:
        super().validate(p)
        check(self.server_lr > 0, f"{p}.server_lr", self.server_lr, "a number > 0")
        check(0.0 <= self.server_momentum < 1.0, f"{p}.server_momentum", self.server_momentum, "0 <= mu < 1")


@dataclass(frozen=True)
class OptParams(FedAvgParams):
    eta: float = 0.01
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 0.001

    def validate(self, p: str) -> None:
        super().validate(p)
        check(self.eta > 0, f"{p}.eta", self.eta, "a number > 0")
        check(0.0 <= self.beta_1 < 1.0, f"{p}.beta_1", self.beta_1, "0 <= beta_1 < 1")
        check(0.0 <= self.beta_2 < 1.0, f"{p}.beta_2", self.beta_2, "0 <= beta_2 < 1")
        check(self.tau > 0, f"{p}.tau", self.tau, "a number > 0")


def by_partition(replies) -> list:
    """Replies in partition-id order (errors last): Flower sums in arrival order, which is not reproducible."""
    return sorted(replies, key=lambda m: (m.has_error(), 0 if m.has_error() else m.content["metrics"].get("partition-id", 0)))


class FedAvgMStrategy(SeededSampling, FedAvgM):
    """Flower's FedAvgM; the momentum vector is checkpointed."""

    def aggregate_train(self, server_round: int, replies):
        return super().aggregate_train(server_round, by_partition(replies))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = arrays  # Flower sets it in start(), which the harness's loop replaces
        return super().configure_train(server_round, arrays, config, grid)

    def state(self) -> dict:
        mv = self.momentum_vector
        return {"momentum_vector": {str(i): v for i, v in enumerate(mv)}} if mv is not None else {}

    def load_state(self, extra: dict) -> None:
        mv = extra.get("momentum_vector")
        self.momentum_vector = [mv[str(i)] for i in range(len(mv))] if mv else None


class _FedOptState:
    """FedAdam/FedYogi: track the current model as Flower's FedOpt does; checkpoint m_t and v_t."""

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.current_arrays = {k: a.numpy() for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies):
        """Flower's update, cast back to the model's dtypes (its float64 maths would double the bytes sent)."""
        dtypes = {k: v.dtype for k, v in self.current_arrays.items()}
        arrays, metrics = super().aggregate_train(server_round, by_partition(replies))
        if arrays is None:
            return arrays, metrics
        return to_record({k: v.numpy().astype(dtypes[k]) for k, v in arrays.items()}), metrics

    def state(self) -> dict:
        return {k: getattr(self, k) for k in ("m_t", "v_t") if getattr(self, k)}

    def load_state(self, extra: dict) -> None:
        self.m_t, self.v_t = extra.get("m_t"), extra.get("v_t")


class FedAdamStrategy(_FedOptState, SeededSampling, FedAdam):
    """Flower's FedAdam with seeded sampling."""


class FedYogiStrategy(_FedOptState, SeededSampling, FedYogi):
    """Flower's FedYogi with seeded sampling."""


def build_avgm(cfg) -> FedAvgMStrategy:
    """Build FedAvgM from a validated config."""
    p = cfg.strategy.params
    return FedAvgMStrategy(p, cfg.seed, cfg.num_clients, cfg.eval.fraction_clients,
                           server_learning_rate=p.server_lr, server_momentum=p.server_momentum)


def _build_opt(cls: type):
    def build(cfg):
        p = cfg.strategy.params
        return cls(p, cfg.seed, cfg.num_clients, cfg.eval.fraction_clients, eta=p.eta, eta_l=cfg.client.lr,
                   beta_1=p.beta_1, beta_2=p.beta_2, tau=p.tau)
    build.__doc__ = f"Build {cls.__name__} from a validated config."
    return build


build_adam = _build_opt(FedAdamStrategy)
build_yogi = _build_opt(FedYogiStrategy)


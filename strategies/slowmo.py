"""SlowMo: slow momentum on top of local-SGD averaging (Wang, Tantia, Ballas, Rabbat, "SlowMo:
Improving Communication-Efficient Distributed SGD with Slow Momentum", ICLR 2020).

Update rule, each round t, after the K workers' J local steps from x_t and their average x_avg:
    u_{t+1} <- beta * u_t + (x_t - x_avg) / gamma_t
    x_{t+1} <- x_t - alpha * gamma_t * u_{t+1}
gamma_t is the base (client) learning rate of the round. alpha = 1, beta = 0 gives x_{t+1} = x_avg,
i.e. LocalSGD (tested to be exact).

Config keys (``strategy.*``): ``alpha`` slow learning rate (> 0, default 1.0), ``beta`` slow momentum
in [0, 1), plus LocalSGD's ``aggregation`` and ``momentum_mode``. The slow momentum ``u`` lives on
the server and is checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedlab_base.checks import check
from strategies import localsgd
from strategies.localsgd import LocalSGDStrategy
from strategies.localsgd import Params as LocalParams


@dataclass(frozen=True)
class Params(LocalParams):
    alpha: float = 1.0
    beta: float = 0.5

    def validate(self, p: str) -> None:
        super().validate(p)
        check(self.alpha > 0, f"{p}.alpha", self.alpha, "a number > 0")
        check(0.0 <= self.beta < 1.0, f"{p}.beta", self.beta, "0 <= beta < 1")


def slowmo_update(x_prev: dict[str, np.ndarray], x_avg: dict[str, np.ndarray], u: dict[str, np.ndarray] | None,
                  alpha: float, beta: float, gamma: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One SlowMo outer step: returns ``(x_new, u_new)``; ``u=None`` means zeros. Float64 inside.

    Integer buffers (BatchNorm's ``num_batches_tracked``) are taken from ``x_avg`` unchanged.
    """
    x_new, u_new = {}, {}
    for k, xp in x_prev.items():
        if not np.issubdtype(xp.dtype, np.floating):
            x_new[k] = x_avg[k]
            continue
        d = (xp.astype(np.float64) - x_avg[k].astype(np.float64)) / gamma
        uk = d if u is None or k not in u else beta * u[k] + d
        u_new[k] = uk
        x_new[k] = (xp.astype(np.float64) - alpha * gamma * uk).astype(xp.dtype)
    return x_new, u_new


class SlowMoStrategy(LocalSGDStrategy):
    """LocalSGD averaging followed by :func:`slowmo_update`; the slow momentum ``u`` is checkpointed."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.u: dict[str, np.ndarray] | None = None

    def outer_step(self, x_prev: dict[str, np.ndarray], x_avg: dict[str, np.ndarray], lr: float) -> dict[str, np.ndarray]:
        x_new, self.u = slowmo_update(x_prev, x_avg, self.u, self.params.alpha, self.params.beta, lr)
        return x_new

    def state(self) -> dict:
        return {**super().state(), **({"slowmo_u": self.u} if self.u is not None else {})}

    def load_state(self, extra: dict) -> None:
        super().load_state(extra)
        self.u = extra.get("slowmo_u")


def build(cfg) -> SlowMoStrategy:
    """Build the strategy from a validated config."""
    return localsgd.build(cfg, SlowMoStrategy)

"""FedNova: normalized averaging (Wang, Liu, Liang, Joshi, Poor, "Tackling the Objective Inconsistency
Problem in Heterogeneous Federated Optimization", NeurIPS 2020).

Update rule, each round, client i ran tau_i local steps from x_t and returns x_i:
    d_i     = x_t - x_i                                  (its cumulative update, lr included)
    a_i     = tau_i                                      (plain SGD, AdamW, LAMB: a_i = steps)
            = [tau_i - rho (1 - rho^tau_i)/(1 - rho)] / (1 - rho)     (SGD with heavy-ball momentum
              rho: ||a_i||_1 of the momentum recursion, sum_{k=1..tau_i} (1 - rho^k)/(1 - rho))
            = tau_i + rho/(1 - rho) [tau_i - rho (1 - rho^tau_i)/(1 - rho)]   (Nesterov momentum)
    (a_i is the total weight of the gradients in the update when the buffers start at zero, i.e.
     ``momentum_mode=reset``; tested on a constant gradient, where x_i = x_t - lr a_i g exactly)
    p_i     = n_i / sum_j n_j                            (data share)
    tau_eff = sum_i p_i a_i
    x_{t+1} = x_t - tau_eff * sum_i p_i d_i / a_i
tau_eff is NOT cancelled by renormalizing the weights (as Flower's FedNova baseline does): it sets
the global step size. With equal tau_i and n_i this is FedAvg exactly (tested). A LocalSGD variant:
``strategy=fednova`` is ``strategy=localsgd strategy.aggregation=fednova``; config key
``momentum_mode`` as in LocalSGD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlab_base.checks import check
from strategies.params import MomentumParams


def fednova_a(steps: int, momentum: float = 0.0, nesterov: bool = False) -> float:
    """``||a_i||_1`` for ``steps`` local SGD steps with momentum ``rho`` (0 <= rho < 1), heavy-ball or Nesterov."""
    if momentum == 0.0:
        return float(steps)
    rho = momentum
    heavy = (steps - rho * (1.0 - rho ** steps) / (1.0 - rho)) / (1.0 - rho)
    return steps + rho * heavy if nesterov else heavy


def fednova_aggregate(x_prev: dict[str, np.ndarray], models: Sequence[dict[str, np.ndarray]], a: Sequence[float],
                      sizes: Sequence[float]) -> dict[str, np.ndarray]:
    """``x_t - tau_eff * sum_i p_i (x_t - x_i)/a_i`` with ``p_i = n_i/sum n`` and ``tau_eff = sum p_i a_i``.

    Float64 inside; integer buffers are averaged with the data shares and rounded.
    """
    if not models or not (len(models) == len(a) == len(sizes)):
        raise ValueError(f"need one a_i and one n_i per model: {len(models)} models, {len(a)} a, {len(sizes)} n")
    if any(ai <= 0 for ai in a) or any(n < 0 for n in sizes) or sum(sizes) <= 0:
        raise ValueError(f"a_i must be > 0 and n_i >= 0 with a positive sum; got a={list(a)}, n={list(sizes)}")
    p = np.asarray(sizes, dtype=np.float64) / float(sum(sizes))
    tau_eff = float(np.dot(p, a))
    out = {}
    for k, xp in x_prev.items():
        if not np.issubdtype(xp.dtype, np.floating):
            out[k] = np.rint(sum(pi * m[k].astype(np.float64) for pi, m in zip(p, models))).astype(xp.dtype)
            continue
        x0 = xp.astype(np.float64)
        step = sum(pi * (x0 - m[k].astype(np.float64)) / ai for pi, ai, m in zip(p, a, models))
        out[k] = (x0 - tau_eff * step).astype(xp.dtype)
    return out


@dataclass(frozen=True)
class Params(MomentumParams):
    @property
    def aggregation(self) -> str:
        return "fednova"

    def validate(self, p: str) -> None:
        super().validate(p)
        check(self.momentum_mode == "reset", f"{p}.momentum_mode", self.momentum_mode,
              "reset with strategy=fednova (its a_i assume momentum buffers that start at zero)")


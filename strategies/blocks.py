"""Block sums: a node holding many virtual clients sends the weighted sum of their models, not the models.

Every aggregation of fedlab's synchronous strategies is a weighted average of the clients' models,
``x_hat = sum_i c_i x_i / sum_i c_i``, followed by a step of the server's own (SlowMo's outer step,
FedNova's rescaling). The weight c_i of client i depends on nothing but its own reply
(:func:`reply_weight`): its examples n_i (FedAvg), 1 (LocalSGD's mean), its steps J_i (step-weighted),
or n_i / a_i (FedNova, a_i from J_i and the clients' momentum). So a node that trains a block B of
clients can send ``S_B = sum_{i in B} c_i x_i`` and ``C_B = sum_{i in B} c_i`` (float64), and the
server combines the blocks, ``x_hat = sum_B S_B / sum_B C_B``: the same maths, summed in another order
(float64 rounding, then cast back: equal within 1e-7 relative on float32 models). A node's reply is
then one model's worth of sums instead of p models, whatever p: 1,000 clients cost the server and the
workers what 16 do.

What the algorithm sends stays counted per virtual client (one model per client and direction); only
``transport_*`` see the sums. Flower's own strategies (FedAvgM, FedAdam, FedYogi) aggregate the replies
themselves and keep per-client replies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from strategies.fednova import fednova_a

RULES = ("num-examples", "one", "steps", "fednova")


def reply_weight(rule: str, metrics: Mapping[str, Any], momentum: float = 0.0, nesterov: bool = False) -> float:
    """The unnormalized weight c_i of a client's reply in its strategy's weighted average.

    ``rule``: "num-examples" (n_i, FedAvg), "one" (LocalSGD's mean), "steps" (J_i, step-weighted),
    "fednova" (n_i / a_i with ``a_i = fednova_a(J_i, momentum, nesterov)``).
    """
    if rule == "num-examples":
        return float(metrics["num-examples"])
    if rule == "one":
        return 1.0
    if rule == "steps":
        return float(metrics["steps"])
    if rule == "fednova":
        return float(metrics["num-examples"]) / fednova_a(int(metrics["steps"]), momentum, nesterov)
    raise ValueError(f"block weight rule {rule!r}; allowed: {', '.join(RULES)}")


class BlockSum:
    """``S = sum_i c_i x_i`` (float64, in the order added) and ``C = sum_i c_i`` of one block of clients."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, str] = {}  # each array's own dtype, to cast the average back to
        self.weight = 0.0
        self.count = 0

    def add(self, arrays: Mapping[str, np.ndarray], c: float) -> None:
        for k, v in arrays.items():
            v = np.asarray(v)
            if self.count == 0:
                self.sums[k], self.dtypes[k] = c * v.astype(np.float64), v.dtype.str
            else:
                self.sums[k] += c * v.astype(np.float64)
        self.weight += c
        self.count += 1


@dataclass(frozen=True)
class Block:
    """One node's block as the server receives it: S (float64), C, the client count, the optimizer states'
    plain sums (``momentum_mode=average``) and the dtypes to cast averages back to (optimizer keys
    prefixed ``optimizer/``)."""

    sums: dict[str, np.ndarray]
    weight: float
    count: int
    opt_sums: dict[str, np.ndarray] | None
    dtypes: dict[str, str]


def combine(blocks: Iterable[tuple[Mapping[str, np.ndarray], float]],
            dtypes: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], float]:
    """``(sum_B S_B / sum_B C_B, sum_B C_B)``: the weighted average of every block's clients (blocks in a fixed
    order), each array cast to ``dtypes`` (integer buffers rounded, as ``weighted_average`` does)."""
    dtypes = {k: np.dtype(v) for k, v in dtypes.items()}
    total: dict[str, np.ndarray] = {}
    weight = 0.0
    for n, (sums, c) in enumerate(blocks):
        for k, v in sums.items():
            if n == 0:
                total[k] = np.array(v, dtype=np.float64)
            else:
                total[k] += v
        weight += c
    if not total or weight <= 0:
        raise ValueError(f"block sums need a positive total weight, got {weight}")
    return {k: np.rint(v / weight).astype(dtypes[k]) if np.issubdtype(dtypes[k], np.integer)
            else (v / weight).astype(dtypes[k]) for k, v in total.items()}, weight

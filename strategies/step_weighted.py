"""Step-weighted averaging for clients that ran unequal numbers of local steps.

Update rule: x_{t+1} = sum_i J_i x_i / sum_i J_i   (J_i = local steps client i ran this round).
With equal J_i it is the plain average (tested). A LocalSGD variant: ``strategy=step_weighted`` is
``strategy=localsgd strategy.aggregation=steps``; config key ``momentum_mode`` as in LocalSGD.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from strategies.params import MomentumParams


def step_weights(steps: Sequence[float]) -> list[float]:
    """Aggregation weights proportional to the steps each client ran: ``J_i / sum_j J_j``."""
    total = float(sum(steps))
    if total <= 0 or any(s < 0 for s in steps):
        raise ValueError(f"steps must be non-negative with a positive sum, got {list(steps)}")
    return [s / total for s in steps]


@dataclass(frozen=True)
class Params(MomentumParams):
    @property
    def aggregation(self) -> str:
        return "steps"


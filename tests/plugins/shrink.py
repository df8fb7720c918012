"""A toy strategy with its own loop, outside the package: it plugs in through the registry alone.

Update rule, each round: x <- (1 - shrink) * x (no data, no nodes); its own metrics column
``toy_scale`` is the cumulative factor (1 - shrink)^t, and its own checkpoint state is t.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from fedlab_base.checks import check
from strategies.modes import RoundOut, RoundPlan


@dataclass(frozen=True)
class Params:
    shrink: float = 0.5

    def validate(self, p: str) -> None:
        check(0.0 <= self.shrink < 1.0, f"{p}.shrink", self.shrink, "0 <= shrink < 1")


class ShrinkMode:
    name: ClassVar[str] = "shrink"
    columns: ClassVar[tuple[str, ...]] = ("toy_scale",)
    tolerates_failures: ClassVar[bool] = False
    uses_nodes: ClassVar[bool] = False

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        self.s = run.cfg.strategy.params.shrink
        self.x, self.t = arrays, int(state["t"]) if "t" in state else 0

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        self.t += 1
        self.x = {k: (v * (1 - self.s)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                  for k, v in self.x.items()}
        metrics = {"train-loss": 1.0, "train-acc": 0.0, "examples-processed": 1, "steps": 0, "partition-id": 0}
        return RoundOut(self.x, [metrics], 1, row={"toy_scale": (1 - self.s) ** self.t}, duration_s=0.0)

    def state(self) -> dict:
        return {"t": torch.tensor(self.t)}

    def finish(self) -> dict:
        return {"toy_rounds": self.t}

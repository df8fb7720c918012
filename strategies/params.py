"""Params shared by several strategies: what happens to a node's optimizer state between rounds.

``momentum_mode``:
    reset    a fresh optimizer every round, as FedAvg does;
    keep     each node keeps its own state across rounds in its Flower ``context.state`` (it lives on
             the node: a resumed run starts it fresh);
    average  every client returns its state with its model, the server averages it like the weights
             and sends it back with the next model (LocalSGD family only; counted in the bytes).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlab_base.checks import check_choice

MOMENTUM_MODES = ("reset", "keep", "average")


@dataclass(frozen=True)
class MomentumParams:
    momentum_mode: str = "reset"

    def validate(self, p: str) -> None:
        check_choice(f"{p}.momentum_mode", self.momentum_mode, MOMENTUM_MODES)

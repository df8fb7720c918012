"""Centralized baseline (no federation): plain mini-batch training on the whole training set.

Update rule, each step on a mini-batch b of size B drawn from the seeded epoch permutation:
    x <- optimizer_step(x, grad L_b(x), lr_t)        (SGD/Nesterov/AdamW/LARS/LAMB, clients/optim.py)
with lr_t from the schedule over epochs (clients/schedule.py). Runs in one process, without Flower
(fedlab_app/centralized.py); same results contract, with no messages.

Config keys (``strategy.*``):
    epochs   number of epochs (the run's "rounds" column counts epochs)
    threads  torch threads (0 = all cores)
"""

from __future__ import annotations

from dataclasses import dataclass

from fedlab_app.config import check


@dataclass(frozen=True)
class Params:
    epochs: int = 15
    threads: int = 0

    def validate(self, p: str) -> None:
        check(self.epochs >= 1, f"{p}.epochs", self.epochs, "an integer >= 1")
        check(self.threads >= 0, f"{p}.threads", self.threads, "0 (all cores) or an integer >= 1")


def run(cfg, run_dir):
    """Run the centralized baseline (imported lazily: it needs no Flower)."""
    from fedlab_app.centralized import run as run_centralized

    return run_centralized(cfg, run_dir)

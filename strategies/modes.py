"""What the round driver (``fedlab_app/driver.py``) and a mode say to each other.

A *mode* is an algorithm that shapes a round: the synchronous FedAvg family (``strategies/sync.py``),
peer-to-peer gossip (``strategies/gossip_mode.py``), the asynchronous parameter server
(``strategies/async_mode.py``) and the centralized baseline (``strategies/centralized.py``). The
driver owns everything else: the recorder and resume, the initial model, the round plan (lr, steps
per client), node discovery, message counting (one counting grid), the failure policy,
evaluation, checkpoints and the end of the run. A mode declares its own metrics columns and its
own checkpoint state; adding one touches no other mode, ``results.py`` or ``plots.py``.

On the node, the message's ``mode`` config value picks the mode's ``client_fit(msg, node)``; every
client_fit trains through the one ``node.fit(...)`` call (``fedlab_app/client_app.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol


@dataclass(frozen=True)
class RoundPlan:
    """What the driver decided for round ``rnd``: learning rate, local epochs, steps per partition id."""

    rnd: int
    lr: float
    epochs: int
    steps: list[int]  # one entry per partition id; 0 = train ``epochs`` epochs

    def train_config(self, mode: str, **extra: Any) -> dict:
        """The train message's config: the plan, the mode value the node dispatches on, and ``extra``."""
        return {"mode": mode, "lr": self.lr, "local-epochs": self.epochs, "local-steps": list(self.steps),
                "server-round": self.rnd, **extra}


@dataclass
class RoundOut:
    """What a mode's round produced.

    ``arrays`` is the model the driver evaluates and checkpoints (the global model, or the
    consensus); ``metrics`` the training replies' metrics (``train-loss``, ``train-acc``,
    ``examples-processed``, ``steps``, ``partition-id``, ``compute-s``), from which the driver takes
    the round's training loss (the mean over the examples processed) and its simulated time;
    ``row`` the mode's own metrics columns. Simulated time: ``clock_s`` sets the run's clock
    (async), else ``duration_s`` is added, else the driver computes the round's time from the
    metrics and ``bytes_by_node`` (default: every byte the counting grid saw this round).
    """

    arrays: dict
    metrics: list[dict]
    clients: int
    row: dict = field(default_factory=dict)
    duration_s: float | None = None
    clock_s: float | None = None
    bytes_by_node: dict | None = None


class Mode(Protocol):
    """A mode plugged into the driver. ``run`` is the driver's :class:`fedlab_app.driver.RunContext`."""

    name: ClassVar[str]  # the ``mode`` value its messages carry
    columns: ClassVar[tuple[str, ...]]  # its own metrics.csv columns, after the common ones
    tolerates_failures: ClassVar[bool]  # True: a failed node is logged and skipped; False: the run fails, naming it
    uses_nodes: ClassVar[bool]  # False: runs in the server process (no Flower nodes)
    # Optional, default False. True promises that every round makes a ``send_and_receive`` and that the tensors
    # ``state()`` returns are never changed in place afterwards (copies, or arrays a round replaces): round r's
    # record (evaluation, row, checkpoint) is then made in a thread beside the server's step on round r+1's
    # replies (``fedlab_app/overlap.py``; ``RoundOut.arrays`` is copied).
    overlaps_end_of_round: ClassVar[bool]

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        """Begin (or resume, ``state`` from the checkpoint) with the global model ``arrays``."""

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        """Run one round over the counting grid."""

    def state(self) -> dict:
        """Tensors and numbers the checkpoint must hold to resume exactly."""

    def finish(self) -> dict:
        """Draw the mode's own plots; return extra summary.json fields."""


def mean_over_examples(metrics: list[dict], key: str) -> float:
    """``sum_i n_i m_i / sum_i n_i`` with n_i the examples each reply processed (NaN when none)."""
    if len(metrics) == 1:
        return float(metrics[0][key])
    n = sum(float(m["examples-processed"]) for m in metrics)
    if not metrics or n <= 0:
        return math.nan
    return sum(float(m[key]) * float(m["examples-processed"]) for m in metrics) / n

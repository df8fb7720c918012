"""Per-round plan of a synchronous run: how many local steps each client runs, and simulated time.

Glue between the pure rules (``strategies/local_steps.py``: J_t by rule; ``clients/system.py``:
speeds, fixed-time budgets, round time) and the server loop. The plan travels to the clients in
the train config as ``local-steps``: one entry per partition id (0 = train ``local-epochs``
epochs instead), so heterogeneous step counts need no per-node messages.
"""

from __future__ import annotations

import logging
import math

from clients import system
from fedlab_app.config import Config
from strategies.local_steps import steps_at

log = logging.getLogger("fedlab")


class RoundPlanner:
    """Steps per client for each round, and the simulated duration of a round from its replies."""

    def __init__(self, cfg: Config, base_lr: float) -> None:
        self.cfg, self.base_lr = cfg, base_lr
        s = cfg.system
        self.speeds = system.client_speeds(s.profile, cfg.num_clients, cfg.seed, s.ratios, s.sigma)
        self.loss0 = math.nan  # adacomm: the first round's training loss
        self.last_loss = math.nan

    def steps(self, rnd: int, lr: float) -> list[int]:
        """``local-steps`` for round ``rnd``: one entry per partition (all 0 in epochs mode)."""
        cfg, k = self.cfg, self.cfg.num_clients
        if cfg.system.budget > 0:
            steps, raised = system.budget_steps(cfg.system.budget, self.speeds)
            if raised and rnd == 1:
                log.warning("system.budget=%g gives clients %s zero steps per round; they run 1 step (and take "
                            "longer than the budget)", cfg.system.budget, raised)
            return steps
        if cfg.client.local_steps == 0:
            return [0] * k
        st = cfg.steps
        j = steps_at(st.rule, rnd, cfg.rounds, cfg.client.local_steps, final=st.final, lr=lr, lr0=self.base_lr,
                     lr_power=st.lr_power, loss=self.last_loss, loss0=self.loss0, switch_round=st.switch_round,
                     max_steps=st.max)
        return [j] * k

    def observe(self, train_loss: float) -> None:
        """Feed the round's mean training loss (the adacomm rule's F_t)."""
        if math.isnan(self.loss0):
            self.loss0 = train_loss
        self.last_loss = train_loss

    def round_time(self, replies_metrics: list[dict], bytes_by_pid: dict[int, int]) -> float:
        """Simulated round time: the slowest client's compute (system model) + transfer time."""
        s = self.cfg.system
        compute, transfer = [], []
        for m in replies_metrics:
            pid = int(m["partition-id"])
            compute.append(system.compute_time(int(m["steps"]), float(self.speeds[pid]), s.step_time_s,
                                               float(m["compute-s"])))
            transfer.append(system.transfer_time(bytes_by_pid.get(pid, 0), s.bandwidth_mbps, s.latency_ms))
        return system.round_time(compute, transfer)

    def state(self) -> dict:
        return {"loss0": self.loss0, "last_loss": self.last_loss}

    def load_state(self, d: dict) -> None:
        self.loss0, self.last_loss = d.get("loss0", math.nan), d.get("last_loss", math.nan)

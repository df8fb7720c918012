"""The asynchronous mode: the parameter server of ``strategies/async_sgd.py`` on Flower's Grid.

Work goes out with ``push_messages`` and comes back through ``pull_messages`` (both non-blocking,
both counted by the driver's counting grid), so up to M workers compute at once. With the virtual
clock the server takes results in finish-time order: it waits for the earliest one's reply even if
a later one is already there. One "round" in metrics.csv is a round-equivalent: M applied results
(async) or one barrier step over M gradients (``sync``). The simulated time is the virtual clock
(or the wall clock with ``clock=real``). Checkpoints hold the model, the server state and every
in-flight worker's start model, finish time and step index, so a resumed run re-issues the same
work (not counted again) and continues exactly. Failure policy: a failed worker fails the run,
named (its result cannot be replaced without changing the algorithm).

On the node (:func:`client_fit`): J plain SGD steps (no momentum: momentum and delay compensation
live on the server) from the received model; the reply is the pseudo-gradient
g = (w_start - w_end)/lr (for J = 1, the mini-batch gradient). The batches of the k-th computation
come from the seeded permutation block k, so a result depends only on (model, worker, k). With
``clock=real`` the worker first sleeps its delay.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from strategies import async_sgd as A
from strategies.fedavg import to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan
from strategies.sync import tree_numpy, tree_torch

DEFAULT_STEP_TIME_S = 0.01  # virtual seconds per local step at speed 1 when system.step_time_s is 0


class AsyncMode:
    """Dispatches work, collects replies in the clock's order, applies them; knows how to checkpoint."""

    name: ClassVar[str] = "async"
    columns: ClassVar[tuple[str, ...]] = ("staleness_mean", "staleness_max")
    tolerates_failures: ClassVar[bool] = False
    uses_nodes: ClassVar[bool] = True

    def start(self, run: Any, arrays: dict, state: dict) -> None:
        cfg = self.cfg = run.cfg
        self.run, self.p, self.m, self.w = run, cfg.strategy.params, cfg.num_clients, arrays
        self.j = max(cfg.client.local_steps, 1)
        self.speeds = run.speeds
        self.step_time = cfg.system.step_time_s or DEFAULT_STEP_TIME_S
        self.clock, self.state_ = A.VirtualClock(), A.ServerState()
        self.now, self.next_k = 0.0, [0] * self.m
        self.inflight: dict[int, dict] = {}  # worker -> start version, start model, k, lr, finish, message id
        self.replies: dict[str, Message] = {}
        self.staleness: list[int] = []
        self.grid = run.grid
        if "version" in state:  # resumed: server state, and the in-flight work re-issued as it was
            self._restore(state)
        elif not self.p.sync:
            lr = run.lr(run.first_round)
            for wk in range(self.m):
                self.dispatch(wk, self.w, lr)
        self.t0 = time.perf_counter() - run.sim_time_s

    def dispatch(self, worker: int, w: dict[str, np.ndarray], lr: float, k: int | None = None,
                 finish: float | None = None) -> None:
        """Send ``w`` to ``worker`` for its next computation, or (``k`` given) re-issue in-flight work after a
        resume: same model, step index and finish time, not counted again (the checkpointed ledger has it)."""
        resend = k is not None
        if not resend:
            k = self.next_k[worker]
            self.next_k[worker] += 1
        delay = A.delay_s(self.p, worker, k, self.cfg.seed)
        if not resend:
            finish = self.now + self.j * self.step_time / self.speeds[worker] + delay
            if self.p.clock == "virtual" and not self.p.sync:  # sync mode waits for all: no ordering needed
                self.clock.start(worker, self.now, finish - self.now)
        conf = {"mode": self.name, "lr": lr, "local-steps": [self.j] * self.m, "local-epochs": 1,
                "server-round": k + 1, "update-index": k, "sleep-s": delay if self.p.clock == "real" else 0.0}
        msg = self.run.message(worker, {"arrays": to_record(w), "config": ConfigRecord(conf)})
        (mid,) = list(self.grid.push_messages([msg], count=not resend))
        self.inflight[worker] = {"version": self.state_.version, "w": w, "k": k, "lr": lr, "finish": finish, "id": mid}

    def _collect(self, rnd: int, worker: int | None) -> tuple[int, Message]:
        """Wait for ``worker``'s reply (virtual clock: pull only that one) or for any reply (``None``, real clock)."""
        while True:
            for wk, f in sorted(self.inflight.items()):
                if (worker is None or wk == worker) and f["id"] in self.replies:
                    rep = self.replies.pop(f["id"])
                    self.run.keep_ok(rnd, [rep], self.grid)
                    return wk, rep
            ids = [f["id"] for wk, f in self.inflight.items() if (worker is None or wk == worker)
                   and f["id"] not in self.replies]
            for rep in self.grid.pull_messages(ids):
                self.replies[rep.metadata.reply_to_message_id] = rep
            time.sleep(0.002)

    def round(self, plan: RoundPlan, grid: Any) -> RoundOut:
        p, m, rnd, lr = self.p, self.m, plan.rnd, plan.lr
        metrics = []
        if p.sync:  # barrier: all from the same version, apply the mean, time = the slowest
            for wk in range(m):
                self.dispatch(wk, self.w, lr)
            finish = max(f["finish"] for f in self.inflight.values())
            res = [self._collect(rnd, wk) for wk in range(m)]
            metrics = [dict(rep.content["metrics"]) for _, rep in res]
            self.w = A.server_step(self.w, A.mean_gradient([to_numpy(rep.content["arrays"]) for _, rep in res]),
                                   lr, p, self.state_)
            self.staleness += [0] * m
            self.now = finish if p.clock == "virtual" else time.perf_counter() - self.t0
            self.inflight.clear()
        else:
            for i in range(m):
                if p.clock == "virtual":
                    self.now, wk = self.clock.pop()
                    wk, rep = self._collect(rnd, wk)
                else:
                    wk, rep = self._collect(rnd, None)
                    self.now = time.perf_counter() - self.t0
                metrics.append(dict(rep.content["metrics"]))
                f = self.inflight.pop(wk)
                self.staleness.append(self.state_.version - f["version"])
                self.w = A.server_step(self.w, to_numpy(rep.content["arrays"]), lr, p, self.state_, wk, f["w"])
                if rnd < self.run.total or i < m - 1:  # no new work after the run's last update
                    self.dispatch(wk, self.w, lr)
        recent = self.staleness[-m:]
        row = {"staleness_mean": float(np.mean(recent)), "staleness_max": int(max(recent))}
        return RoundOut(self.w, metrics, m, row=row, clock_s=self.now)

    def state(self) -> dict:
        s = self.state_
        return {"version": torch.tensor(s.version), "now": torch.tensor(self.now, dtype=torch.float64),
                "next_k": torch.tensor(self.next_k), "velocity": tree_torch(s.velocity or {}),
                "mean_square": {str(k): tree_torch(v) for k, v in (s.mean_square or {}).items()},
                "staleness": torch.tensor(self.staleness, dtype=torch.int64),
                "inflight": {str(wk): {"w": tree_torch(f["w"]), "meta": torch.tensor(
                    [f["version"], f["k"], f["lr"], f["finish"]], dtype=torch.float64)} for wk, f in self.inflight.items()}}

    def _restore(self, extra: dict) -> None:
        s = self.state_
        s.version, self.now = int(extra["version"]), float(extra["now"])
        self.next_k = [int(k) for k in extra["next_k"].tolist()]
        s.velocity = tree_numpy(extra["velocity"]) or None
        s.mean_square = {int(k): tree_numpy(v) for k, v in extra["mean_square"].items()} or None
        self.staleness = extra["staleness"].tolist()
        for wk, f in sorted(extra["inflight"].items(), key=lambda kv: int(kv[0])):
            version, k, lr, finish = f["meta"].tolist()
            self.dispatch(int(wk), tree_numpy(f["w"]), lr, int(k), finish)
            self.inflight[int(wk)]["version"] = int(version)
            if self.p.clock == "virtual":
                self.clock.start(int(wk), finish, 0.0)

    def finish(self) -> dict:
        p = self.p
        self.run.plots.plot_staleness(self.staleness, self.run.run_dir.plots_dir / "staleness.png",
                                      f"{'sync' if p.sync else 'async'} SGD, {self.m} workers, delay={p.delay} "
                                      f"{p.delay_ms:g} ms")
        return {"staleness_histogram": A.staleness_histogram(self.staleness),
                "staleness_mean": float(np.mean(self.staleness)) if self.staleness else 0.0,
                "updates": self.state_.version}


def client_fit(msg: Any, node: Any) -> Any:
    """One asynchronous-SGD computation on a node: J plain SGD steps, reply with the pseudo-gradient."""
    conf = msg.content["config"]
    if float(conf["sleep-s"]) > 0:
        time.sleep(float(conf["sleep-s"]))
    lr, k = float(conf["lr"]), int(conf["update-index"])
    start = {k_: v.detach().clone() for k_, v in node.model.state_dict().items()}
    opt = torch.optim.SGD(node.model.parameters(), lr=lr)
    res = node.fit(opt, conf, first_epoch=k << 20)
    grad = {}
    for name, v in node.model.state_dict().items():
        w0 = start[name]
        g = (w0.double() - v.double()) / lr if w0.is_floating_point() else torch.zeros_like(w0)
        grad[name] = Array(np.ascontiguousarray(g.to(w0.dtype).numpy()))
    return node.reply(msg, ArrayRecord(grad), res)

"""The parameter-server loop of asynchronous SGD (``strategies/async_sgd.py``) on Flower's Grid.

Work goes out with ``push_messages`` and comes back through ``pull_messages`` (both non-blocking),
so up to M workers compute at once. With the virtual clock the server takes results in
finish-time order: it waits for the earliest one's reply even if a later one is already there.
One "round" in metrics.csv is a round-equivalent: M applied results (async) or one barrier step
over M gradients (``sync``). ``sim_time_s`` is the virtual clock (or the wall clock with
``clock=real``). Checkpoints hold the model, the server state and every in-flight worker's start
model, finish time and step index, so a resumed run re-issues the same work and continues exactly.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from clients.schedule import lr_at, scaled_lr
from fedlab_app import plots
from fedlab_app.comm import message_bytes
from fedlab_app.config import Config
from fedlab_app.gossip_loop import discover
from fedlab_app.planner import RoundPlanner
from fedlab_app.recorder import Recorder
from fedlab_app.results import RunDir
from fedlab_app.server_loop import initial_arrays, tree_numpy, tree_torch, wait_for_nodes
from strategies import async_sgd as A
from strategies.fedavg import to_numpy, to_record

DEFAULT_STEP_TIME_S = 0.01  # virtual seconds per local step at speed 1 when system.step_time_s is 0


class Server:
    """Dispatches work, collects replies in the clock's order, applies them; knows how to checkpoint."""

    def __init__(self, cfg: Config, grid, node_of: dict[int, int], rec: Recorder) -> None:
        self.cfg, self.p, self.grid, self.node_of, self.rec = cfg, cfg.strategy.params, grid, node_of, rec
        self.m = cfg.num_clients
        self.j = max(cfg.client.local_steps, 1)
        self.speeds = RoundPlanner(cfg, 1.0).speeds
        self.step_time = cfg.system.step_time_s or DEFAULT_STEP_TIME_S
        self.clock = A.VirtualClock()
        self.state = A.ServerState()
        self.now, self.next_k = 0.0, [0] * self.m
        self.inflight: dict[int, dict] = {}  # worker -> start version, start model, k, lr, finish, message id
        self.replies: dict[str, Message] = {}
        self.staleness: list[int] = []

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
        conf = {"async": 1, "lr": lr, "local-steps": [self.j] * self.m, "local-epochs": 1, "server-round": k + 1,
                "update-index": k, "sleep-s": delay if self.p.clock == "real" else 0.0}
        msg = Message(RecordDict({"arrays": to_record(w), "config": ConfigRecord(conf)}),
                      dst_node_id=self.node_of[worker], message_type="train")
        (mid,) = list(self.grid.push_messages([msg]))
        if not resend:
            self.rec.state.ledger.record("down", worker, message_bytes(msg))
        self.inflight[worker] = {"version": self.state.version, "w": w, "k": k, "lr": lr, "finish": finish, "id": mid}

    def _pull(self) -> None:
        pending = [f["id"] for f in self.inflight.values() if f["id"] not in self.replies]
        for rep in self.grid.pull_messages(pending):
            self.replies[rep.metadata.reply_to_message_id] = rep

    def collect(self, worker: int | None) -> tuple[int, Message]:
        """Wait for ``worker``'s reply (virtual clock) or for any reply (``worker=None``, real clock)."""
        while True:
            if worker is not None and self.inflight[worker]["id"] in self.replies:
                return worker, self.replies.pop(self.inflight[worker]["id"])
            if worker is None:
                for wk, f in sorted(self.inflight.items()):
                    if f["id"] in self.replies:
                        return wk, self.replies.pop(f["id"])
            self._pull()
            time.sleep(0.002)

    def result(self, worker: int, rep: Message) -> dict[str, np.ndarray]:
        if rep.has_error():
            raise RuntimeError(f"worker {worker} failed: {rep.error.reason[:300]}")
        self.rec.state.ledger.record("up", worker, message_bytes(rep))
        return to_numpy(rep.content["arrays"])

    def checkpoint(self) -> dict:
        s = self.state
        return {"version": torch.tensor(s.version), "now": torch.tensor(self.now, dtype=torch.float64),
                "next_k": torch.tensor(self.next_k), "velocity": tree_torch(s.velocity or {}),
                "mean_square": {str(k): tree_torch(v) for k, v in (s.mean_square or {}).items()},
                "staleness": torch.tensor(self.staleness, dtype=torch.int64),
                "inflight": {str(wk): {"w": tree_torch(f["w"]), "meta": torch.tensor(
                    [f["version"], f["k"], f["lr"], f["finish"]], dtype=torch.float64)} for wk, f in self.inflight.items()}}

    def restore(self, extra: dict) -> None:
        s = self.state
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


def run(cfg: Config, grid, run_dir: RunDir) -> dict:
    """Run ``cfg.rounds`` round-equivalents of asynchronous (or synchronous) SGD; returns the summary."""
    p, m = cfg.strategy.params, cfg.num_clients
    rec = Recorder(cfg, run_dir, cfg.rounds, "round")
    arrays, extra = rec.start()
    w = arrays if arrays is not None else initial_arrays(cfg)
    base_lr = scaled_lr(cfg.client.lr, cfg.client.batch_size, cfg.schedule)
    srv = Server(cfg, grid, discover(grid, wait_for_nodes(grid, m)), rec)
    lr = lr_at(rec.state.server_round, cfg.rounds, base_lr, cfg.schedule)
    if "version" in extra:  # resumed: server state, and the in-flight work re-issued as it was
        srv.restore(extra)
    elif not p.sync:
        for wk in range(m):
            srv.dispatch(wk, w, lr)
    t0 = time.perf_counter() - rec.state.sim_time_s
    for rnd in range(rec.state.server_round + 1, cfg.rounds + 1):
        lr = lr_at(rnd - 1, cfg.rounds, base_lr, cfg.schedule)
        losses = []
        if p.sync:  # barrier: all from the same version, apply the mean, time = the slowest
            for wk in range(m):
                srv.dispatch(wk, w, lr)
            finish = max(f["finish"] for f in srv.inflight.values())
            res = [srv.collect(wk) for wk in range(m)]
            grads = [srv.result(wk, rep) for wk, rep in res]
            losses = [float(rep.content["metrics"]["train-loss"]) for _, rep in res]
            w = A.server_step(w, A.mean_gradient(grads), lr, p, srv.state)
            srv.staleness += [0] * m
            srv.now = finish if p.clock == "virtual" else time.perf_counter() - t0
            srv.inflight.clear()
        else:
            for i in range(m):
                if p.clock == "virtual":
                    srv.now, wk = srv.clock.pop()
                    wk, rep = srv.collect(wk)
                else:
                    wk, rep = srv.collect(None)
                    srv.now = time.perf_counter() - t0
                g = srv.result(wk, rep)
                losses.append(float(rep.content["metrics"]["train-loss"]))
                f = srv.inflight.pop(wk)
                srv.staleness.append(srv.state.version - f["version"])
                w = A.server_step(w, g, lr, p, srv.state, wk, f["w"])
                if rnd < cfg.rounds or i < m - 1:  # no new work after the run's last update
                    srv.dispatch(wk, w, lr)
        rec.state.sim_time_s = srv.now
        recent = srv.staleness[-m:]
        row = {"local_steps": srv.j, "staleness_mean": float(np.mean(recent)), "staleness_max": int(max(recent))}
        if rec.end_of_round(rnd, w, lr, m, float(np.mean(losses)), float("nan"), extra=srv.checkpoint(), row=row):
            break
    rec.extra_summary = {"staleness_histogram": A.staleness_histogram(srv.staleness),
                         "staleness_mean": float(np.mean(srv.staleness)) if srv.staleness else 0.0,
                         "updates": srv.state.version}
    plots.plot_staleness(srv.staleness, run_dir.plots_dir / "staleness.png",
                         f"{'sync' if p.sync else 'async'} SGD, {m} workers, delay={p.delay} {p.delay_ms:g} ms")
    return rec.finish()

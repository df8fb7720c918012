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

Packed (``sim.clients_per_worker`` = p > 1, virtual clock only): work is decided at once but sent
lazily. A dispatch only records the job (its model is fixed then); when the server needs a result
whose job is still unsent, every unsent job goes out together, one transport message per node with
all its workers' jobs, trained fused (:func:`client_fit_block`). A result depends only on (model,
worker, k, lr), so the run is the same as one job per message (to the fused kernels' float rounding),
and a flush holds every job decided since the last one: with equal speeds, all M. Accounting stays
logical and on the unpacked schedule: a job's model is counted down when it is dispatched, its result
up when it is applied. Checkpoints also hold the results computed but not yet applied and the order of
the unsent jobs, so that a resumed run sends the same jobs together and continues bit for bit.

On the node (:func:`client_fit`): J plain SGD steps (no momentum: momentum and delay compensation
live on the server) from the received model; the reply is the pseudo-gradient
g = (w_start - w_end)/lr (for J = 1, the mini-batch gradient). The batches of the k-th computation
come from the seeded permutation block k, so a result depends only on (model, worker, k). With
``clock=real`` the worker first sleeps its delay. A node holding several workers trains their jobs
fused, grouped by learning rate (:func:`client_fit_block`).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, ClassVar

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from clients.fused import ClientJob, fused_plan, iter_fused
from strategies import async_sgd as A
from strategies.fedavg import to_numpy, to_record
from strategies.modes import RoundOut, RoundPlan
from strategies.sync import pack, tree_numpy, tree_torch

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
        self.packed = run.packing > 1  # the config allows it with the virtual clock only
        self.unsent: list[int] = []  # packed: workers whose job is decided but not sent, in dispatch order
        self.transit: dict[str, list[int]] = {}  # packed: transport message id -> the workers whose jobs it carries
        self.done: dict[int, tuple[dict, dict, int]] = {}  # worker -> its computed, unapplied g, metrics, bytes
        self.push_at = max(4 * -(-self.m // run.packing), -(-self.m // 4))  # packed: unsent jobs that go out early
        self.model_bytes = to_record(arrays).count_bytes()  # every job's model: the same keys, shapes and dtypes
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
        resume: same model, step index and finish time, not counted again (the checkpointed ledger has it).
        Packed: only decide it (counted down now, as the unpacked run counts it); it goes out with the others
        when a result that is not computed yet is needed (:meth:`_send_unsent`)."""
        resend = k is not None
        if not resend:
            k = self.next_k[worker]
            self.next_k[worker] += 1
        delay = A.delay_s(self.p, worker, k, self.cfg.seed)
        if not resend:
            finish = self.now + self.j * self.step_time / self.speeds[worker] + delay
            if self.p.clock == "virtual" and not self.p.sync:  # sync mode waits for all: no ordering needed
                self.clock.start(worker, self.now, finish - self.now)
        self.inflight[worker] = {"version": self.state_.version, "w": w, "k": k, "lr": lr, "finish": finish, "id": None}
        if self.packed:  # sent with others later (_push)
            self.unsent.append(worker)
            if not resend:
                self.grid.count_virtual("down", worker, None, self.model_bytes)
                if len(self.unsent) >= self.push_at:
                    self._push()
            return
        (self.inflight[worker]["id"],) = list(self.grid.push_messages([self._message(worker)], count=not resend))

    def _message(self, worker: int) -> Message:
        """The job message of ``worker``'s in-flight computation."""
        f = self.inflight[worker]
        delay = A.delay_s(self.p, worker, f["k"], self.cfg.seed) if self.p.clock == "real" else 0.0
        conf = {"mode": self.name, "lr": f["lr"], "local-steps": [self.j] * self.m, "local-epochs": 1,
                "server-round": f["k"] + 1, "update-index": f["k"], "sleep-s": delay}
        return self.run.message(worker, {"arrays": to_record(f["w"]), "config": ConfigRecord(conf)})

    def _push(self) -> None:
        """Packed: send every unsent job without waiting, one transport message per node."""
        workers, self.unsent = self.unsent, []
        if workers:
            packed = pack([self._message(wk) for wk in workers], workers, own_arrays=True,
                          own_config=("lr", "update-index"))
            ids = self.grid.push_messages([msg for msg, _ in packed], count=False)  # counted at dispatch
            self.transit.update({mid: pids for mid, (_, pids) in zip(ids, packed)})

    def _receive(self, rnd: int) -> None:
        """Packed: keep the results of every transport reply that has arrived until they are applied."""
        for rep in self.grid.pull_messages(list(self.transit), count=False):  # counted when applied
            workers = self.transit.pop(rep.metadata.reply_to_message_id)
            name = f"{self.grid.name_of(rep)} (workers {', '.join(map(str, workers))})"
            self.run.keep_ok(rnd, [rep], self.grid, [name])  # a failed worker fails the run, named
            for wk in workers:
                arrays = rep.content[f"arrays/{wk}"]
                self.done[wk] = (to_numpy(arrays), dict(rep.content[f"metrics/{wk}"]), arrays.count_bytes())

    def _collect(self, rnd: int, worker: int | None) -> tuple[int, dict, dict]:
        """``(worker, g, metrics)``: wait for ``worker``'s result (virtual clock: pull only that one) or for any
        result (``None``, real clock)."""
        if self.packed or worker in self.done:
            if worker in self.unsent:
                self._push()
            while worker not in self.done:
                self._receive(rnd)
                if worker not in self.done:
                    time.sleep(0.002)
            g, metrics, nbytes = self.done.pop(worker)
            self.grid.count_virtual("up", worker, None, nbytes)
            return worker, g, metrics
        while True:
            for wk, f in sorted(self.inflight.items()):
                if (worker is None or wk == worker) and f["id"] in self.replies:
                    rep = self.replies.pop(f["id"])
                    self.run.keep_ok(rnd, [rep], self.grid)
                    return wk, to_numpy(rep.content["arrays"]), dict(rep.content["metrics"])
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
            metrics = [met for _, _, met in res]
            self.w = A.server_step(self.w, A.mean_gradient([g for _, g, _ in res]), lr, p, self.state_)
            self.staleness += [0] * m
            self.now = finish if p.clock == "virtual" else time.perf_counter() - self.t0
            self.inflight.clear()
        else:
            for i in range(m):
                if p.clock == "virtual":
                    self.now, wk = self.clock.pop()
                    wk, g, met = self._collect(rnd, wk)
                else:
                    wk, g, met = self._collect(rnd, None)
                    self.now = time.perf_counter() - self.t0
                metrics.append(met)
                f = self.inflight.pop(wk)
                self.staleness.append(self.state_.version - f["version"])
                self.w = A.server_step(self.w, g, lr, p, self.state_, wk, f["w"])
                if rnd < self.run.total or i < m - 1:  # no new work after the run's last update
                    self.dispatch(wk, self.w, lr)
            if self.packed and rnd < self.run.total:  # the workers compute while the server evaluates
                self._push()
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
                    [f["version"], f["k"], f["lr"], f["finish"]], dtype=torch.float64)}
                    for wk, f in self.inflight.items()},
                "unsent": torch.tensor(self.unsent, dtype=torch.int64),
                "transit": {str(i): torch.tensor(wks, dtype=torch.int64)
                            for i, wks in enumerate(self.transit.values())},
                "done": {str(wk): {"g": tree_torch(g), "bytes": torch.tensor(nbytes),
                                   "metrics": {k: torch.tensor(v) for k, v in met.items()}}
                         for wk, (g, met, nbytes) in self.done.items()}}

    def _restore(self, extra: dict) -> None:
        s = self.state_
        s.version, self.now = int(extra["version"]), float(extra["now"])
        self.next_k = [int(k) for k in extra["next_k"].tolist()]
        s.velocity = tree_numpy(extra["velocity"]) or None
        s.mean_square = {int(k): tree_numpy(v) for k, v in extra["mean_square"].items()} or None
        self.staleness = extra["staleness"].tolist()
        done = {int(wk): (tree_numpy(d["g"]), {k: v.item() for k, v in d["metrics"].items()}, int(d["bytes"]))
                for wk, d in extra.get("done", {}).items()}
        transit = [t.tolist() for _, t in sorted(extra.get("transit", {}).items(), key=lambda kv: int(kv[0]))]
        unsent = extra["unsent"].tolist() if "unsent" in extra else []
        inflight = {int(wk): f for wk, f in extra["inflight"].items()}
        rest = sorted(set(inflight) - set(done) - {wk for b in transit for wk in b} - set(unsent))
        # computed results as they were; each transport message in flight sent again with the same jobs, the
        # unsent jobs kept in their order (a packed run then trains the same jobs together as the straight run
        # did: bit for bit); anything else (an unpacked run's messages) re-issued
        for batch in [sorted(done), *transit, unsent, rest]:
            for wk in batch:
                version, k, lr, finish = inflight[wk]["meta"].tolist()
                if wk in done:
                    self.inflight[wk] = {"w": tree_numpy(inflight[wk]["w"]), "k": int(k), "lr": lr,
                                         "finish": finish, "id": None}
                    self.done[wk] = done[wk]
                else:
                    self.dispatch(wk, tree_numpy(inflight[wk]["w"]), lr, int(k), finish)
                self.inflight[wk]["version"] = int(version)
                if self.p.clock == "virtual":
                    self.clock.start(wk, finish, 0.0)
            if batch is not unsent and batch is not rest:
                self._push()

    def finish(self) -> dict:
        p = self.p
        self.run.plots.plot_staleness(self.staleness, self.run.run_dir.plots_dir / "staleness.png",
                                      f"{'sync' if p.sync else 'async'} SGD, {self.m} workers, delay={p.delay} "
                                      f"{p.delay_ms:g} ms")
        return {"staleness_histogram": A.staleness_histogram(self.staleness),
                "staleness_mean": float(np.mean(self.staleness)) if self.staleness else 0.0,
                "updates": self.state_.version}


def pseudo_gradient(start: dict, end: dict, lr: float) -> ArrayRecord:
    """``g = (w_start - w_end) / lr`` in float64, cast back to each array's dtype (0 for integer buffers)."""
    grad = {}
    for name, v in end.items():
        w0 = start[name]
        g = (w0.double() - v.double()) / lr if w0.is_floating_point() else torch.zeros_like(w0)
        grad[name] = Array(np.ascontiguousarray(g.to(w0.dtype).numpy()))
    return ArrayRecord(grad)


def client_fit(msg: Any, node: Any) -> Any:
    """One asynchronous-SGD computation on a node: J plain SGD steps, reply with the pseudo-gradient."""
    conf = msg.content["config"]
    if float(conf["sleep-s"]) > 0:
        time.sleep(float(conf["sleep-s"]))
    lr, k = float(conf["lr"]), int(conf["update-index"])
    start = {k_: v.detach().clone() for k_, v in node.model.state_dict().items()}
    opt = torch.optim.SGD(node.model.parameters(), lr=lr)
    res = node.fit(opt, conf, first_epoch=k << 20)
    return node.reply(msg, pseudo_gradient(start, node.model.state_dict(), lr), res)


def client_fit_block(msg: Any, nodes: list) -> Any:
    """Several workers' computations on one node (packed): each from its own model (``arrays/<pid>``), with its
    own learning rate and step index (``lr-each``, ``update-index-each``), trained fused per learning rate when
    the model allows (``clients/fused.py``: the same J plain SGD steps and batches as :func:`client_fit`), else
    one after the other. The reply holds ``arrays/<pid>`` (the pseudo-gradient) and ``metrics/<pid>``."""
    conf = msg.content["config"]
    pids = [int(p) for p in conf["pids"]]
    lrs = dict(zip(pids, (float(v) for v in conf["lr-each"])))
    ks = dict(zip(pids, (int(v) for v in conf["update-index-each"])))
    by_pid = {node.pid: node for node in nodes}
    starts = {pid: msg.content[f"arrays/{pid}"].to_torch_state_dict() for pid in pids}
    content: dict = {}

    def one(pid: int, end: dict, res: Any) -> None:
        content[f"arrays/{pid}"] = pseudo_gradient(starts[pid], end, lrs[pid])
        content[f"metrics/{pid}"] = by_pid[pid].metrics(res)

    try:
        fused_plan(nodes[0].model)
    except ValueError:  # BatchNorm or dropout: one worker after the other, client_fit's maths
        for pid in pids:
            node = by_pid[pid]
            node.model.load_state_dict(starts[pid])
            res = node.fit(torch.optim.SGD(node.model.parameters(), lr=lrs[pid]), conf, first_epoch=ks[pid] << 20)
            one(pid, node.model.state_dict(), res)
            node.drop_model()
        return Message(RecordDict(content), reply_to=msg)
    n0 = nodes[0]
    plain_sgd = dataclasses.replace(n0.cfg.optimizer, name="sgd", momentum=0.0, nesterov=False, weight_decay=0.0)
    j = int(conf["local-steps"][pids[0]])
    for lr in sorted(set(lrs.values())):
        group = [pid for pid in pids if lrs[pid] == lr]
        jobs = [ClientJob(starts[pid], by_pid[pid].local.x, by_pid[pid].local.y, pid, n0.cfg.seed, ks[pid] << 20, j, 1)
                for pid in group]
        for i, r in iter_fused(n0.model, jobs, n0.local.norm, plain_sgd, batch_size=n0.cfg.client.batch_size, lr=lr,
                               augment=n0.local.augment):
            one(group[i], r.state, r.result)
    return Message(RecordDict(content), reply_to=msg)

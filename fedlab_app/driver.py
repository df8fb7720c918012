"""The one round driver: every mode's run, from the first model to the summary.

It owns the recorder (results files, resume, evaluation, checkpoints, divergence, the end of the
run), the initial model, the round plan (lr from the schedule, steps per client from
``fedlab_app/planner.py``), node discovery, message counting (one :class:`CountingGrid` for
blocking, non-blocking and relayed traffic), the failure policy and the simulated time. A mode
(``strategies/modes.py``) shapes each round: the synchronous FedAvg family, gossip, asynchronous
SGD, or the centralized baseline (which uses no Flower node: ``grid`` is None).

Failure policy, one rule per mode (``Mode.tolerates_failures``): a failed reply (a dead node, or a
ClientApp that raised) is always logged and recorded in ``summary.json``'s ``failure_events``;
a mode that tolerates failures goes on without the node (sync); the others stop the run at once
with ``status: failed`` and an error naming the node and its reason (gossip, async).

Where the work ran: a reply's optional ``worker`` metric (its machine or Ray node,
:func:`fedlab_app.local.worker_id`) is counted into ``summary.json``'s ``workers`` ({id: replies}).
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict

import strategies
from clients.schedule import lr_at, scaled_lr
from fedlab_app import flower_waits, overlap, plots, ray_start, trace, wire
from fedlab_app.comm import CountingGrid
from fedlab_app.config import Config
from fedlab_app.interrupt import RunInterrupted
from fedlab_app.local import Node
from fedlab_app.models import build_model
from fedlab_app.overlap import RunEnded
from fedlab_app.partition import label_counts
from fedlab_app.planner import RoundPlanner
from fedlab_app.recorder import Recorder
from fedlab_app.results import RunDir
from fedlab_app.splits import make_splits
from strategies.modes import RoundPlan, mean_over_examples

log = logging.getLogger("fedlab")
NODE_WAIT_S = 60.0  # how long the server waits for num_clients nodes to connect
DISCOVER_TIMEOUT_S = 60.0  # per attempt: how long the partition query waits before asking silent nodes again
DISCOVER_ATTEMPTS = 5
# how often a blocking exchange asks for its replies (Flower 1.41's deployed grid: 3 s; 3 reproduces it)
REPLY_POLL_S = float(os.environ.get("FEDLAB_REPLY_POLL_S", "0") or 0)  # > 0: PromptGrid (`fedlab deploy` sets 0.1)


class NodeFailure(RuntimeError):
    """A node failed in a mode that cannot go on without it."""


def initial_arrays(cfg: Config) -> dict[str, np.ndarray]:
    """The seeded initial global model as ``{name: array}``."""
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    model = build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes, seed=cfg.seed)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


class PromptGrid:
    """``grid`` whose blocking :meth:`send_and_receive` asks for the replies every ``REPLY_POLL_S``.

    The same push-then-pull loop as Flower's, which in a deployment sleeps 3 s between pulls (up to
    3 s lost per exchange); everything else passes through. A reply's objects are asked for again sooner
    too (:func:`fedlab_app.flower_waits.retry_object_pulls_sooner`, process-wide): a SuperNode puts its reply
    on the SuperLink before the reply's objects, and a pull that found the reply in between met Flower's
    1 s first retry (``results/bench/deploy_trace.json``: from the last reply on the SuperLink to the ServerApp
    having it, 1.15 s without this, 0.33 s with it).
    """

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        if os.environ.get("FEDLAB_SERVER_PULL_RETRY", "1") != "0":  # "0": Flower's retries (bench_deploy --before)
            flower_waits.retry_object_pulls_sooner()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        waiting = set(self._grid.push_messages(messages))
        if messages and trace.enabled():
            trace.mark("server", "pushed", **trace.about(messages[0]))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (end is None or time.monotonic() < end):
            got = list(self._grid.pull_messages(waiting))
            replies += got
            waiting -= {m.metadata.reply_to_message_id for m in got}
            if waiting:
                time.sleep(REPLY_POLL_S)
        return replies


def wait_for_nodes(grid, num_clients: int, timeout_s: float = NODE_WAIT_S) -> list[int]:
    """Wait until ``num_clients`` nodes are connected (simulated nodes register after the ServerApp starts).

    Raises a clear error if the federation is larger than ``num_clients`` or stays smaller for ``timeout_s``.
    """
    t0 = time.monotonic()
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) > num_clients:
            raise ValueError(f"the federation has {len(nodes)} nodes but num_clients={num_clients}; make them equal "
                             f"(with `flwr run`: --federation-config \"num-supernodes={num_clients}\")")
        if len(nodes) == num_clients:
            return nodes
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"only {len(nodes)} of num_clients={num_clients} nodes connected within {timeout_s:.0f} s "
                               f"(with `flwr run`: --federation-config \"num-supernodes={num_clients}\")")
        time.sleep(0.2)


def discover(grid, node_ids: list[int], timeout_s: float = DISCOVER_TIMEOUT_S,
             attempts: int = DISCOVER_ATTEMPTS) -> dict[int, int]:
    """Ask every node for its partition id (a "query" message, no payload, not counted): ``{partition id: node id}``.

    A node that has not answered within ``timeout_s`` is asked again, up to ``attempts`` times: a deployed
    SuperNode can lose one message (seen when its SuperLink was killed and restarted while the node was
    replying to the old run) and would otherwise leave the run waiting forever. A late answer to an earlier
    attempt's query counts too: after such a restart a SuperNode was seen answering each query only once the
    next one had arrived, so that waiting for the answer to the newest query alone never ended.

    Raises
    ------
    RuntimeError
        A node that has not answered otherwise answered with an error.
    TimeoutError
        Some nodes never answered; the error names them.
    """
    out: dict[int, int] = {}
    missing = list(node_ids)
    asked: set[str] = set()  # the queries not answered yet, of every attempt
    poll_s = REPLY_POLL_S or 0.005
    for attempt in range(1, attempts + 1):
        msgs = [Message(RecordDict({"config": ConfigRecord({"ask": "partition-id"})}), dst_node_id=n,
                        message_type="query") for n in missing]
        asked.update(grid.push_messages(msgs))
        end = time.monotonic() + timeout_s
        while True:
            for rep in grid.pull_messages(list(asked)):
                asked.discard(rep.metadata.reply_to_message_id)
                if rep.has_error():
                    if rep.metadata.src_node_id in out.values():
                        continue  # an error to an earlier query of a node that has answered since
                    raise RuntimeError(f"node {rep.metadata.src_node_id} did not answer the partition query: "
                                       f"{rep.error.reason}")
                out[int(rep.content["metrics"]["partition-id"])] = rep.metadata.src_node_id
            missing = [n for n in node_ids if n not in out.values()]
            if not missing:
                return out
            if time.monotonic() >= end:
                break
            time.sleep(poll_s)
        if attempt < attempts:
            log.warning("node(s) %s did not answer the partition query within %.0f s; asking again (%d of %d)",
                        missing, timeout_s, attempt + 1, attempts)
    raise TimeoutError(f"node(s) {missing} did not answer the partition query in {attempts} attempts of "
                       f"{timeout_s:.0f} s each")


def free_core_at(cfg: Config, grid: Any) -> int | None:
    """How many replies of an exchange are still outstanding when a core of this machine is no longer used by the
    nodes: in a simulation on this machine's Ray (Flower's ``InMemoryGrid``), W - 1 of W nodes training at once
    (:func:`fedlab_app.ray_start.actors_at_once`); else None (nodes on other machines, or a Ray cluster's).
    ``FEDLAB_EARLY_RECORD=0``: None everywhere (a round's record starts after the next exchange's last reply)."""
    if os.environ.get("FEDLAB_EARLY_RECORD", "1") == "0" or cfg.sim.ray_address:
        return None
    if type(grid).__name__ != "InMemoryGrid":
        return None
    return ray_start.actors_at_once(cfg.sim.cpus_per_client) - 1


class RunContext:
    """What the driver offers a mode: the config, the nodes, the plan's parts, evaluation, the failure policy."""

    def __init__(self, cfg: Config, rec: Recorder, grid: CountingGrid | None, mode: Any, total: int) -> None:
        self.cfg, self.rec, self.grid, self.mode, self.total = cfg, rec, grid, mode, total
        self.run_dir, self.plots, self.log = rec.run_dir, plots, log
        self.base_lr = scaled_lr(cfg.client.lr, cfg.client.batch_size, cfg.schedule)
        self.planner = RoundPlanner(cfg, self.base_lr)
        self.speeds = self.planner.speeds
        self.node_of: dict[int, int] = {}  # partition id -> Flower node id
        self.packing = max(1, cfg.sim.clients_per_worker)  # virtual clients per node: node b holds b*p .. b*p+p-1

    @property
    def first_round(self) -> int:
        """The first round this process runs (after a resume: the one after the checkpoint)."""
        return self.rec.state.server_round + 1

    @property
    def sim_time_s(self) -> float:
        return self.rec.state.sim_time_s

    def lr(self, rnd: int) -> float:
        """The learning rate of round ``rnd`` (1-based) from the schedule."""
        return lr_at(rnd - 1, self.total, self.base_lr, self.cfg.schedule)

    def eval_due(self, rnd: int) -> bool:
        return self.rec.eval_due(rnd)

    def evaluate_subset(self, models: list[dict], samples: int) -> list[float]:
        """Test accuracy of each model on a seeded subset of ``samples`` test images."""
        return self.rec.evaluator.subset_accuracies(models, samples, self.cfg.seed)

    def local_node(self, pid: int, num: int) -> Node:
        """A node in this process (the centralized baseline trains through it)."""
        return Node(self.cfg, pid, num, {})

    def message(self, pid: int, content: dict, message_type: str = "train") -> Message:
        """A message to partition ``pid``'s node."""
        return Message(RecordDict(content), dst_node_id=self.node_of[pid], message_type=message_type)

    def keep_ok(self, rnd: int, replies: list[Message], grid: CountingGrid,
                names: list | None = None) -> list[Message]:
        """The failure policy: record every failed reply; skip it (sync) or fail the run naming the node.

        ``names`` names the replies (default: the node each answers for)."""
        ok = [r for r in replies if not r.has_error()]
        names = names if names is not None else [grid.name_of(r) for r in replies]
        for r, node in zip(replies, names):
            if not r.has_error():
                continue
            reason = (r.error.reason or f"error code {r.error.code}").strip()[-500:]
            self.rec.state.failures += 1
            self.rec.state.failure_events.append({"round": rnd, "node": str(node), "reason": reason})
            if self.mode.tolerates_failures:
                log.warning("round %d: node %s failed (the round goes on without it): %s", rnd, node, reason)
            else:
                raise NodeFailure(f"round {rnd}: node {node} failed and strategy={self.cfg.strategy.name} cannot go "
                                  f"on without it: {reason[-300:]}")
        return ok


def run(cfg: Config, grid: Any, run_dir: RunDir) -> dict:
    """Run ``cfg``'s strategy over ``grid`` (None for a mode without nodes), writing into ``run_dir``."""
    spec = strategies.REGISTRY[cfg.strategy.name]
    if spec.prepare is not None:
        cfg = spec.prepare(cfg)
    mode = strategies.make_mode(cfg)
    total = spec.total(cfg) if spec.total is not None else cfg.rounds
    rec = Recorder(cfg, run_dir, total, getattr(mode, "unit", "round"), columns=mode.columns)
    arrays, extra = rec.start()
    arrays = arrays if arrays is not None else initial_arrays(cfg)
    flat = wire.flat_for(grid)  # deployed: arrays cross Flower flat; simulated: as they are (fedlab_app/wire.py)
    grid = (PromptGrid(grid) if REPLY_POLL_S > 0 else grid) if mode.uses_nodes else None
    cgrid = CountingGrid(grid, rec.state.ledger, flat=flat, free_core_at=free_core_at(cfg, grid)) \
        if mode.uses_nodes else None
    ctx = RunContext(cfg, rec, cgrid, mode, total)
    ctx.planner.load_state(extra.get("planner", {}))
    if mode.uses_nodes:
        s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
        # drawn with the other plots at the end (plots.plot_run): matplotlib's import and the figure took
        # 0.7 s of CPU here, while the workers were still importing the ClientApp on the same two cores
        run_dir.write_label_counts(label_counts(s.data.y_train, list(s.parts), s.data.num_classes))
        nodes = discover(grid, wait_for_nodes(grid, math.ceil(cfg.num_clients / ctx.packing)))
        p = ctx.packing  # one client per node: every node as it answered, a misconfigured one too (its
        # ClientApp then fails with its own error, recorded); p clients per node: the blocks that answered
        ctx.node_of = dict(nodes) if p == 1 else {i: nodes[i // p] for i in range(cfg.num_clients) if i // p in nodes}
        cgrid.node_names.update({n: (b if ctx.packing == 1 else f"node{b}") for b, n in nodes.items()})
    mode.start(ctx, arrays, extra.get("mode", {}))
    workers: dict[str, int] = dict(extra.get("workers", {}))  # machine / Ray node -> replies it trained
    try:
        _rounds(ctx, rec, mode, cgrid, total, workers)
    except BaseException as exc:  # a failed or stopped run: the checkpoint being written lands (or is dropped) first
        if cgrid is not None:  # the last rounds' records first; a failure before the next exchange keeps its round
            _settle_quietly(cgrid.overlap, isinstance(exc, Exception) and not isinstance(exc, RunInterrupted))
        run_dir.wait_for_checkpoint(raise_error=False)
        raise
    rec.extra_summary = {**mode.finish(), **({"workers": workers} if workers else {})}
    return rec.finish()


def _settle_quietly(records: overlap.Overlap, run_pending: bool) -> None:
    """Finish the deferred records on the way out of a failed run; their own error is only logged."""
    try:
        records.settle(run_pending)
    except Exception as exc:  # noqa: BLE001 (the run's own error is the one raised)
        log.error("could not record the last round: %s", exc)


def _rounds(ctx: RunContext, rec: Recorder, mode: Any, cgrid: CountingGrid | None, total: int,
            workers: dict[str, int]) -> None:
    """The round loop of :func:`run`, from the round after the last one saved to ``total``.

    With a mode that allows it (``overlaps_end_of_round``), round r's record (evaluation, metrics row, checkpoint)
    is made in a thread while the server works on round r+1's replies (``fedlab_app/overlap.py``); the results
    are the same. The first round this process runs and the last are recorded in turn. ``FEDLAB_OVERLAP_EVAL=0``:
    each round is recorded before the next is sent.
    """
    cfg = ctx.cfg
    records = cgrid.overlap if cgrid is not None and overlap.ENABLED and getattr(
        mode, "overlaps_end_of_round", False) else None
    first = rec.state.server_round + 1  # recorded in turn: its progress line comes at once
    for rnd in range(first, total + 1):
        lr = ctx.lr(rnd)
        plan = RoundPlan(rnd, lr, cfg.client.local_epochs, ctx.planner.steps(rnd, lr))
        if cgrid is not None:
            cgrid.begin_round()
        try:
            out = mode.round(plan, cgrid)
        except RunEnded:  # an earlier round's evaluation found the run diverged
            break
        if out.clock_s is not None:
            rec.state.sim_time_s = out.clock_s
        elif out.duration_s is not None:
            rec.state.sim_time_s += out.duration_s
        else:
            by_node = out.bytes_by_node if out.bytes_by_node is not None else cgrid.round_bytes
            rec.state.sim_time_s += ctx.planner.round_time(out.metrics, by_node)
        for m in out.metrics:
            if "worker" in m:
                key = f"{int(m['worker']):012x}"
                workers[key] = workers.get(key, 0) + 1
        train_loss = mean_over_examples(out.metrics, "train-loss")
        ctx.planner.observe(train_loss)
        row = dict(out.row)
        if mode.uses_nodes:
            row["local_steps"] = sum(float(m["steps"]) for m in out.metrics) / max(len(out.metrics), 1)
        if rec.end_of_round(rnd, out.arrays, lr, out.clients, train_loss, mean_over_examples(out.metrics, "train-acc"),
                            extra={"planner": ctx.planner.state(), "mode": mode.state(), "workers": dict(workers)},
                            row=row, overlap=records if rnd > first else None):
            break

"""Round r's record (evaluation, metrics row, checkpoint) is made in a thread beside the server's step on round
r+1's replies (``fedlab_app/overlap.py``, ``Recorder.end_of_round(overlap=...)``, ``driver._rounds``), with the
same rows and checkpoints as in turn; a divergence it finds ends the run at that round."""

from __future__ import annotations

import csv
import threading
import time

import numpy as np
import pytest
from conftest import compose, needs_fmnist
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedlab_app import config, driver
from fedlab_app.comm import CountingGrid, Ledger
from fedlab_app.overlap import Overlap, RunEnded
from fedlab_app.recorder import Recorder
from fedlab_app.results import RunDir
from strategies.modes import RoundOut


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Messages made outside a Flower process need the task identity Flower would have set."""
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


class EchoGrid:
    """A Flower grid whose node answers each message with an empty reply."""

    def send_and_receive(self, messages, *, timeout=None):
        return [Message(RecordDict({"metrics": MetricRecord({"partition-id": 0})}), reply_to=m) for m in messages]


def _msg() -> Message:
    return Message(RecordDict({"config": ConfigRecord({"a": 1})}), dst_node_id=7, message_type="train")


def test_a_deferred_record_starts_in_a_thread_when_the_next_replies_are_in():
    grid, seen = CountingGrid(EchoGrid(), Ledger()), []
    grid.send_and_receive([_msg()])  # nothing deferred
    grid.overlap.defer(lambda: seen.append(threading.current_thread().name) or False)
    with pytest.raises(RuntimeError, match="already waiting"):
        grid.overlap.defer(lambda: False)
    assert seen == []
    assert len(grid.send_and_receive([_msg()])) == 1 and grid.ledger.messages["up"] == 2
    assert grid.overlap.settle() is False and seen == ["fedlab-round-record"]


def test_a_record_that_ends_the_run_drops_the_next_one_and_the_replies_that_find_it():
    grid, ran = CountingGrid(EchoGrid(), Ledger()), []
    grid.overlap.defer(lambda: True)  # round r diverged
    grid.send_and_receive([_msg()])  # round r+1's replies: round r's record starts
    grid.overlap.defer(lambda: ran.append(1) or False)  # round r+1's record
    with pytest.raises(RunEnded):
        grid.send_and_receive([_msg()])  # round r+2's replies: round r's answer is in
    assert grid.ledger.messages["up"] == 1 and grid.overlap.settle() is False and ran == []


def test_a_running_record_is_joined_at_the_next_replies_even_with_nothing_deferred():
    grid, ran = CountingGrid(EchoGrid(), Ledger()), []
    grid.overlap.defer(lambda: ran.append(1) or True)  # round r diverged (eval.every > 1: rounds after it defer none)
    grid.send_and_receive([_msg()])  # round r+1's replies: round r's record starts
    with pytest.raises(RunEnded):
        grid.send_and_receive([_msg()])  # round r+2's: its answer is read, though nothing waits behind it
    assert ran == [1]


def test_a_record_that_failed_is_raised_in_the_drivers_thread_and_nothing_after_it_is_recorded():
    records, ran = Overlap(), []

    def fail():
        raise OSError("disk full")

    records.defer(fail)
    assert records.start() is False
    records.defer(lambda: ran.append(1) or False)
    with pytest.raises(OSError, match="disk full"):
        records.start()
    assert records.settle() is False and ran == []


class TwoWorkerGrid:
    """A Flower grid of nodes that share this machine's cores: every reply but the last comes at once; the last
    comes once a record has started (``started`` is set) or after ``hold_s``. ``outstanding_at_start``: how many
    replies the exchange still waited for when the record started."""

    def __init__(self, started: threading.Event, hold_s: float = 2.0) -> None:
        self.started, self.hold_s, self.sent = started, hold_s, []

    def push_messages(self, messages):
        self.sent = list(messages)
        self.t0 = time.monotonic()
        return [str(i) for i in range(len(self.sent))]

    def pull_messages(self, ids):
        last = str(len(self.sent) - 1)
        ready = [i for i in ids if i != last or self.started.is_set() or time.monotonic() - self.t0 > self.hold_s]
        return [Message(RecordDict({"metrics": MetricRecord({"partition-id": int(i)})}), reply_to=self._held(i))
                for i in ready]

    def _held(self, i: str) -> Message:
        m = self.sent[int(i)]
        m.metadata.__dict__["_message_id"] = i  # the id push_messages gave it (Flower's replies point at it)
        return m


def test_a_record_starts_as_soon_as_a_core_is_free_of_the_nodes_training():
    started, box = threading.Event(), {}
    grid = CountingGrid(TwoWorkerGrid(started), Ledger(), free_core_at=1)  # 2 nodes train at once
    grid.overlap.defer(lambda: box.setdefault("at", time.monotonic()) and started.set() or False)
    t0 = time.monotonic()
    replies = grid.send_and_receive([_msg() for _ in range(4)])  # 3 replies at once, the 4th held
    assert len(replies) == 4 and grid.ledger.messages["up"] == 4
    assert time.monotonic() - t0 < 1.5  # the held reply came because the record started, not after hold_s
    assert grid.overlap.settle() is False and started.is_set()


def test_without_a_free_core_the_record_starts_after_the_last_reply():
    started = threading.Event()
    grid = CountingGrid(TwoWorkerGrid(started, hold_s=0.3), Ledger(), free_core_at=None)
    grid._grid.send_and_receive = lambda msgs, timeout=None: _pull_all(grid._grid, msgs)
    grid.overlap.defer(lambda: started.set() or False)
    t0 = time.monotonic()
    assert len(grid.send_and_receive([_msg() for _ in range(4)])) == 4
    assert time.monotonic() - t0 >= 0.3  # the held reply waited its hold_s: nothing started before it
    assert grid.overlap.settle() is False and started.is_set()


def _pull_all(grid: TwoWorkerGrid, msgs) -> list[Message]:
    ids, out = set(grid.push_messages(msgs)), []
    while ids:
        got = grid.pull_messages(ids)
        out += got
        ids -= {r.metadata.reply_to_message_id for r in got}
        time.sleep(0.005)
    return out


def test_a_record_started_early_that_ends_the_run_drops_the_replies():
    started = threading.Event()
    grid = CountingGrid(TwoWorkerGrid(started, hold_s=0.2), Ledger(), free_core_at=1)
    grid.overlap.defer(lambda: True)  # round r diverged
    grid.send_and_receive([_msg() for _ in range(2)])  # round r's record starts with one reply outstanding
    grid.overlap.defer(lambda: False)
    with pytest.raises(RunEnded):
        grid.send_and_receive([_msg() for _ in range(2)])
    assert grid.ledger.messages["up"] == 2


def test_free_core_at_is_known_only_for_a_simulation_on_this_machines_ray(monkeypatch):
    class InMemoryGrid:  # Flower's simulation grid, by name
        pass

    def cfg(*overrides):
        return config.parse(config.flatten(compose(*overrides)))

    monkeypatch.setattr(driver.os, "cpu_count", lambda: 4)
    assert driver.free_core_at(cfg(), InMemoryGrid()) == 3  # 4 nodes at once: a core is free at 3 outstanding
    assert driver.free_core_at(cfg("sim.cpus_per_client=2"), InMemoryGrid()) == 1
    assert driver.free_core_at(cfg(), EchoGrid()) is None  # deployed: the nodes are elsewhere
    assert driver.free_core_at(cfg("sim.ray_address=auto"), InMemoryGrid()) is None
    monkeypatch.setenv("FEDLAB_EARLY_RECORD", "0")
    assert driver.free_core_at(cfg(), InMemoryGrid()) is None


class FakeMode:
    """One exchange a round; the last round's model is overwritten before it (the deferred record must not
    see it); ``fail_at``: a node failure before that round's exchange; ``diverge_at``: a model that explodes."""

    name, columns, tolerates_failures, uses_nodes = "fake", (), False, True
    overlaps_end_of_round = True

    def __init__(self, arrays: dict, log: list, fail_at: int = 0, diverge_at: int = 0) -> None:
        self.arrays, self.log, self.fail_at, self.diverge_at = arrays, log, fail_at, diverge_at
        rng = np.random.default_rng(1)  # a model unlike the global one, for the step's evaluations
        self.noise = {k: (rng.normal(0, 1, v.shape).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v)
                      for k, v in arrays.items()}

    def start(self, run, arrays, state):
        self.run = run

    def round(self, plan, grid):
        if plan.rnd == self.fail_at:
            raise driver.NodeFailure(f"round {plan.rnd}: node 0 failed")
        self.log.append(("round", plan.rnd))
        new = {k: (v * 0.9 if np.issubdtype(v.dtype, np.floating) else v.copy()) for k, v in self.arrays.items()}
        if plan.rnd == self.diverge_at:
            new = {k: (v * 1e6 if np.issubdtype(v.dtype, np.floating) else v) for k, v in new.items()}
        for v in self.arrays.values():  # the last round's model reused as a buffer before the exchange: the
            v[...] = 0  # driver's copy keeps what the overlapped evaluation and checkpoint read
        grid.send_and_receive([_msg()])
        self.log.append(("replies", plan.rnd))
        t = time.monotonic()  # the server's own step on the replies, here as gossip's: evaluating models
        while time.monotonic() - t < 0.1:  # (the record evaluates meanwhile: they must not share a module)
            self.run.evaluate_subset([self.noise], 500)
        self.arrays = new
        metrics = {"train-loss": 1.0 / plan.rnd, "train-acc": 0.5, "examples-processed": 10, "steps": 1}
        return RoundOut(new, [metrics], 1, duration_s=1.0)

    def state(self):
        return {}

    def finish(self):
        return {}


def _run(tmp_path, overlap: bool, monkeypatch, rounds: int = 3, **mode_kw):
    monkeypatch.setattr(driver.overlap, "ENABLED", overlap)
    cfg = config.parse(config.flatten(compose(f"rounds={rounds}", "dataset.limit_train=300", "num_clients=2",
                                              f"out_dir={tmp_path}")))
    rd = RunDir(tmp_path)
    rec = Recorder(cfg, rd, rounds)
    rec.start()
    log = []
    evaluate, count = rec.evaluator.__call__, [0]

    class Logged(type(rec.evaluator)):
        def __call__(self, arrays):
            count[0] += 1
            log.append(("evaluate", count[0]))
            return evaluate(arrays)

    rec.evaluator.__class__ = Logged
    rec.evaluator.test = tuple(t[:1000] for t in rec.evaluator.test)  # a tenth of the test set: the same path
    mode = FakeMode(driver.initial_arrays(cfg), log, **mode_kw)
    grid = CountingGrid(EchoGrid(), rec.state.ledger)
    ctx = driver.RunContext(cfg, rec, grid, mode, rounds)
    mode.start(ctx, mode.arrays, {})
    try:
        driver._rounds(ctx, rec, mode, grid, rounds, {})
    finally:
        rd.wait_for_checkpoint(raise_error=False)
    return rec, rd, log


def _rows(rd: RunDir) -> list[dict]:
    with open(rd.metrics_path, newline="") as f:
        return [{k: v for k, v in r.items() if k != "wall_time_s"} for r in csv.DictReader(f)]


@needs_fmnist
def test_the_evaluation_overlaps_the_next_rounds_server_step_with_the_same_rows_and_checkpoints(tmp_path,
                                                                                                  monkeypatch):
    _, in_turn, log = _run(tmp_path / "in_turn", False, monkeypatch, rounds=4)
    assert log == [x for r in (1, 2, 3, 4) for x in (("round", r), ("replies", r), ("evaluate", r))]
    _, overlapped, log = _run(tmp_path / "overlap", True, monkeypatch, rounds=4)
    at = {e: i for i, e in enumerate(log)}
    # the first round in turn (its progress line at once); round r's evaluation starts when round r+1's replies
    # are in (inside its exchange) and ends before round r+2's are read; the last round's after the ones before
    assert at[("evaluate", 1)] < at[("round", 2)] and at[("round", 3)] < at[("evaluate", 2)] < at[("round", 4)]
    assert at[("round", 4)] < at[("evaluate", 3)] < at[("evaluate", 4)] and len(log) == 12
    assert _rows(overlapped) == _rows(in_turn) and len(_rows(in_turn)) == 4
    for rnd in (1, 2, 3, 4):
        a = RunDir.load_checkpoint(in_turn.ckpt_dir / f"round_{rnd:04d}.pt")
        b = RunDir.load_checkpoint(overlapped.ckpt_dir / f"round_{rnd:04d}.pt")
        assert a[0] == b[0] == rnd and all(np.array_equal(a[1][k], b[1][k]) for k in a[1])
        sa, sb = dict(a[2]), dict(b[2])
        assert sa.pop("wall_time_s") > 0 and sb.pop("wall_time_s") > 0 and sa == sb  # same counts, same round


@needs_fmnist
def test_a_divergence_found_by_the_overlapped_evaluation_stops_the_run_at_that_round(tmp_path, monkeypatch):
    rec, rd, log = _run(tmp_path, True, monkeypatch, rounds=5, diverge_at=2)
    assert rec.status == "diverged" and rec.stopped_at["server_round"] == 2  # rounds 3 and 4 ran, unrecorded
    assert [r["round"] for r in _rows(rd)] == ["1", "2"] and rd.last_checkpoint().name == "round_0002.pt"
    assert ("round", 4) in log and ("replies", 4) not in log and ("round", 5) not in log


@needs_fmnist
def test_a_node_failure_before_the_next_exchange_still_records_the_last_round(tmp_path, monkeypatch):
    cfg = config.parse(config.flatten(compose("rounds=4", "dataset.limit_train=300", "num_clients=2",
                                              f"out_dir={tmp_path}")))
    monkeypatch.setattr(driver.overlap, "ENABLED", True)
    monkeypatch.setattr(driver.strategies, "make_mode", lambda c: FakeMode(driver.initial_arrays(c), [], fail_at=3))
    monkeypatch.setattr(driver, "discover", lambda grid, nodes: {0: 7, 1: 7})
    monkeypatch.setattr(driver, "wait_for_nodes", lambda grid, n: [7])
    with pytest.raises(driver.NodeFailure, match="round 3: node 0 failed"):
        driver.run(cfg, EchoGrid(), RunDir(tmp_path))
    rd = RunDir(tmp_path)  # round 2's record was still waiting for round 3's replies
    assert [r["round"] for r in _rows(rd)] == ["1", "2"] and rd.last_checkpoint().name == "round_0002.pt"

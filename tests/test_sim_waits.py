"""The simulation engine's polls, shortened (``fedlab_app/sim_waits.py``)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from fedlab_app import sim_waits


class _Msg:
    pass


class _State:
    """A LinkState with one message for node 7, handed out once."""

    def __init__(self) -> None:
        self.pending = {7: [_Msg()]}

    def get_message_ins(self, node_id: int, limit: int):
        out, self.pending[node_id] = self.pending.get(node_id, [])[:limit], []
        return out


@pytest.fixture
def restore(monkeypatch):
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    current = vce_api.add_messages_to_queue  # Flower's own again (a simulated run in this process shortened it)
    monkeypatch.setattr(vce_api, "add_messages_to_queue", getattr(current, "fedlab_original", current))
    monkeypatch.setattr(InMemoryGrid.__init__, "__defaults__", (0.1,))
    monkeypatch.delenv(sim_waits.SWITCH, raising=False)
    return vce_api, InMemoryGrid


def _extractor_run(vce_api, run_for: float) -> list[float]:
    """Run the engine's extractor on a fake state for ``run_for`` s; return the waits it asked for."""
    stop, asked = threading.Event(), []
    real_wait = stop.wait

    def wait(timeout=None):
        asked.append(timeout)
        return real_wait(timeout)

    stop.wait = wait  # type: ignore[method-assign]
    q: queue.Queue = queue.Queue()
    th = threading.Thread(target=vce_api.add_messages_to_queue, args=(_State(), q, {7: 0}, stop))
    th.start()
    time.sleep(run_for)
    stop.set()
    th.join(5)
    assert not th.is_alive()
    assert q.qsize() == 1  # the message was handed on once, as by Flower's own loop
    return asked


def test_flower_polls_every_tenth_of_a_second_before_and_every_poll_s_after(restore):
    vce_api, InMemoryGrid = restore
    assert InMemoryGrid.__init__.__defaults__ == (0.1,)
    assert set(_extractor_run(vce_api, 0.25)) == {0.1}  # Flower's own: fails if the fake state no longer fits
    changed = sim_waits.shorten()
    assert changed == ["vce_api.add_messages_to_queue", "InMemoryGrid.pull_interval"]
    assert InMemoryGrid.__init__.__defaults__ == (sim_waits.POLL_S,)
    asked = _extractor_run(vce_api, 0.25)  # Flower's loop asks for 0.1 s; the event it holds waits POLL_S
    assert set(asked) == {sim_waits.POLL_S} and len(asked) > 0.25 / 0.1 * 5  # many more polls than Flower's 2-3
    assert sim_waits.shorten(0.02) == changed  # again: replaces the setting, does not wrap twice
    assert vce_api.add_messages_to_queue.fedlab_original.__module__ == vce_api.__name__
    assert InMemoryGrid.__init__.__defaults__ == (0.02,)


def test_switched_off_changes_nothing(restore, monkeypatch):
    vce_api, InMemoryGrid = restore
    monkeypatch.setenv(sim_waits.SWITCH, "0")
    original = vce_api.add_messages_to_queue
    assert sim_waits.shorten() == []
    assert vce_api.add_messages_to_queue is original and InMemoryGrid.__init__.__defaults__ == (0.1,)


def test_short_wait_event_waits_at_most_its_longest_and_reports_the_event():
    ev = sim_waits.ShortWaitEvent(threading.Event(), 0.01)
    t = time.perf_counter()
    assert ev.wait(5.0) is False
    assert time.perf_counter() - t < 1.0
    ev.set()  # passed through to the event
    assert ev.is_set() and ev.wait(5.0) is True
    with pytest.raises(ValueError, match="must be > 0"):
        sim_waits.ShortWaitEvent(threading.Event(), 0)

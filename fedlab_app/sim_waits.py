"""Flower's two polls in a simulated round, made shorter: messages reach the workers and replies the server sooner.

In Flower 1.41's simulation engine a message waits twice for a poll, whatever the round's work:

- **Server to workers.** The engine's extractor thread (``vce_api.add_messages_to_queue``) looks for new
  messages in the LinkState every 0.1 s (``f_stop.wait(0.1)``), so a round's messages reach the actors
  0-0.1 s after the ServerApp pushed them.
- **Workers to server.** ``InMemoryGrid.send_and_receive`` pulls the replies every ``pull_interval`` = 0.1 s,
  so the last reply of a round reaches the ServerApp 0-0.1 s after the engine stored it.

Together about 0.1 s a round on average (0.2 s at worst). :func:`shorten` makes both polls ``POLL_S``: the
extractor gets a stop event whose ``wait`` waits at most ``POLL_S`` (Flower's own loop otherwise), and new
``InMemoryGrid``s pull every ``POLL_S``; an idle poll asks the in-memory LinkState for each node's messages.
A 1,000-client round at C = 0.1 took 0.83 s against 0.89 s with Flower's polls (``results/bench/sim_poll_c01.json``,
``bench/bench_env_ab.py``, 4 interleaved pairs). ``FEDLAB_SIM_SHORT_POLL=0`` keeps Flower's 0.1 s.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

POLL_S = 0.005  # both polls (Flower's: 0.1 s)
SWITCH = "FEDLAB_SIM_SHORT_POLL"  # "0": Flower's own polls


class ShortWaitEvent:
    """Stands for the engine's stop event: ``wait(t)`` waits at most ``longest`` seconds; the rest is the event's."""

    def __init__(self, event: threading.Event, longest: float):
        if not longest > 0:
            raise ValueError(f"poll interval {longest!r}: must be > 0")
        self.event, self.longest = event, float(longest)

    def wait(self, timeout: float | None = None) -> bool:
        return self.event.wait(self.longest if timeout is None else min(timeout, self.longest))

    def __getattr__(self, name: str):
        return getattr(self.event, name)


def _short_extractor(original: Callable, longest: float) -> Callable:
    def add_messages_to_queue(state, queue, nodes_mapping, f_stop):
        return original(state, queue, nodes_mapping, ShortWaitEvent(f_stop, longest))

    add_messages_to_queue.fedlab_original = original  # type: ignore[attr-defined]
    return add_messages_to_queue


def shorten(longest: float = POLL_S) -> list[str]:
    """Make the simulation engine's message poll and the in-memory grid's reply poll ``longest`` seconds
    (process-wide, for engines and grids started after the call; again: replaces the earlier setting).
    Returns what was changed; nothing with ``FEDLAB_SIM_SHORT_POLL=0`` or where Flower renamed them."""
    if os.environ.get(SWITCH, "1") == "0":
        return []
    from flwr.server.superlink.fleet.vce import vce_api
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    changed = []
    extractor = getattr(vce_api, "add_messages_to_queue", None)
    if extractor is not None:
        vce_api.add_messages_to_queue = _short_extractor(getattr(extractor, "fedlab_original", extractor), longest)
        changed.append("vce_api.add_messages_to_queue")
    init = InMemoryGrid.__init__
    if init.__defaults__ == (0.1,) or getattr(init, "fedlab_shortened", False):  # (pull_interval,)
        init.__defaults__ = (float(longest),)
        init.fedlab_shortened = True  # type: ignore[attr-defined]
        changed.append("InMemoryGrid.pull_interval")
    return changed

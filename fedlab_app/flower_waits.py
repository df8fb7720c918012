"""Flower's fixed waits in a deployed round, shortened: its own processes, asking sooner.

Two kinds of wait in Flower 1.41 made most of a warm deployed round's overhead (``bench/bench_deploy.py``);
neither is a setting there:

- **A SuperNode's loop** (``flwr.supernode.start_client_internal``) sleeps a fixed 3 s (``time.sleep(3)``)
  after every pull that found no message, and 0.5 s between looks for a ClientApp's reply. Between rounds
  every node has just replied and found nothing, so the next round's message reaches it up to 3 s after the
  server sent it. :func:`shorten_waits` cuts each of those sleeps to at most ``S`` seconds by giving that module
  a ``time`` whose ``sleep`` is shorter; an idle node then makes ``1 / S`` small pull requests per second.
- **Object pulls** (``flwr.supercore.inflatable.inflatable_utils``): a message's objects (the model's arrays)
  are pulled after the message itself, and an object not there yet (the ServerApp still pushing it, the
  SuperNode still pulling it) is asked for again after 1 s, then 2, 4, ... (cap 10 s). A node that asks
  promptly, and a ClientApp that starts warm, meet those waits every round. :func:`retry_object_pulls_sooner`
  starts them at ``FIRST_PULL_RETRY_S`` and caps them at ``PULL_RETRY_CAP_S``, doubling as before.

``python -m fedlab_app.flower_waits S <flower-supernode arguments>`` runs Flower's own ``flower-supernode``
entry point with both (``fedlab deploy up`` starts its nodes so; ``S = 3`` keeps Flower's loop timing); the
prefork server (``fedlab_app/prefork.py``) applies the second to the ClientApps it forks. The connection, its
retries, node authentication, the SuperExec and the ClientApp runtime stay Flower's.
"""

from __future__ import annotations

import os
import sys
import time as _time

from fedlab_app import trace

# Flower's SuperNode modules are imported where they are changed: ``fedlab deploy`` imports this module to
# validate its arguments, and Flower's SuperNode costs 1.5 s to import.

LONGEST_DEFAULT_S = 3.0  # Flower 1.41's longest wait in the SuperNode loop
FIRST_PULL_RETRY_S = 0.05  # first retry of an object not there yet (Flower: 1 s), doubling ...
PULL_RETRY_CAP_S = 0.5  # ... up to this (Flower: 10 s)


class ShortSleeps:
    """Stands for the ``time`` module: ``sleep(s)`` sleeps ``min(s, longest)``; everything else is ``time``'s."""

    def __init__(self, longest: float):
        if not 0 < longest <= LONGEST_DEFAULT_S:
            raise ValueError(f"node poll interval {longest!r}: must be > 0 and <= {LONGEST_DEFAULT_S:g} s "
                             f"({LONGEST_DEFAULT_S:g} is Flower's own)")
        self.longest = float(longest)

    def sleep(self, seconds: float) -> None:
        _time.sleep(min(seconds, self.longest))

    def __getattr__(self, name: str):
        return getattr(_time, name)


def shorten_waits(longest: float) -> ShortSleeps:
    """Cut every ``time.sleep`` in Flower's SuperNode loop to at most ``longest`` seconds (process-wide)."""
    proxy = ShortSleeps(longest)  # refuses a bad interval before Flower is imported
    from flwr.supernode import start_client_internal as loop

    loop.time = proxy
    return proxy


def retry_object_pulls_sooner(first: float = FIRST_PULL_RETRY_S, cap: float = PULL_RETRY_CAP_S) -> list[str]:
    """Start the retries of Flower's object pulls after ``first`` seconds and cap them at ``cap`` (process-wide:
    the defaults of ``pull_objects`` and ``pull_and_inflate_object_from_tree``, which passes its own on).
    Returns the functions changed (none if Flower renamed those settings: its waits then stay)."""
    from flwr.supercore.inflatable import inflatable_utils as utils

    changed = []
    for name in ("pull_objects", "pull_and_inflate_object_from_tree"):
        defaults = getattr(getattr(utils, name, None), "__kwdefaults__", None) or {}
        if {"initial_backoff", "backoff_cap"} <= set(defaults):
            defaults.update(initial_backoff=first, backoff_cap=cap)
            changed.append(name)
    return changed


def trace_node_loop() -> None:
    """Mark (``fedlab_app/trace.py``) when this SuperNode has pulled a message and its objects (``received``),
    has its ClientApp's reply (``reply seen``, as it starts sending it) and has sent it with its objects
    (``reply sent``), by wrapping the two steps of Flower's loop (process-wide)."""
    from flwr.supernode import start_client_internal as loop

    pull, push = loop._pull_and_store_message, loop._push_messages
    node = os.getpid()

    def pull_traced(*args, receive, **kwargs):
        got = []

        def receive_noted():
            out = receive()
            if out is not None:
                got.append(out[0])
            return out

        run_id = pull(*args, receive=receive_noted, **kwargs)
        if run_id is not None:  # None: nothing there, or its objects could not be pulled
            for msg in got:
                trace.mark("node", "received", node=node, **trace.about(msg))
        return run_id

    def push_traced(*args, send, **kwargs):
        sent = []

        def send_noted(msg, *a, **k):
            trace.mark("node", "reply seen", node=node, **trace.about(msg))
            sent.append(msg)
            return send(msg, *a, **k)

        push(*args, send=send_noted, **kwargs)
        for msg in sent:
            trace.mark("node", "reply sent", node=node, **trace.about(msg))

    loop._pull_and_store_message, loop._push_messages = pull_traced, push_traced


def main(argv: list[str]) -> None:
    """``python -m fedlab_app.flower_waits S [flower-supernode arguments...]``."""
    if not argv:
        raise SystemExit("usage: python -m fedlab_app.flower_waits SECONDS [flower-supernode arguments...]")
    try:
        shorten_waits(float(argv[0]))
    except ValueError as e:
        raise SystemExit(f"fedlab_app.flower_waits: {e}") from None
    if len(retry_object_pulls_sooner()) < 2:
        print("fedlab_app.flower_waits: Flower's object pulls keep their own retry waits (settings not found)",
              file=sys.stderr, flush=True)
    if trace.enabled():
        trace_node_loop()
    from flwr.supernode.cli import flower_supernode

    sys.argv = ["flower-supernode", *argv[1:]]
    flower_supernode()


if __name__ == "__main__":
    main(sys.argv[1:])

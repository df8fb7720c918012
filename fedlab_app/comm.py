"""Communication accounting: every message the server sends or receives, counted with its bytes.

Bytes are the payload of the message's ArrayRecords as Flower counts them
(``ArrayRecord.count_bytes()``: the serialized array data, keys and metadata); config and metric
records (a few dozen bytes) are not counted. "down" = server -> client, "up" = client -> server, "p2p" = node -> node (gossip: each nonzero
off-diagonal mixing weight is one model sent; in simulation the ServerApp relays it).
Per-node counts are kept by partition id when the reply carries it, else by Flower node id.
"""

from __future__ import annotations

from collections import defaultdict
import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from fedlab_app import trace, wire
from fedlab_app.overlap import Overlap, RunEnded

POLL_S = 0.005  # how often an exchange that watches its outstanding replies asks for them (as sim_waits.POLL_S)


def message_bytes(msg: Message) -> int:
    """Payload bytes of a message: the sum of its ArrayRecords' ``count_bytes()``."""
    if msg.has_error():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


class Ledger:
    """Cumulative message and byte counts, per direction and per node.

    ``messages``/``bytes`` count what the algorithm sends (logical: one message per virtual client per
    direction, node-to-node models); ``transport`` counts what actually crossed Flower (several virtual
    clients packed into one message, relayed models inside the server's messages).
    """

    def __init__(self) -> None:
        self.messages = {"down": 0, "up": 0, "p2p": 0}
        self.bytes = {"down": 0, "up": 0, "p2p": 0}
        self.transport = {"messages": 0, "bytes": 0}
        self.per_node: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "bytes": 0})

    def carried(self, nbytes: int) -> None:
        """Count one message that crossed Flower (transport)."""
        self.transport["messages"] += 1
        self.transport["bytes"] += nbytes

    def record(self, direction: str, node: Any, nbytes: int) -> None:
        """Count one message of ``nbytes`` bytes in ``direction`` ("down" or "up") for ``node``."""
        self.messages[direction] += 1
        self.bytes[direction] += nbytes
        entry = self.per_node[str(node)]
        entry["messages"] += 1
        entry["bytes"] += nbytes

    def transfer(self, src: Any, dst: Any, nbytes: int) -> None:
        """Count one node-to-node message: once in the totals, in both nodes' per-node load."""
        self.messages["p2p"] += 1
        self.bytes["p2p"] += nbytes
        for node in (src, dst):
            entry = self.per_node[str(node)]
            entry["messages"] += 1
            entry["bytes"] += nbytes

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def state(self) -> dict:
        """JSON-able snapshot (for checkpoints and summary.json)."""
        return {"messages": dict(self.messages), "bytes": dict(self.bytes), "transport": dict(self.transport),
                "per_node": dict(self.per_node)}

    @classmethod
    def from_state(cls, state: dict) -> Ledger:
        """Inverse of :meth:`state`."""
        led = cls()
        led.messages.update(state["messages"])
        led.bytes.update(state["bytes"])
        led.transport.update(state.get("transport", {}))
        for node, entry in state["per_node"].items():
            led.per_node[node] = dict(entry)
        return led


class CountingGrid:
    """Wraps a Flower Grid: every message the run sends or receives is counted here, in one :class:`Ledger`.

    Blocking (:meth:`send_and_receive`) and non-blocking (:meth:`push_messages`/:meth:`pull_messages`)
    traffic alike, and node-to-node transfers that the server relays (:meth:`transfer`). Nodes are
    named by partition id (``node_names``, from discovery or the replies). ``round_bytes`` holds
    each node's bytes (both ways) since :meth:`begin_round`.
    """

    def __init__(self, grid: Any, ledger: Ledger, node_names: dict[int, Any] | None = None,
                 flat: bool = wire.ENABLED, free_core_at: int | None = None) -> None:
        self._grid = grid
        # outstanding replies at which a core of this machine is free (simulated nodes share it: with W of them
        # training at once, W - 1): the last round's record starts then instead of after the last reply; None:
        # after the last reply (nodes elsewhere, or their number unknown)
        self.free_core_at = free_core_at
        self.flat = flat  # arrays cross Flower flat (fedlab_app/wire.py); counted as built either way
        self.ledger = ledger
        self.node_names = node_names if node_names is not None else {}
        self.round_bytes: dict = defaultdict(int)
        self._asked: dict[str, int] = {}  # message id -> node id of every message sent
        self.overlap = Overlap()  # the last round's record, started when the next exchange's replies are in

    def __getattr__(self, name: str) -> Any:  # get_node_ids, run, ... pass through
        return getattr(self._grid, name)

    def begin_round(self) -> None:
        """Start a new round's per-node byte tally."""
        self.round_bytes = defaultdict(int)

    def replier(self, rep: Message) -> int:
        """The node a reply answers for: an error the SuperLink made for a dead node carries the SuperLink's
        own id as its source, so take the node the original message went to."""
        return self._asked.get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)

    def name_of(self, rep: Message) -> Any:
        """How the ledger and the logs name the node behind the reply ``rep``."""
        return self._name(self.replier(rep))

    def _name(self, node_id: int) -> Any:
        return self.node_names.get(node_id, node_id)

    def _learn(self, replies: Iterable[Message]) -> None:
        for rep in replies:
            if not rep.has_error() and "metrics" in rep.content.metric_records:
                pid = rep.content["metrics"].get("partition-id")
                if pid is not None:
                    self.node_names[rep.metadata.src_node_id] = int(pid)

    def _count(self, direction: str, node: Any, msg: Message, nbytes: int | None = None) -> None:
        nbytes = message_bytes(msg) if nbytes is None else nbytes
        self.ledger.record(direction, node, nbytes)
        self.round_bytes[node] += nbytes

    def count_virtual(self, direction: str, name: Any, msg: Message, nbytes: int | None = None) -> None:
        """Count one logical message of a virtual client (packed into a transport message) as ``name``;
        ``nbytes``: its payload when ``msg`` does not hold it (its model went into its node's block sums)."""
        self._count(direction, name, msg, nbytes)

    def _carried(self, msgs: Iterable[Message]) -> None:
        for m in msgs:
            self.ledger.carried(message_bytes(m))

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None,
                         count: str | None = "both") -> list[Message]:
        """Send, wait for the replies, and count (``count``: "both", "down" only, or None; errors count as
        messages of 0 bytes); then start the last round's deferred record (:mod:`fedlab_app.overlap`). Counting
        happens after the replies arrive so that a node is named by the partition id its reply carries (node ids
        are random per run; partition ids survive a resume).
        Every message sent and received is counted as transport, whatever ``count`` says."""
        messages = list(messages)
        if messages and trace.enabled():
            trace.tag_rounds(messages)
            trace.mark("server", "send", **trace.about(messages[0]))
        with wire.flat_while_sent(messages, self.flat):
            replies, ended = self._exchange(messages, timeout)
        if ended:
            raise RunEnded("an earlier round's evaluation ended the run; this round's replies are dropped")
        if messages and trace.enabled():
            trace.mark("server", "replies", **trace.about(messages[0]))
        self._carried(messages)
        self._carried(replies)
        self._asked.update({m.metadata.message_id: m.metadata.dst_node_id for m in messages})
        self._learn(replies)
        if count in ("both", "down"):
            for m in messages:
                self._count("down", self._name(m.metadata.dst_node_id), m)
        if count == "both":
            for r in replies:
                self._count("up", self.name_of(r), r)
        return replies

    def _exchange(self, messages: list[Message], timeout: float | None) -> tuple[list[Message], bool]:
        """Push ``messages``, wait for their replies (decoded) and start the last round's deferred record: once
        no more than ``free_core_at`` replies are outstanding (a core the nodes no longer use), else after the last
        one, beside the server's step on them. Returns the replies and whether the run must end (that record's
        predecessor found it diverged)."""
        if self.free_core_at is None or not self.overlap.waiting():
            replies = wire.decoded(self._grid.send_and_receive(messages, timeout=timeout))
            return replies, self.overlap.start()
        waiting = set(self._grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        started, ended = False, False
        while True:
            if not started and len(waiting) <= self.free_core_at:
                started, ended = True, self.overlap.start()
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            got = list(self._grid.pull_messages(waiting))
            replies += got
            waiting -= {r.metadata.reply_to_message_id for r in got}
            if waiting and not got:
                time.sleep(POLL_S)
        if not started:  # timed out with more replies outstanding
            ended = self.overlap.start()
        return wire.decoded(replies), ended

    def push_messages(self, messages: Iterable[Message], count: bool = True) -> list[str]:
        """Push without waiting; count each message sent (``count=False``: work re-issued after a resume,
        which the checkpointed ledger already holds)."""
        messages = list(messages)
        with wire.flat_while_sent(messages, self.flat):
            ids = list(self._grid.push_messages(messages))
        self._carried(messages)
        for mid, m in zip(ids, messages):
            self._asked[mid] = m.metadata.dst_node_id
            if count:
                self._count("down", self._name(m.metadata.dst_node_id), m)
        return ids

    def pull_messages(self, message_ids: Iterable[str], count: bool = True) -> list[Message]:
        """Pull the replies that have arrived for ``message_ids``; count each one (``count=False``: transport
        only, the caller counts the virtual clients' replies packed in it)."""
        replies = wire.decoded(self._grid.pull_messages(list(message_ids)))
        self._carried(replies)
        self._learn(replies)
        for r in replies:
            if count:
                self._count("up", self.name_of(r), r)
        return replies

    def transfer(self, src: Any, dst: Any, nbytes: int) -> None:
        """Count one node-to-node message of ``nbytes`` bytes that the server relays."""
        self.ledger.transfer(src, dst, nbytes)
        self.round_bytes[src] += nbytes
        self.round_bytes[dst] += nbytes

"""Communication accounting: every message the server sends or receives, counted with its bytes.

Bytes are the payload of the message's ArrayRecords as Flower counts them
(``ArrayRecord.count_bytes()``: the serialized array data, keys and metadata); config and metric
records (a few dozen bytes) are not counted. "down" = server -> client, "up" = client -> server, "p2p" = node -> node (gossip: each nonzero
off-diagonal mixing weight is one model sent; in simulation the ServerApp relays it).
Per-node counts are kept by partition id when the reply carries it, else by Flower node id.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from flwr.app import Message


def message_bytes(msg: Message) -> int:
    """Payload bytes of a message: the sum of its ArrayRecords' ``count_bytes()``."""
    if msg.has_error():
        return 0
    return sum(rec.count_bytes() for rec in msg.content.array_records.values())


class Ledger:
    """Cumulative message and byte counts, per direction and per node."""

    def __init__(self) -> None:
        self.messages = {"down": 0, "up": 0, "p2p": 0}
        self.bytes = {"down": 0, "up": 0, "p2p": 0}
        self.per_node: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "bytes": 0})

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
        return {"messages": dict(self.messages), "bytes": dict(self.bytes), "per_node": dict(self.per_node)}

    @classmethod
    def from_state(cls, state: dict) -> Ledger:
        """Inverse of :meth:`state`."""
        led = cls()
        led.messages.update(state["messages"])
        led.bytes.update(state["bytes"])
        for node, entry in state["per_node"].items():
            led.per_node[node] = dict(entry)
        return led


class CountingGrid:
    """Wraps a Flower Grid; counts every message through :meth:`send_and_receive` in a :class:`Ledger`."""

    def __init__(self, grid: Any, ledger: Ledger, node_names: dict[int, Any] | None = None) -> None:
        self._grid = grid
        self.ledger = ledger
        self.node_names = node_names if node_names is not None else {}
        self.last_bytes: dict = {}  # bytes both ways per node in the last send_and_receive
        self._asked: dict[str, int] = {}  # message id -> node id of the last send_and_receive

    def __getattr__(self, name: str) -> Any:  # get_node_ids, run, ... pass through
        return getattr(self._grid, name)

    @staticmethod
    def replier(rep: Message, asked: dict[str, int]) -> int:
        """The node a reply answers for: an error the SuperLink made for a dead node carries the SuperLink's
        own id as its source, so take the node the original message went to."""
        return asked.get(rep.metadata.reply_to_message_id, rep.metadata.src_node_id)

    def name_of(self, rep: Message) -> Any:
        """How the ledger and the logs name the node behind ``rep`` (a reply of the last call)."""
        return self._name(self.replier(rep, self._asked))

    def _name(self, node_id: int) -> Any:
        return self.node_names.get(node_id, node_id)

    def send_and_receive(self, messages: Iterable[Message], timeout: float | None = None) -> list[Message]:
        """Send, wait for the replies, and count both directions (errors count as messages of 0 bytes).

        Counting happens after the replies arrive so that a node is named by the partition id its
        reply carries (node ids are random per run; partition ids survive a resume).
        """
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        asked = self._asked = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        for rep in replies:
            if not rep.has_error() and "metrics" in rep.content.metric_records:
                pid = rep.content["metrics"].get("partition-id")
                if pid is not None:
                    self.node_names[rep.metadata.src_node_id] = int(pid)
        self.last_bytes = defaultdict(int)
        for direction, items, node_of in (("down", messages, lambda m: m.metadata.dst_node_id),
                                          ("up", replies, lambda m: self.replier(m, asked))):
            for m in items:
                name, nbytes = self._name(node_of(m)), message_bytes(m)
                self.ledger.record(direction, name, nbytes)
                self.last_bytes[name] += nbytes
        return replies

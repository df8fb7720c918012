"""Node discovery (``driver.discover``): a node that loses the partition query is asked again, and a node
that never answers is named in a clear error instead of leaving the run waiting forever."""

from __future__ import annotations

import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedlab_app import driver


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Messages made outside a Flower process need the task identity Flower would have set."""
    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


class LossyGrid:
    """Answers every query with partition id = node id - 100, except that the nodes in ``lose`` lose that many
    messages first (``None``: every message), and the nodes in ``late`` answer each query only once the next
    query to them has been pushed (as a SuperNode was seen doing after its SuperLink restarted)."""

    def __init__(self, lose: dict[int, int | None], late: tuple[int, ...] = ()) -> None:
        self.lose, self.late, self.asked, self.n = dict(lose), set(late), [], 0
        self.replies: dict[str, Message] = {}  # message id -> reply, once the node has answered
        self.pending: dict[int, list[tuple[str, Message]]] = {}  # late nodes' queries not answered yet

    def push_messages(self, messages):
        messages, ids = list(messages), []
        self.asked.append(sorted(m.metadata.dst_node_id for m in messages))
        for m in messages:
            self.n += 1
            mid = f"query-{self.n}"
            ids.append(mid)
            node = m.metadata.dst_node_id
            left = self.lose.get(node, 0)
            if left is None or left > 0:
                self.lose[node] = None if left is None else left - 1
                continue
            reply = Message(RecordDict({"metrics": MetricRecord({"partition-id": node - 100})}), reply_to=m)
            reply.metadata.__dict__["_reply_to_message_id"] = mid
            if node in self.late:  # this query waits; the one before it is answered now
                earlier = self.pending.setdefault(node, [])
                if earlier:
                    self.replies.update([earlier.pop(0)])
                earlier.append((mid, reply))
            else:
                self.replies[mid] = reply
        return ids

    def pull_messages(self, message_ids):
        return [self.replies.pop(mid) for mid in list(message_ids) if mid in self.replies]


def test_every_node_answers_once():
    grid = LossyGrid({})
    assert driver.discover(grid, [100, 101, 102], timeout_s=5) == {0: 100, 1: 101, 2: 102}
    assert grid.asked == [[100, 101, 102]]


def test_a_lost_query_is_asked_again_of_that_node_only(caplog):
    grid = LossyGrid({101: 2})
    assert driver.discover(grid, [100, 101, 102], timeout_s=0.05, attempts=3) == {0: 100, 1: 101, 2: 102}
    assert grid.asked == [[100, 101, 102], [101], [101]]
    assert "node(s) [101] did not answer the partition query within 0 s; asking again (2 of 3)" in caplog.text


def test_a_late_answer_to_an_earlier_query_counts():
    grid = LossyGrid({}, late=(102,))  # 102 answers query 1 only once query 2 has arrived, and so on
    assert driver.discover(grid, [100, 101, 102], timeout_s=0.05, attempts=2) == {0: 100, 1: 101, 2: 102}
    assert grid.asked == [[100, 101, 102], [102]]


def test_a_silent_node_is_named_after_the_last_attempt():
    grid = LossyGrid({102: None})
    with pytest.raises(TimeoutError,
                       match=r"node\(s\) \[102\] did not answer the partition query in 2 attempts of 0 s"):
        driver.discover(grid, [100, 101, 102], timeout_s=0.05, attempts=2)
    assert grid.asked == [[100, 101, 102], [102]]

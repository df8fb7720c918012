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
    """Answers every query with partition id = node id - 100, except that the nodes in ``lose`` lose
    that many messages first (``None``: every message)."""

    def __init__(self, lose: dict[int, int | None]) -> None:
        self.lose, self.asked, self.timeouts = dict(lose), [], []

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.asked.append(sorted(m.metadata.dst_node_id for m in messages))
        self.timeouts.append(timeout)
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            left = self.lose.get(node, 0)
            if left is None or left > 0:
                self.lose[node] = None if left is None else left - 1
                continue
            replies.append(Message(RecordDict({"metrics": MetricRecord({"partition-id": node - 100})}), reply_to=m))
        return replies


def test_every_node_answers_once():
    grid = LossyGrid({})
    assert driver.discover(grid, [100, 101, 102], timeout_s=5) == {0: 100, 1: 101, 2: 102}
    assert grid.asked == [[100, 101, 102]] and grid.timeouts == [5]


def test_a_lost_query_is_asked_again_of_that_node_only(caplog):
    grid = LossyGrid({101: 2})
    assert driver.discover(grid, [100, 101, 102], timeout_s=5, attempts=3) == {0: 100, 1: 101, 2: 102}
    assert grid.asked == [[100, 101, 102], [101], [101]]
    assert "node(s) [101] did not answer the partition query within 5 s; asking again (2 of 3)" in caplog.text


def test_a_silent_node_is_named_after_the_last_attempt():
    grid = LossyGrid({102: None})
    with pytest.raises(TimeoutError, match=r"node\(s\) \[102\] did not answer the partition query in 2 attempts of 5 s"):
        driver.discover(grid, [100, 101, 102], timeout_s=5, attempts=2)
    assert grid.asked == [[100, 101, 102], [102]]

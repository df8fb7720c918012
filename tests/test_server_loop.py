"""Server loop helpers on fake grids and run directories (no simulation)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import compose

from fedlab_app import config
from fedlab_app.config import to_nested
from fedlab_app.results import RunDir
from fedlab_app.recorder import check_resume_config
from fedlab_app.driver import wait_for_nodes


class FakeGrid:
    def __init__(self, counts):
        self.counts = iter(counts)
        self.last = []

    def get_node_ids(self):
        try:
            self.last = list(range(next(self.counts)))
        except StopIteration:
            pass
        return self.last


def test_wait_for_nodes_waits_then_returns():
    assert wait_for_nodes(FakeGrid([0, 1, 3]), 3, timeout_s=5) == [0, 1, 2]


def test_wait_for_nodes_errors_clearly():
    with pytest.raises(ValueError, match="federation has 4 nodes but num_clients=3"):
        wait_for_nodes(FakeGrid([4]), 3)
    with pytest.raises(TimeoutError, match="only 2 of num_clients=3"):
        wait_for_nodes(FakeGrid([2]), 3, timeout_s=0.3)


def test_resume_refuses_a_changed_config_but_allows_more_rounds(tmp_path):
    cfg = config.parse(config.flatten(compose()))
    rd = RunDir(tmp_path)
    rd.create()
    rd.write_config(to_nested(cfg))
    check_resume_config(dataclasses.replace(cfg, rounds=50, resume="true"), rd)
    changed = dataclasses.replace(cfg, client=dataclasses.replace(cfg.client, lr=0.5))
    with pytest.raises(ValueError, match=r"client.lr: 0.02 -> 0.5"):
        check_resume_config(changed, rd)

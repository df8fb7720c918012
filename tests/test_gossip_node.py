"""A gossip node's round in-process (no simulation): momentum_mode=keep carries the optimizer state
across rounds in the node's own state; reset starts afresh each round."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose, needs_fmnist
from flwr.app import ConfigRecord, Message, RecordDict

from fedlab_app import config, driver
from fedlab_app.local import Node
from strategies import gossip_mode
from strategies.fedavg import to_record

pytestmark = needs_fmnist


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Messages made outside a Flower process need the task identity Flower would have set."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def _round(node, rnd: int, mode: str, restore: dict | None = None) -> Message:
    conf = {"mode": "gossip", "gossip": "dpsgd", "momentum-mode": mode, "lr": 0.05, "local-epochs": 1,
            "local-steps": [3, 3], "server-round": rnd}
    content = {}
    if restore is not None:
        content["restore"] = to_record(restore)
        conf["restore-w"] = 1.0
    content["config"] = ConfigRecord(conf)
    msg = Message(RecordDict(content), dst_node_id=1, message_type="train")
    return gossip_mode.client_fit(msg, node)


@pytest.mark.parametrize("mode", ["keep", "reset"])
def test_gossip_momentum_mode(mode):
    cfg = config.parse(config.flatten(compose("strategy=dpsgd", "dataset.limit_train=300", "num_clients=2",
                                              "client.local_steps=3", f"strategy.momentum_mode={mode}")))
    state = RecordDict()
    x0 = driver.initial_arrays(cfg)
    _round(Node(cfg, 0, 2, state), 1, mode, restore=x0)
    assert (gossip_mode.OPT_KEY in state) == (mode == "keep")
    if mode == "keep":  # the momentum buffers of round 1 are in the node's state, nonzero
        bufs = [v.numpy() for v in state[gossip_mode.OPT_KEY].values()]
        assert bufs and any(np.abs(b).sum() > 0 for b in bufs)
    rep = _round(Node(cfg, 0, 2, state), 2, mode)  # round 2 continues from the node's own y (no restore)
    assert int(rep.content["metrics"]["steps"]) == 3


def test_gossip_refuses_averaged_momentum():
    with pytest.raises(config.ConfigError, match=r"strategy.momentum_mode='average' is invalid; allowed: one of reset, keep"):
        config.parse(config.flatten(compose("strategy=dpsgd", "client.local_steps=3", "strategy.momentum_mode=average")))

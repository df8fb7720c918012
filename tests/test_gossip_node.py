"""A gossip node's round in-process (no simulation): the node trains from the model its message brings
(the server applies the mixing); momentum_mode=keep carries the optimizer state across rounds in the
node's own state; reset starts afresh each round."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose, needs_fmnist
from flwr.app import ConfigRecord, Message, RecordDict

from fedlab_app import config, driver
from fedlab_app.local import Node
import strategies
from strategies import sync
from strategies.fedavg import to_record

pytestmark = needs_fmnist


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """Messages made outside a Flower process need the task identity Flower would have set."""
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


def _round(node, rnd: int, mode: str, z: dict) -> Message:
    conf = {"mode": "gossip", "momentum-mode": mode, "lr": 0.05, "local-epochs": 1, "local-steps": [3, 3],
            "server-round": rnd}
    msg = Message(RecordDict({"arrays": to_record(z), "config": ConfigRecord(conf)}), dst_node_id=1,
                  message_type="train")
    node.model.load_state_dict(msg.content["arrays"].to_torch_state_dict())  # as the ClientApp's node_for does
    return strategies.client_fits()["gossip"](msg, node)


@pytest.mark.parametrize("mode", ["keep", "reset"])
def test_gossip_momentum_mode(mode):
    cfg = config.parse(config.flatten(compose("strategy=dpsgd", "dataset.limit_train=300", "num_clients=2",
                                              "client.local_steps=3", f"strategy.momentum_mode={mode}")))
    state = RecordDict()
    x0 = driver.initial_arrays(cfg)
    rep = _round(Node(cfg, 0, 2, state), 1, mode, x0)
    assert (sync.OPT_KEY in state) == (mode == "keep")
    if mode == "keep":  # the momentum buffers of round 1 are in the node's state, nonzero
        bufs = [v.numpy() for v in state[sync.OPT_KEY].values()]
        assert bufs and any(np.abs(b).sum() > 0 for b in bufs)
    z1 = {k: v.numpy() for k, v in rep.content["arrays"].items()}
    assert any(not np.array_equal(z1[k], x0[k]) for k in x0)  # trained from the model it was sent
    rep2 = _round(Node(cfg, 0, 2, state), 2, mode, z1)  # a fresh node object: only context.state carries over
    assert int(rep2.content["metrics"]["steps"]) == 3
    # the same model sent again: keep continues from round 1's momentum, reset does not depend on it
    fresh = _round(Node(cfg, 0, 2, RecordDict()), 2, mode, z1)
    same = all(np.array_equal(rep2.content["arrays"][k].numpy(), fresh.content["arrays"][k].numpy()) for k in x0)
    assert same == (mode == "reset")


def test_gossip_refuses_averaged_momentum():
    with pytest.raises(config.ConfigError, match=r"strategy.momentum_mode='average' is invalid; allowed: one of reset, keep"):
        config.parse(config.flatten(compose("strategy=dpsgd", "client.local_steps=3", "strategy.momentum_mode=average")))

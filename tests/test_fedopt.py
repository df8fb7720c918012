"""Flower's server optimizers in the harness (strategies/fedopt.py) on fake replies."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from strategies.fedavg import Params, to_record
from strategies.fedopt import FedAdamStrategy, FedAvgMStrategy, OptParams


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):  # a Message outside a run needs an identity
        monkeypatch.setattr(TaskIdentity, attr, 1)


class Grid:
    def get_node_ids(self):
        return [1, 2]


def reply(x, n, pid):
    return Message(RecordDict({"arrays": to_record({"w": np.array(x, np.float32)}),
                               "metrics": MetricRecord({"num-examples": n, "partition-id": pid})}),
                   dst_node_id=pid + 1, message_type="train")


def step(strategy, rnd, x, replies):
    list(strategy.configure_train(rnd, to_record({"w": np.array(x, np.float32)}), ConfigRecord({"lr": 0.1}), Grid()))
    return strategy.aggregate_train(rnd, replies)[0]["w"].numpy()


def test_fedavgm_momentum_hand_computed():
    """x = [1, 2]; replies [0, 0] (n=1), [2, 2] (n=3): mean [1.5, 1.5], pseudo-gradient g1 = [-0.5, 0.5].
    round 1: v = g1, x = [1.5, 1.5]. round 2 (x = [1.5, 1.5]), replies [1, 1] and [1, 1]: g2 = [0.5, 0.5],
    v = 0.5 g1 + g2 = [0.25, 0.75], x = [1.5 - 0.25, 1.5 - 0.75] = [1.25, 0.75]."""
    s = FedAvgMStrategy(Params(1.0, 1), 0, 2, server_learning_rate=1.0, server_momentum=0.5)
    np.testing.assert_allclose(step(s, 1, [1, 2], [reply([0, 0], 1, 0), reply([2, 2], 3, 1)]), [1.5, 1.5])
    np.testing.assert_allclose(step(s, 2, [1.5, 1.5], [reply([1, 1], 1, 0), reply([1, 1], 3, 1)]), [1.25, 0.75])


def test_fedadam_state_survives_a_checkpoint():
    """Two rounds straight == round 1, state()/load_state() into a new strategy, round 2."""
    p = OptParams(eta=0.1)
    r1 = [reply([0, 0], 1, 0), reply([2, 2], 3, 1)]
    r2 = [reply([1, 3], 1, 0), reply([0, 1], 3, 1)]
    a = FedAdamStrategy(p, 0, 2, eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    x1 = step(a, 1, [1, 2], r1)
    x2 = step(a, 2, x1, r2)
    b = FedAdamStrategy(p, 0, 2, eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    step(b, 1, [1, 2], r1)
    c = FedAdamStrategy(p, 0, 2, eta=0.1, eta_l=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3)
    c.load_state({k: {n: v.copy() for n, v in d.items()} for k, d in b.state().items()})
    np.testing.assert_array_equal(step(c, 2, x1, r2), x2)
    assert not np.allclose(x2, step(FedAdamStrategy(p, 0, 2, eta=0.1), 2, x1, r2))  # state matters
    assert x2.dtype == np.float32  # Flower computes in float64; the model (and its bytes) stay float32

"""Block sums (strategies/blocks.py): a node's weighted sum of its clients' models gives the strategy's own
weighted average, by hand and against weighted_average / fednova_aggregate on random models."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose, needs_fmnist

from strategies.blocks import BlockSum, combine, reply_weight
from strategies.fedavg import weighted_average
from strategies.fednova import fednova_a, fednova_aggregate


def test_reply_weight_rules_by_hand():
    m = {"num-examples": 60, "steps": 4}
    assert reply_weight("num-examples", m) == 60
    assert reply_weight("one", m) == 1
    assert reply_weight("steps", m) == 4
    assert reply_weight("fednova", m) == 60 / 4  # no momentum: a_i = J_i
    assert reply_weight("fednova", m, momentum=0.5) == pytest.approx(60 / fednova_a(4, 0.5))
    with pytest.raises(ValueError, match="allowed: num-examples, one, steps, fednova"):
        reply_weight("median", m)


def test_two_blocks_by_hand():
    a, b = BlockSum(), BlockSum()
    a.add({"w": np.array([1.0, 2.0], np.float32)}, 1.0)
    a.add({"w": np.array([3.0, 4.0], np.float32)}, 3.0)  # block A: S = [10, 14], C = 4
    b.add({"w": np.array([5.0, 6.0], np.float32)}, 4.0)  # block B: S = [20, 24], C = 4
    assert a.sums["w"].tolist() == [10.0, 14.0] and a.weight == 4 and a.count == 2
    x, c = combine([(a.sums, a.weight), (b.sums, b.weight)], a.dtypes)
    assert x["w"].dtype == np.float32 and x["w"].tolist() == [30 / 8, 38 / 8] and c == 8


def _models(rng, n):
    return [{"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}
            for _ in range(n)]


@pytest.mark.parametrize("split", [[7], [3, 4], [1, 1, 5], [2, 2, 2, 1]])
def test_blocks_equal_the_weighted_average(split):
    rng = np.random.default_rng(0)
    models, weights = _models(rng, 7), rng.uniform(1, 100, size=7).tolist()
    blocks, i = [], 0
    for size in split:
        blk = BlockSum()
        for m, w in zip(models[i:i + size], weights[i:i + size]):
            blk.add(m, w)
        blocks.append((blk.sums, blk.weight))
        i += size
    x, _ = combine(blocks, {"w": "<f4", "b": "<f4"})
    want = weighted_average(models, weights)
    for k in want:
        np.testing.assert_allclose(x[k], want[k], rtol=1e-6, atol=1e-7)


def test_fednova_from_blocks_equals_fednova_aggregate():
    """x_t - tau_eff (sum q_i / N)(x_t - x_hat) with q_i = n_i / a_i == fednova_aggregate, as LocalSGD's
    aggregate_blocks computes it."""
    rng = np.random.default_rng(1)
    x0 = _models(rng, 1)[0]
    models, sizes, steps = _models(rng, 5), [60.0, 30.0, 90.0, 60.0, 10.0], [2, 4, 8, 3, 1]
    a = [fednova_a(j, 0.9) for j in steps]
    blk = BlockSum()
    for m, n, j in zip(models, sizes, steps):
        blk.add(m, reply_weight("fednova", {"num-examples": n, "steps": j}, 0.9))
    x_hat, q = combine([(blk.sums, blk.weight)], {"w": "<f8", "b": "<f8"})
    n = sum(sizes)
    tau = float(np.dot(np.asarray(sizes) / n, a))
    got = {k: (v.astype(np.float64) - tau * (q / n) * (v.astype(np.float64) - x_hat[k])).astype(np.float32)
           for k, v in x0.items()}
    want = fednova_aggregate(x0, models, a, sizes)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-6)


def test_combine_refuses_no_weight():
    with pytest.raises(ValueError, match="positive total weight"):
        combine([], {})



@pytest.fixture
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, attr, value, raising=False)


@needs_fmnist
@pytest.mark.parametrize("rule", ["num-examples", "steps"])
def test_a_node_sends_the_weighted_sum_of_its_clients_models(rule, _task_identity):
    """The same block of 3 clients trained twice: the block reply's S/C is the weighted average of the models
    the per-client reply holds, and it carries each client's metrics and no per-client model."""
    from flwr.app import ConfigRecord, Message, RecordDict

    from fedlab_app import config, driver
    from fedlab_app.local import Node
    from strategies import sync
    from strategies.fedavg import to_numpy, to_record

    cfg = config.parse(config.flatten(compose("dataset.limit_train=600", "num_clients=6", "sim.clients_per_worker=3")))
    x0 = driver.initial_arrays(cfg)
    conf = {"mode": "sync", "lr": 0.05, "local-epochs": 1, "local-steps": [2, 3, 4, 2, 3, 4], "server-round": 1,
            "pids": [3, 4, 5]}

    def reply(extra):
        msg = Message(RecordDict({"arrays": to_record(x0), "config": ConfigRecord({**conf, **extra})}), dst_node_id=1,
                      message_type="train")
        return sync.client_fit_block(msg, [Node(cfg, p, 6, {}) for p in (3, 4, 5)]).content

    per_client, block = reply({}), reply({"agg-weight": rule})
    assert "block/sum" in block and not any(k.startswith("arrays/") for k in block)
    models = [to_numpy(per_client[f"arrays/{p}"]) for p in (3, 4, 5)]
    weights = [reply_weight(rule, per_client[f"metrics/{p}"]) for p in (3, 4, 5)]
    assert weights == ([100.0] * 3 if rule == "num-examples" else [2.0, 3.0, 4.0])
    assert block["block"]["weight"] == sum(weights) and block["block"]["count"] == 3
    assert block["block"]["client-bytes"] == per_client["arrays/3"].count_bytes()  # the logical reply's size
    for p in (3, 4, 5):  # the same metrics but the measured compute time
        got_m, want_m = dict(block[f"metrics/{p}"]), dict(per_client[f"metrics/{p}"])
        assert got_m.pop("compute-s") >= 0 and want_m.pop("compute-s") >= 0
        assert got_m == want_m
    got, _ = combine([(to_numpy(block["block/sum"]), block["block"]["weight"])], dict(block["block/dtypes"]))
    want = weighted_average(models, weights)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=0, atol=1e-6)

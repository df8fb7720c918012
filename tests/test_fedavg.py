"""FedAvg maths and sampling against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.fedavg import FedAvgStrategy, Params, sample_clients, to_numpy, to_record, weighted_average


def test_weighted_average_hand_computed():
    """Two clients with 1 and 3 examples: x = (1*x1 + 3*x2)/4.

    x1 = [0, 4], x2 = [4, 8]  ->  [(0 + 12)/4, (4 + 24)/4] = [3, 7]; b: (2*1 + 6*3)/4 = 5
    """
    m1 = {"w": np.array([0.0, 4.0], np.float32), "b": np.array([2.0], np.float32)}
    m2 = {"w": np.array([4.0, 8.0], np.float32), "b": np.array([6.0], np.float32)}
    out = weighted_average([m1, m2], [1, 3])
    np.testing.assert_array_equal(out["w"], np.array([3.0, 7.0], np.float32))
    np.testing.assert_array_equal(out["b"], np.array([5.0], np.float32))
    assert out["w"].dtype == np.float32


def test_weighted_average_single_model_is_identity_and_int_buffers_round():
    m = {"w": np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32), "n": np.array(5, np.int64)}
    out = weighted_average([m], [7])
    np.testing.assert_array_equal(out["w"], m["w"])
    assert weighted_average([m, {**m, "n": np.array(6, np.int64)}], [1, 3])["n"] == 6  # 5.75 rounds to 6


def test_weighted_average_rejects_bad_weights():
    m = {"w": np.zeros(2)}
    with pytest.raises(ValueError, match="one weight per model"):
        weighted_average([m, m], [1])
    with pytest.raises(ValueError, match="non-negative"):
        weighted_average([m, m], [0, 0])


def test_sample_clients_fraction_minimum_and_seed():
    ids = [11, 5, 99, 42, 7, 3, 8, 1, 2, 60]
    s = sample_clients(ids, 0.3, 1, seed=0, server_round=1)
    assert len(s) == 3 and set(s) <= set(ids)
    assert s == sample_clients(list(reversed(ids)), 0.3, 1, seed=0, server_round=1)  # order of ids irrelevant
    assert len(sample_clients(ids, 0.05, 2, 0, 1)) == 2  # minimum wins over floor(0.5)
    assert sample_clients(ids, 1.0, 1, 0, 3) == sorted(ids)
    rounds = {tuple(sample_clients(ids, 0.3, 1, 0, r)) for r in range(1, 20)}
    assert len(rounds) > 5  # a different sample each round


def test_record_round_trip():
    m = {"a.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "a.bias": np.ones(2, np.float32)}
    back = to_numpy(to_record(m))
    assert list(back) == list(m)
    for k in m:
        np.testing.assert_array_equal(back[k], m[k])


def test_sampling_follows_partition_ids_not_the_runs_random_node_ids():
    """Flower gives nodes random ids each run; with the driver's {partition id: node id} map the seeded
    sample picks the same partitions whatever the ids (C = 0.5 of 6)."""
    picks = []
    for node_ids in ([11, 22, 33, 44, 55, 66], [906, 14, 333, 2, 71, 5000]):
        s = FedAvgStrategy(Params(fraction_train=0.5), seed=3, num_clients=6)
        s.partition_nodes = dict(enumerate(node_ids))
        chosen = s._sample(None, 0.5, 1, 3, server_round=2)
        picks.append(sorted(node_ids.index(n) for n in chosen))
    assert picks[0] == picks[1] and len(picks[0]) == 3


def test_array_numpy_reads_what_np_load_reads(monkeypatch):
    from flwr.app import Array

    from strategies.fedavg import array_numpy

    rng = np.random.default_rng(3)
    fast = [rng.normal(size=(6, 1, 5, 5)).astype(np.float32), np.arange(3, dtype=np.int64), np.array(2.5, np.float32),
            rng.normal(size=(120,)), np.zeros((0, 4), np.float32)]
    other = [np.asfortranarray(rng.normal(size=(3, 4))), rng.normal(size=(2, 3)).astype(">f8")]  # np.load's path
    arrays = [(Array(x), i < len(fast)) for i, x in enumerate(fast + other)]
    wants = [a.numpy() for a, _ in arrays]
    original = Array.numpy
    for (a, is_fast), want in zip(arrays, wants):
        # the C-order arrays np.save writes are read without np.load (a.numpy() would fail here)
        monkeypatch.setattr(Array, "numpy", (lambda self: pytest.fail("np.load used")) if is_fast else original)
        got = array_numpy(a)
        assert got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()
        assert got.flags.writeable and (got.flags.owndata or not is_fast)
    monkeypatch.setattr(Array, "numpy", original)
    broken = Array(dtype="float32", shape=(2,), stype="numpy.ndarray", data=Array(np.zeros(3, np.float32)).data)
    with pytest.raises(ValueError):  # shape and data disagree: np.load's path and its error, not a wrong array
        array_numpy(broken).reshape(2)

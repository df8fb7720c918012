"""The stacked gossip maths (``strategies/gossip_stacked.py``) is bit for bit the per-node maths of ``gossip.py``."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import gossip, mixing
from strategies import gossip_stacked as stacked


def _models(m: int, rng: np.random.Generator) -> list[dict[str, np.ndarray]]:
    """Nodes' models with float32 weights, signed zeros and tiny values, a float64 array and an int64 counter."""
    out = []
    for _ in range(m):
        b = rng.choice(np.array([-0.0, 0.0, 1e-30, -1e-30, 3.5], np.float32), size=4)
        out.append({"w": rng.normal(0, 1, (3, 5)).astype(np.float32), "b": b,
                    "n": np.array(rng.integers(0, 9), np.int64), "d": rng.normal(0, 1e3, 7)})
    return out


def _same(got: dict[str, np.ndarray], i: int, want: dict[str, np.ndarray]) -> None:
    for k, v in want.items():
        g = got[k][i]
        assert g.dtype == v.dtype and g.shape == v.shape and g.tobytes() == v.tobytes(), (i, k)


MATRICES = ["ring", "exponential", "random_graph", "gosgd", "row_random", "column_random", "directed_exponential"]


@pytest.mark.parametrize("name", MATRICES)
@pytest.mark.parametrize("block", [1, 4, 512])  # entries mixed at a time: models of 15, 4, 1 and 7 entries
def test_mix_is_mix_all_bit_for_bit(name, block):
    m, rng = 9, np.random.default_rng(len(name) * 7 + block)
    A = mixing.build_matrix(name, m, 2, rng, p=0.4, density=0.5)
    ys, ws = _models(m, rng), [float(w) for w in rng.uniform(0.2, 2.0, m)]
    want_y, want_w = gossip.mix_all(A, ys, ws)
    got_y, got_w = stacked.mix(A, stacked.stack(ys), ws, block=block)
    assert got_w == want_w
    for i in range(m):
        _same(got_y, i, want_y[i])


def test_mix_with_nodes_of_unequal_degree_adds_no_zero_terms():
    """Receivers with fewer senders than others get no 0 * x term: -0.0 stays -0.0, inf stays inf."""
    A = np.array([[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]])  # node 1 has two senders, 0 and 2 one
    ys = [{"v": np.array([-0.0, 1.0], np.float32)}, {"v": np.array([-0.0, 2.0], np.float32)},
          {"v": np.array([np.inf, 3.0], np.float32)}]
    got, _ = stacked.mix(A, stacked.stack(ys), [1.0] * 3, block=1)
    want, _ = gossip.mix_all(A, ys, [1.0] * 3)
    for i in range(3):
        _same(got, i, want[i])
    assert np.signbit(got["v"][0][0])  # 0.5 * -0.0 + 0.5 * -0.0; a "+ 0.0 * x" would make it +0.0


def test_mix_with_link_noise_is_mix_all_with_the_same_noise():
    m, rng = 6, np.random.default_rng(3)
    A = mixing.build_matrix("exponential", m, 0, rng)
    ys, ws = _models(m, rng), [1.0] * m
    Y = stacked.stack(ys)

    def noisy_rows(j, i):
        return gossip.link_noise({k: v[j, ...] for k, v in Y.items()}, 0.1, 5, 2, j, i)

    got, _ = stacked.mix(A, Y, ws, noisy_rows)
    want, _ = gossip.mix_all(A, ys, ws, lambda j, i: gossip.link_noise(ys[j], 0.1, 5, 2, j, i))
    plain, _ = stacked.mix(A, Y, ws)
    for i in range(m):
        _same(got, i, want[i])
    assert not np.array_equal(got["w"], plain["w"])  # the noise arrived


@pytest.mark.parametrize("method", gossip.METHODS)
def test_debias_and_local_update_are_the_per_node_rules_bit_for_bit(method):
    m, rng = 5, np.random.default_rng(11)
    ys, zs, z_new = _models(m, rng), _models(m, rng), _models(m, rng)
    ws = [float(w) for w in rng.uniform(0.01, 3.0, m)]
    got = stacked.debias(stacked.stack(ys), ws)
    upd = stacked.local_update(method, stacked.stack(ys), ws, stacked.stack(zs), stacked.stack(z_new))
    for i in range(m):
        _same(got, i, gossip.debias(ys[i], ws[i]))
        _same(upd, i, gossip.local_update(method, ys[i], ws[i], zs[i], z_new[i]))


def test_stack_and_rows_round_trip_without_copies():
    ys = _models(4, np.random.default_rng(0))
    Y = stacked.stack(ys)
    assert {k: v.shape[0] for k, v in Y.items()} == {k: 4 for k in ys[0]}
    views = stacked.rows(Y)
    for i, y in enumerate(ys):
        for k in y:
            assert isinstance(views[i][k], np.ndarray) and views[i][k].shape == y[k].shape  # 0-d stays an array
            assert views[i][k].tobytes() == y[k].tobytes() and np.shares_memory(views[i][k], Y[k])


@pytest.mark.parametrize("m", [1, 2, 7])
def test_consensus_distance_is_the_per_node_one_bit_for_bit(m):
    """Float32 and float64 arrays, signed zeros and tiny values, an int counter left out; -0.0 and NaN survive."""
    rng = np.random.default_rng(m)
    zs = _models(m, rng)
    got = stacked.consensus_distance(stacked.stack(zs))
    want = gossip.consensus_distance(zs)
    assert np.float64(got).tobytes() == np.float64(want).tobytes()
    zs[0]["w"][1, 2] = np.nan
    assert np.isnan(stacked.consensus_distance(stacked.stack(zs)))


def test_consensus_distance_of_256_lenet_sized_nodes_is_bit_for_bit():
    """Long rows: NumPy's pairwise sum over the buffer must group the entries as over the concatenation."""
    rng = np.random.default_rng(0)
    zs = [{"a": rng.normal(0, 1, (5, 7, 3)).astype(np.float32), "b": rng.normal(0, 1, 48000).astype(np.float32),
           "c": rng.normal(0, 1, 13).astype(np.float32)} for _ in range(6)]
    got = stacked.consensus_distance(stacked.stack(zs))
    assert np.float64(got).tobytes() == np.float64(gossip.consensus_distance(zs)).tobytes()

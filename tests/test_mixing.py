"""Mixing matrices (strategies/mixing.py): stochasticity claims, hand-computed weights, spectra, parsers, plot."""

from __future__ import annotations

import numpy as np
import pytest

from strategies import mixing as mx

SIZES = list(range(1, 18)) + [64]
SQUARES = (1, 4, 9, 16, 64)
RANDOM = {"random_graph", "matching", "row_random", "column_random", "gosgd"}


def _sizes(name: str) -> list[int]:
    if name == "torus":
        return list(SQUARES)
    if name == "edges":
        return [m for m in SIZES if m >= 2]
    return SIZES


def _build(name: str, m: int, t: int = 0, seed: int = 0, **kw) -> np.ndarray:
    edges = ",".join(f"{i}-{i + 1}" for i in range(m - 1))  # a path 0-1-...-(m-1)
    return mx.build_matrix(name, m, t, np.random.default_rng(seed), edges=edges, **kw)


def test_registry_tables_are_consistent():
    assert set(mx.KIND) == set(mx.MATRICES)
    assert mx.TIME_VARYING <= set(mx.MATRICES)
    assert mx.KIND["custom"] is None
    with pytest.raises(ValueError, match=r"unknown mixing matrix 'star'; allowed: uniform, ring, torus"):
        mx.build_matrix("star", 4, 0, None)
    with pytest.raises(ValueError, match="needs a numpy Generator"):
        mx.build_matrix("matching", 4, 0, None)


@pytest.mark.parametrize("name", [n for n in mx.MATRICES if n != "custom"])
def test_every_matrix_has_the_stochasticity_it_claims(name):
    need = mx.KIND[name]
    for m in _sizes(name):
        for t in range(3 if name in mx.TIME_VARYING else 1):
            w = _build(name, m, t=t, seed=t, p=0.5, density=0.5)
            assert w.shape == (m, m) and w.dtype == np.float64
            assert (w >= 0).all() and np.isfinite(w).all()
            got = mx.stochasticity(w)
            assert got == need or got == "doubly", (name, m, t, got)
            mx.check_matrix(w, need, name)  # does not raise
            if need == "doubly" and name not in ("uniform", "directed_exponential"):
                np.testing.assert_allclose(w, w.T, atol=1e-15)  # MH and matchings are symmetric


def test_metropolis_hastings_path_of_three_hand_computed():
    """Path 0-1-2, degrees (1, 2, 1): W01 = W12 = 1/(1 + max(1, 2)) = 1/3; diagonals fill the rows.
        W = [[2/3, 1/3, 0], [1/3, 1/3, 1/3], [0, 1/3, 2/3]]
    """
    w = mx.metropolis_hastings(mx.edges_adjacency(3, "0-1, 1-2"))
    np.testing.assert_allclose(w, np.array([[2, 1, 0], [1, 1, 1], [0, 1, 2]]) / 3.0, atol=1e-15)
    assert mx.message_count(w) == 4


def test_uniform_gap_is_one_and_single_node_has_none():
    for m in (2, 3, 8, 64):
        assert mx.spectral_gap(mx.uniform_matrix(m)) == pytest.approx(1.0)
    assert mx.spectral_gap(mx.uniform_matrix(1)) is None


def test_ring_gap_matches_closed_form():
    """MH on a ring (m >= 3, all degrees 2): W = 1/3 on i, i +- 1, a circulant with eigenvalues
    lambda_k = 1/3 + 2/3 cos(2 pi k / m); gap = 1 - max_{k != 0} |lambda_k|.
        m = 4: lambda = 1, 1/3, -1/3, 1/3 -> gap 2/3
    """
    for m in range(3, 18):
        w = mx.build_matrix("ring", m, 0, None)
        np.testing.assert_allclose(w[0, [m - 1, 0, 1]], [1 / 3] * 3)
        lam = 1 / 3 + 2 / 3 * np.cos(2 * np.pi * np.arange(1, m) / m)
        assert mx.spectral_gap(w) == pytest.approx(1 - np.abs(lam).max(), abs=1e-12)
    assert mx.spectral_gap(mx.build_matrix("ring", 4, 0, None)) == pytest.approx(2 / 3)
    np.testing.assert_array_equal(mx.ring_adjacency(2), [[False, True], [True, False]])
    assert not mx.ring_adjacency(1).any()


def test_graph_degrees():
    """torus 2x2 collapses to a 4-cycle (degree 2), larger tori degree 4; exponential m = 8: +-1, +-2, +-4
    gives {1, 2, 4, 6, 7} (degree 5); m = 5: +-1, +-2, +-4 mod 5 = {1, 2, 3, 4} (complete)."""
    assert set(mx.torus_adjacency(4).sum(axis=1)) == {2}
    for m in (9, 16, 64):
        assert set(mx.torus_adjacency(m).sum(axis=1)) == {4}
    assert not mx.torus_adjacency(1).any()
    e8 = mx.exponential_adjacency(8)
    assert set(np.flatnonzero(e8[0])) == {1, 2, 4, 6, 7} and set(e8.sum(axis=1)) == {5}
    np.testing.assert_array_equal(mx.exponential_adjacency(5), mx.complete_adjacency(5))
    er = mx.random_adjacency(10, 0.3, np.random.default_rng(1))
    for adj in (mx.torus_adjacency(9), e8, mx.complete_adjacency(6), er):
        np.testing.assert_array_equal(adj, adj.T)
        assert not np.diag(adj).any()


def test_torus_needs_a_square():
    with pytest.raises(ValueError, match=r"torus topology needs a square number of nodes, got 8 \(allowed: 1, 4, 9"):
        mx.torus_adjacency(8)
    with pytest.raises(ValueError, match="got 8"):
        mx.build_matrix("torus", 8, 0, None)


def test_directed_exponential_m8_cycles_through_powers_of_two():
    """m = 8, K = 3: t = 0, 1, 2, 3 -> node i sends to i + 1, i + 2, i + 4, i + 1 (mod 8), keeping 1/2."""
    for t, shift in zip(range(4), (1, 2, 4, 1)):
        w = mx.directed_exponential(8, t)
        expected = 0.5 * np.eye(8)
        expected[(np.arange(8) + shift) % 8, np.arange(8)] = 0.5
        np.testing.assert_array_equal(w, expected)
        assert mx.message_count(w) == 8
        np.testing.assert_array_equal(mx.messages_per_node(w), np.full(8, 2))
    np.testing.assert_array_equal(mx.directed_exponential(1, 5), [[1.0]])


def test_non_symmetric_gap_uses_second_eigenvalue_modulus():
    """directed_exponential(4, 0) = (I + P)/2, P the cyclic shift: eigenvalues (1 + i^k)/2, moduli |cos(pi k/4)|;
    the second largest is cos(pi/4) = 0.70711 -> gap 1 - 0.70711 = 0.29289."""
    assert mx.spectral_gap(mx.directed_exponential(4, 0)) == pytest.approx(1 - np.cos(np.pi / 4))


def test_gosgd_push_all_and_push_none():
    for m in (2, 5, 16):
        w = mx.gosgd_matrix(m, 1.0, np.random.default_rng(m))
        assert mx.message_count(w) == m  # every node pushes exactly once
        np.testing.assert_array_equal(np.diag(w), np.full(m, 0.5))
        np.testing.assert_array_equal(mx.gosgd_matrix(m, 1e-12, np.random.default_rng(m)), np.eye(m))
    np.testing.assert_array_equal(mx.gosgd_matrix(1, 1.0, np.random.default_rng(0)), [[1.0]])


def test_random_matching_pairs_nodes():
    for m in (2, 7, 8):
        w = mx.random_matching(m, np.random.default_rng(m))
        off = (w != 0) & ~np.eye(m, dtype=bool)
        assert off.sum(axis=1).max() == 1 and mx.message_count(w) == 2 * (m // 2)
        assert (np.diag(w)[off.any(axis=1)] == 0.5).all() and (np.diag(w)[~off.any(axis=1)] == 1.0).all()
    a, b = (mx.build_matrix("matching", 8, 0, np.random.default_rng(s)) for s in (0, 1))
    assert not np.array_equal(a, b)  # drawn fresh: time-varying


def test_message_count_hand_built():
    """Column 0 sends to 1 and 2 (weights 0.4 each, keeps 0.2): node 0 sends 2, nodes 1 and 2 each
    receive 1 -> per node (2, 1, 1); uniform on 4 nodes: 4 * 3 = 12; MH ring on 5: 2 per node = 10."""
    w = np.array([[0.2, 0, 0], [0.4, 1.0, 0], [0.4, 0, 1.0]])
    assert mx.message_count(w) == 2
    np.testing.assert_array_equal(mx.messages_per_node(w), [2, 1, 1])
    assert mx.message_count(np.eye(4)) == 0 and mx.message_count(mx.uniform_matrix(4)) == 12
    assert mx.message_count(mx.build_matrix("ring", 5, 0, None)) == 10


def test_row_stochastic_is_not_column_stochastic():
    w = mx.random_row_stochastic(8, np.random.default_rng(0))
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert np.abs(w.sum(axis=0) - 1.0).max() > 0.05  # the average drifts under this mixing
    assert mx.stochasticity(w) == "row"
    c = mx.random_column_stochastic(8, np.random.default_rng(0))
    assert mx.stochasticity(c) == "column"
    sparse = mx.random_row_stochastic(16, np.random.default_rng(0), density=0.0)
    np.testing.assert_array_equal(sparse, np.eye(16))


def test_stochasticity_and_check_matrix():
    assert mx.stochasticity(np.array([[0.5, 0.5], [0.5, 0.5]])) == "doubly"
    assert mx.stochasticity(np.array([[1.0, 0.0], [0.5, 0.5]])) == "row"
    assert mx.stochasticity(np.array([[1.0, 0.5], [0.0, 0.5]])) == "column"
    assert mx.stochasticity(np.array([[1.5, -0.5], [0.0, 1.0]])) == "none"
    bad = mx.parse_matrix("0.5,0.4;0.5,0.5", 2)
    with pytest.raises(ValueError, match=r"strategy\.custom: .*not row-stochastic: row 0 sums to 0\.9"):
        mx.check_matrix(bad, "row", "strategy.custom")
    row = np.array([[1.0, 0.0], [0.5, 0.5]])
    mx.check_matrix(row, "row", "m")
    with pytest.raises(ValueError, match=r"my_w: .*not column-stochastic: column 0 sums to 1\.5.*row-stochastic"):
        mx.check_matrix(row, "column", "my_w")
    with pytest.raises(ValueError, match="not doubly-stochastic"):
        mx.check_matrix(row, "doubly", "my_w")
    with pytest.raises(ValueError, match="my_w: mixing matrix must be a square, finite, non-negative"):
        mx.check_matrix(np.array([[1.5, -0.5], [0.0, 1.0]]), "row", "my_w")
    with pytest.raises(ValueError, match="square"):
        mx.check_matrix(np.ones((2, 3)) / 3, "row", "my_w")
    with pytest.raises(ValueError, match="finite"):
        mx.check_matrix(mx.parse_matrix("nan 1; 0 1", 2), "row", "my_w")


def test_parse_matrix():
    np.testing.assert_array_equal(mx.parse_matrix(" 0.5 0.5 ; 0.25,0.75; ", 2), [[0.5, 0.5], [0.25, 0.75]])
    with pytest.raises(ValueError, match=r"must be 3x3 for m = 3 nodes; got 2 rows"):
        mx.parse_matrix("1,0,0;0,1,0", 3)
    with pytest.raises(ValueError, match=r"must be 2x2 for m = 2 nodes; row 1 has 3 entries"):
        mx.parse_matrix("1,0;0,1,0", 2)
    with pytest.raises(ValueError, match=r"row 0 \('1,x'\) has an entry that is not a number"):
        mx.parse_matrix("1,x;0,1", 2)
    w = mx.build_matrix("custom", 2, 0, None, custom="0.5,0.5;0.5,0.5")
    assert mx.stochasticity(w) == "doubly"


def test_edges_parser_errors():
    np.testing.assert_array_equal(mx.edges_adjacency(3, "0-1,1-2,2-0"), mx.complete_adjacency(3))
    np.testing.assert_array_equal(mx.edges_adjacency(3, "0-1; 1-2 2-0"), mx.complete_adjacency(3))  # ; and spaces
    for text, msg in (("0-1,1-x", r"bad edge '1-x'"), ("0-1:1-2", r"bad edge '0-1:1-2'"),
                      ("0-3", r"node ids must be in \[0, 3\)"), ("1-1", "self loop"),
                      ("", "needs an edge list"), ("-1-2", "bad edge")):
        with pytest.raises(ValueError, match=msg):
            mx.edges_adjacency(3, text)


def test_is_connected():
    assert mx.is_connected(mx.ring_adjacency(10))
    assert mx.is_connected(mx.ring_adjacency(1))
    assert not mx.is_connected(mx.edges_adjacency(4, "0-1,2-3"))
    assert not mx.is_connected(mx.random_adjacency(5, 0.0, np.random.default_rng(0)))
    assert mx.is_connected(mx.random_adjacency(5, 1.0, np.random.default_rng(0)))
    # a disconnected graph's MH matrix has gap 0 (two blocks each with eigenvalue 1)
    two_blocks = mx.metropolis_hastings(mx.edges_adjacency(4, "0-1,2-3"))
    assert mx.spectral_gap(two_blocks) == pytest.approx(0.0, abs=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="integer >= 1"):
        mx.ring_adjacency(0)
    with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
        mx.gosgd_matrix(4, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"density must be in \[0, 1\]"):
        mx.random_row_stochastic(4, np.random.default_rng(0), density=-0.1)


def test_plot_mixing_matrix_writes_png(tmp_path):
    from fedlab_app.plots import plot_mixing_matrix

    out = plot_mixing_matrix(mx.build_matrix("ring", 8, 0, None), tmp_path / "plots" / "ring.png", title="ring")
    assert out.exists() and out.stat().st_size > 2000
    one = plot_mixing_matrix(np.ones((1, 1)), str(tmp_path / "one.png"))
    assert one.stat().st_size > 2000

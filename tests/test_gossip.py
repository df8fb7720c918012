"""Gossip maths (strategies/gossip.py): mixing, push-sum conservation, GoSGD merges, noise, consensus,
and the checks that refuse unusable matrices before training."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose

from fedlab_app import config
from strategies import gossip, mixing
from strategies.fedavg import weighted_average


def models(m, seed=0, shape=(4, 3)):
    rng = np.random.default_rng(seed)
    return [{"w": rng.normal(size=shape).astype(np.float32), "n": np.array(i, np.int64)} for i in range(m)]


def test_mix_hand_computed():
    """0.5*[2, 4] + 0.25*[0, 8] + 0.25*[4, 0] = [2, 4]; weights 0.5*1 + 0.25*2 + 0.25*1 = 1.25."""
    own, a, b = ({"w": np.array(v, np.float32)} for v in ([2, 4], [0, 8], [4, 0]))
    np.testing.assert_array_equal(gossip.mix(0.5, own, [0.25, 0.25], [a, b])["w"], [2.0, 4.0])
    assert gossip.mix_weight(0.5, 1.0, [0.25, 0.25], [2.0, 1.0]) == 1.25


def test_uniform_matrix_gives_every_node_the_plain_average():
    """D-PSGD with W = 1/M: every node holds LocalSGD's average."""
    ys = models(5)
    new_y, new_w = gossip.mix_all(mixing.uniform_matrix(5), ys, [1.0] * 5)
    avg = weighted_average(ys, [1] * 5)
    for y in new_y:
        np.testing.assert_allclose(y["w"], avg["w"], rtol=0, atol=1e-7)
    assert new_w == pytest.approx([1.0] * 5)


@pytest.mark.parametrize("m", [2, 5, 8])
def test_column_stochastic_mixing_conserves_total_weight_and_mass(m):
    rng = np.random.default_rng(m)
    ys, ws = models(m), list(rng.uniform(0.5, 2.0, m))
    for t in range(6):
        A = mixing.directed_exponential(m, t) if t % 2 else mixing.gosgd_matrix(m, 0.7, rng)
        new_y, new_w = gossip.mix_all(A, ys, ws)
        assert sum(new_w) == pytest.approx(sum(ws), rel=1e-12)
        np.testing.assert_allclose(sum(y["w"].astype(np.float64) for y in new_y),
                                   sum(y["w"].astype(np.float64) for y in ys), rtol=0, atol=1e-5)
        ys, ws = new_y, new_w


def test_gosgd_push_is_blot_et_al_merge():
    """Node 0 (alpha 0.5, x=[4]) pushes to node 1 (alpha 0.25, x=[1]): node 0 keeps alpha 0.25 and x=[4];
    node 1: x = (0.25*1 + 0.25*4)/(0.25 + 0.25) = 2.5, alpha = 0.5. In push-sum form y = alpha*x."""
    A = np.array([[0.5, 0.0], [0.5, 1.0]])  # column 0: node 0 keeps 1/2, sends 1/2 to node 1
    ys = [{"w": np.array([0.5 * 4.0])}, {"w": np.array([0.25 * 1.0])}]
    new_y, new_w = gossip.mix_all(A, ys, [0.5, 0.25])
    assert new_w == pytest.approx([0.25, 0.5])
    assert gossip.debias(new_y[0], new_w[0])["w"][0] == pytest.approx(4.0)
    assert gossip.debias(new_y[1], new_w[1])["w"][0] == pytest.approx(2.5)


def test_noise_zero_is_noiseless_and_noise_is_seeded():
    y = models(1)[0]
    assert gossip.link_noise(y, 0.0, seed=0, t=1, src=0, dst=1) is y
    a = gossip.link_noise({"w": np.zeros((200, 200), np.float32)}, 0.1, 0, 1, 0, 1)["w"]
    assert abs(a.std() - 0.1) < 0.005 and a.dtype == np.float32
    np.testing.assert_array_equal(a, gossip.link_noise({"w": np.zeros((200, 200), np.float32)}, 0.1, 0, 1, 0, 1)["w"])
    assert not np.array_equal(a, gossip.link_noise({"w": np.zeros((200, 200), np.float32)}, 0.1, 0, 1, 1, 0)["w"])


def test_consensus_and_distance_hand_computed():
    """z = [0, 0], [2, 0], [4, 0] -> mean [2, 0], squared distances 4, 0, 4 -> (1/3)*8."""
    zs = [{"w": np.array(v, np.float32)} for v in ([0, 0], [2, 0], [4, 0])]
    assert gossip.consensus_distance(zs) == pytest.approx(8 / 3)
    ys = [{"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, 2.0])}]
    np.testing.assert_allclose(gossip.consensus(ys, [0.5, 1.5])["w"], [2.0, 2.0])
    assert gossip.distance({"w": np.array([0.0, 3.0])}, {"w": np.array([4.0, 0.0])}) == pytest.approx(5.0)


@pytest.mark.parametrize("over, message", [
    (("strategy=dpsgd", "strategy.matrix=torus", "num_clients=8"), "torus"),
    (("strategy=dpsgd", "strategy.matrix=edges", "strategy.edges='0-1,2-3'", "num_clients=4"), "a strongly connected graph"),
    (("strategy=dpsgd", "strategy.matrix=edges", "strategy.edges=0-9", "num_clients=4"), "strategy.edges='0-9' is invalid"),
    (("strategy=dpsgd", "strategy.matrix=custom", "strategy.custom='0.5,0.6;0.5,0.5'", "num_clients=2"), "strategy.custom"),
    (("strategy=sgp", "strategy.matrix=custom", "strategy.custom='0.5,0.5;0.2,0.8'", "num_clients=2"),
     "column or doubly-stochastic matrix for strategy=sgp"),
    (("strategy=dpsgd", "strategy.matrix=custom", "strategy.custom='1,0,0;0.5,0.5,0;0,0.5,0.5'", "num_clients=3"),
     "strongly connected"),
    (("strategy=dpsgd", "strategy.matrix=column_random", "num_clients=4"), "doubly or row-stochastic"),
    (("strategy=sgp", "strategy.matrix=row_random", "num_clients=4"), "column or doubly-stochastic"),
    (("strategy=gosgd", "strategy.matrix=ring", "num_clients=4"), "gosgd"),
    (("strategy=gosgd", "strategy.p=0", "num_clients=4"), "strategy.p=0.0 is invalid; allowed: 0 < p <= 1"),
    (("strategy=dpsgd", "strategy.matrix=hypercube"), "strategy.matrix='hypercube' is invalid"),
])
def test_bad_gossip_setups_are_refused_before_training(over, message):
    with pytest.raises(config.ConfigError, match=message):
        config.parse(config.flatten(compose(*over)))


def test_auto_matrix_resolves_per_method():
    cfg = lambda m: config.parse(config.flatten(compose(f"strategy={m}", "num_clients=8")))  # noqa: E731
    assert [cfg(m).strategy.params.matrix for m in ("dpsgd", "sgp", "gosgd")] == ["ring", "directed_exponential", "gosgd"]


@pytest.mark.parametrize("method, w", [("dpsgd", 1.0), ("sgp", 1.0), ("gosgd", 0.25)])
def test_initial_state_debiases_to_the_initial_model(method, w):
    """GoSGD starts at alpha_i = 1/M: the numerator must be x0/M, or nodes would train on M x0."""
    x0 = models(1)[0]
    ys, ws = gossip.initial_state(method, 4, x0)
    assert ws == [w] * 4 and sum(ws) == pytest.approx(4 * w)
    for y, wi in zip(ys, ws):
        np.testing.assert_allclose(gossip.debias(y, wi)["w"], x0["w"], rtol=1e-6)
        assert y["n"] == x0["n"]


def test_custom_row_stochastic_matrix_is_accepted_by_dpsgd():
    cfg = config.parse(config.flatten(compose("strategy=dpsgd", "strategy.matrix=custom", "num_clients=2",
                                              "strategy.custom='0.5,0.5;0.2,0.8'")))
    assert cfg.strategy.params.custom == "0.5,0.5;0.2,0.8"


def test_strong_connectivity():
    assert gossip.strongly_connected(mixing.directed_exponential(8, 0))
    assert not gossip.strongly_connected(np.array([[1.0, 0.0], [0.5, 0.5]]))  # node 1 never sends to node 0


def _push_sum_run(method: str, A: np.ndarray, b: np.ndarray, iters: int = 4000) -> float:
    """Push-sum gossip with one exact gradient step per round on f_i(x) = (x - b_i)^2 / 2 (float64),
    lr_t = 0.5 / (t + 1)^0.7; returns the consensus x_bar = sum y_i / sum w_i."""
    m = len(b)
    ys = [{"x": np.zeros(1)} for _ in range(m)]
    ws = [1.0] * m
    for t in range(iters):
        lr = 0.5 / (t + 1) ** 0.7
        for i in range(m):
            z = gossip.debias(ys[i], ws[i])
            z_new = {"x": z["x"] - lr * (z["x"] - b[i])}
            ys[i] = gossip.local_update(method, ys[i], ws[i], z, z_new)
        ys, ws = gossip.mix_all(A, ys, ws)
    return float(gossip.consensus(ys, ws)["x"][0])


def test_sgp_local_step_minimises_the_average_objective():
    """With a column-stochastic, not doubly stochastic A, SGP's numerator step (y <- y - lr*grad f_i(z))
    reaches the minimiser of the average objective, mean(b) = 3; the rescaled step y <- w*z' (the rule
    before the fix, still GoSGD's) weights node i's objective by its Perron weight and ends elsewhere."""
    A = np.array([[0.8, 0.5, 0.5], [0.1, 0.5, 0.0], [0.1, 0.0, 0.5]])  # columns sum to 1, rows do not
    assert np.allclose(A.sum(axis=0), 1) and not np.allclose(A.sum(axis=1), 1)
    b = np.array([0.0, 3.0, 6.0])
    assert _push_sum_run("sgp", A, b) == pytest.approx(3.0, abs=0.02)
    assert abs(_push_sum_run("gosgd", A, b) - 3.0) > 0.5


def test_local_update_rules_agree_when_w_is_one():
    """D-PSGD keeps w = 1: both rules give y = z_new (the fix changes nothing there)."""
    rng = np.random.default_rng(0)
    y = {"a": rng.normal(size=4).astype(np.float32), "n": np.array(3, dtype=np.int64)}
    z = gossip.debias(y, 1.0)
    z_new = {"a": (z["a"] - 0.1).astype(np.float32), "n": np.array(4, dtype=np.int64)}
    for method in ("sgp", "dpsgd", "gosgd"):
        out = gossip.local_update(method, y, 1.0, z, z_new)
        np.testing.assert_array_equal(out["a"], z_new["a"])
        assert out["n"] == 4


def _mix_reference(self_coef, own, coefs, incoming):
    """``mix`` as first written (one new array per term): the in-place version must equal it bit for bit."""
    out = {}
    for k, v in own.items():
        acc = self_coef * v.astype(np.float64)
        for c, m in zip(coefs, incoming):
            acc = acc + c * m[k].astype(np.float64)
        out[k] = np.rint(acc).astype(v.dtype) if np.issubdtype(v.dtype, np.integer) else acc.astype(v.dtype)
    return out


def test_in_place_mix_and_consensus_are_bit_for_bit_the_plain_sums():
    rng = np.random.default_rng(7)

    def model():
        return {"w": rng.normal(0, 1, (5, 7)).astype(np.float32), "b": np.array([-0.0, 0.0, 1e-30], np.float32),
                "n": np.array(rng.integers(0, 9), np.int64), "d": rng.normal(0, 1e3, 11)}

    ys, coefs = [model() for _ in range(6)], [float(c) for c in rng.dirichlet(np.ones(6))]
    got, want = gossip.mix(coefs[0], ys[0], coefs[1:], ys[1:]), _mix_reference(coefs[0], ys[0], coefs[1:], ys[1:])
    ws = rng.uniform(0.5, 2, 6)
    total = float(np.sum(ws))
    plain = {k: sum(y[k].astype(np.float64) for y in ys) / total for k in ys[0]}
    cons = gossip.consensus(ys, ws)
    for k in ys[0]:
        assert got[k].dtype == want[k].dtype and got[k].tobytes() == want[k].tobytes(), k
        ref = np.rint(plain[k]).astype(ys[0][k].dtype) if k == "n" else plain[k].astype(ys[0][k].dtype)
        assert cons[k].dtype == ref.dtype and cons[k].tobytes() == ref.tobytes(), k
    assert np.signbit(cons["b"][0]) == np.signbit(plain["b"][0])  # -0.0 handled as sum() does


def test_checkpointed_states_restore_stacked_and_per_node_alike():
    import torch

    from strategies.gossip_mode import GossipMode, restored_states
    from strategies.gossip_stacked import stack

    rng = np.random.default_rng(5)
    ys = [{"w": rng.normal(size=(2, 3)).astype(np.float32), "n": np.array(i, np.int64)} for i in range(4)]
    mode = GossipMode()
    mode.ys, mode.ws = stack(ys), [0.5, 1.0, 1.5, 1.0]
    saved = mode.state()
    assert {k: tuple(v.shape) for k, v in saved["stacked"].items()} == {"w": (4, 2, 3), "n": (4,)}
    per_node = {"nodes": {str(i): {k: torch.from_numpy(v.copy()) for k, v in y.items()} for i, y in enumerate(ys)}}
    for got in (restored_states(saved, 4), restored_states(per_node, 4)):
        assert set(got) == {"w", "n"}
        for i, y in enumerate(ys):
            assert all(got[k][i].shape == y[k].shape and got[k].dtype == y[k].dtype
                       and got[k][i].tobytes() == y[k].tobytes() for k in y)
        assert not np.shares_memory(got["w"], mode.ys["w"])  # a restored state is the mode's own

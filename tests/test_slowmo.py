"""SlowMo (strategies/slowmo.py): the outer update against hand-computed numbers; alpha=1, beta=0 is LocalSGD."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab_app.config import ConfigError
from strategies.slowmo import Params, slowmo_update


def test_two_rounds_hand_computed():
    """gamma = 0.1, beta = 0.5.
    round 1: x_prev 1.0, x_avg 0.8: u = (1 - 0.8)/0.1 = 2;          alpha 1: x = 1 - 0.1*2 = 0.8;  alpha 2: 0.6
    round 2: x_prev 0.8, x_avg 0.7: u = 0.5*2 + (0.8 - 0.7)/0.1 = 2; alpha 1: x = 0.8 - 0.1*2 = 0.6
    """
    x, u = slowmo_update({"w": np.array([1.0])}, {"w": np.array([0.8])}, None, alpha=1.0, beta=0.5, gamma=0.1)
    assert x["w"][0] == pytest.approx(0.8) and u["w"][0] == pytest.approx(2.0)
    x2, u2 = slowmo_update(x, {"w": np.array([0.7])}, u, alpha=1.0, beta=0.5, gamma=0.1)
    assert x2["w"][0] == pytest.approx(0.6) and u2["w"][0] == pytest.approx(2.0)
    x3, _ = slowmo_update({"w": np.array([1.0])}, {"w": np.array([0.8])}, None, alpha=2.0, beta=0.5, gamma=0.1)
    assert x3["w"][0] == pytest.approx(0.6)


def test_alpha_one_beta_zero_returns_the_average_exactly():
    rng = np.random.default_rng(0)
    u = None
    x_prev = {"w": rng.normal(size=(50, 20)).astype(np.float32), "n": np.array(3, np.int64)}
    for gamma in (0.1, 0.02, 0.0037):
        x_avg = {"w": (x_prev["w"] + rng.normal(scale=0.01, size=(50, 20))).astype(np.float32), "n": np.array(4, np.int64)}
        x_new, u = slowmo_update(x_prev, x_avg, u, alpha=1.0, beta=0.0, gamma=gamma)
        np.testing.assert_array_equal(x_new["w"], x_avg["w"])
        assert x_new["w"].dtype == np.float32 and x_new["n"] == 4
        x_prev = x_new


def test_bad_parameters():
    with pytest.raises(ConfigError, match=r"strategy.beta=1.0 is invalid; allowed: 0 <= beta < 1"):
        Params(beta=1.0).validate("strategy")
    with pytest.raises(ConfigError, match=r"strategy.alpha=0.0 is invalid; allowed: a number > 0"):
        Params(alpha=0.0).validate("strategy")

"""Asynchronous SGD maths (strategies/async_sgd.py): virtual clock, delays, server step, DC-ASGD."""

from __future__ import annotations

import numpy as np
import pytest

from fedlab_app.config import ConfigError
from strategies import async_sgd as A


def test_virtual_clock_orders_a_hand_built_three_worker_timeline():
    """Durations: worker 0 always 3, worker 1 always 2, worker 2: 10 then 1.
    t=2 w1 (start v0, now v0: staleness 0), t=3 w0 (v0 vs v1: 1), t=4 w1 (v1 vs v2: 1), t=6 w0 (v2 vs v3: 1),
    t=6 w1 (tie: the lower id first; v3 vs v4: 1), t=8 w1 (v5 vs v5: 0), t=9 w0 (v4 vs v6: 2),
    t=10 w1 (v6 vs v7: 1), t=10 w2 (v0 vs v8: 8), t=11 w2 (v9 vs v9: 0)."""
    dur = {0: lambda k: 3.0, 1: lambda k: 2.0, 2: lambda k: 10.0 if k == 0 else 1.0}
    got = A.replay(lambda w, k: dur[w](k), 3, 10)
    assert [(t, w) for t, w, _ in got] == [(2, 1), (3, 0), (4, 1), (6, 0), (6, 1), (8, 1), (9, 0), (10, 1), (10, 2), (11, 2)]
    assert [s for _, _, s in got] == [0, 1, 1, 1, 1, 0, 2, 1, 8, 0]
    assert A.staleness_histogram([s for _, _, s in got]) == {"0": 3, "1": 5, "2": 1, "8": 1}


def test_delay_models():
    p = A.Params
    assert A.delay_s(p(delay="none", delay_ms=50), 0, 0, 0) == 0.0
    assert A.delay_s(p(delay="constant", delay_ms=30), 3, 7, 0) == pytest.approx(0.03)
    one = p(delay="one", delay_ms=90, delay_worker=1)
    assert (A.delay_s(one, 1, 0, 0), A.delay_s(one, 0, 0, 0)) == (pytest.approx(0.09), 0.0)
    g = [A.delay_s(p(delay="gaussian", delay_ms=60, delay_std_ms=20), 0, k, 5) for k in range(4000)]
    assert abs(np.mean(g) - 0.06) < 0.002 and abs(np.std(g) - 0.02) < 0.002 and min(g) >= 0.0
    assert g[:5] == [A.delay_s(p(delay="gaussian", delay_ms=60, delay_std_ms=20), 0, k, 5) for k in range(5)]


def vec(*v):
    return {"w": np.array(v, dtype=np.float32)}


def test_plain_step_and_momentum_hand_computed():
    """lr 0.1: w = [1, 2], g = [1, -1] -> [0.9, 2.1]. Heavy ball mu 0.5, g twice: v = g, then 1.5 g:
    w = [1, 2] - 0.1 g - 0.15 g = [0.75, 2.25]. Nesterov: u = g + mu v: 1.5 g then 1.75 g -> [0.675, 2.325]."""
    s = A.ServerState()
    np.testing.assert_allclose(A.server_step(vec(1, 2), vec(1, -1), 0.1, A.Params(), s)["w"], [0.9, 2.1], rtol=1e-6)
    assert s.version == 1
    for nesterov, want in ((False, [0.75, 2.25]), (True, [0.675, 2.325])):
        s, w = A.ServerState(), vec(1, 2)
        for _ in range(2):
            w = A.server_step(w, vec(1, -1), 0.1, A.Params(momentum=0.5, nesterov=nesterov), s)
        np.testing.assert_allclose(w["w"], want, rtol=1e-6)


def test_delay_compensation_hand_computed_and_lambda_zero_is_plain():
    """g = [2, 1], w = [1, 1], w_bak = [0.5, 2], lambda 0.5: g + 0.5 g^2 (w - w_bak) = [2 + 0.5*4*0.5, 1 + 0.5*1*(-1)]
    = [3, 0.5]; lr 0.1 -> w = [0.7, 0.95]."""
    w, g, bak = vec(1, 1), vec(2, 1), vec(0.5, 2)
    out = A.server_step(w, g, 0.1, A.Params(dc="constant", dc_lambda=0.5), A.ServerState(), 0, bak)
    np.testing.assert_allclose(out["w"], [0.7, 0.95], rtol=1e-6)
    plain = A.server_step(w, g, 0.1, A.Params(), A.ServerState())
    for mode in ("constant", "adaptive"):
        dc0 = A.server_step(w, g, 0.1, A.Params(dc=mode, dc_lambda=0.0), A.ServerState(), 0, bak)
        np.testing.assert_array_equal(dc0["w"], plain["w"])


def test_adaptive_lambda_hand_computed():
    """mom 0.5, g = [2], MS: 0 -> 0.5*4 = 2 -> lambda = 1/sqrt(2 + eps); next g = [4]: MS = 1 + 8 = 9, lambda = 1/3."""
    lam, ms = A.adaptive_lambda(None, {"w": np.array([2.0])}, 1.0, 0.5, 1e-12)
    assert ms["w"][0] == pytest.approx(2.0) and lam["w"][0] == pytest.approx(2 ** -0.5)
    lam, ms = A.adaptive_lambda(ms, {"w": np.array([4.0])}, 1.0, 0.5, 1e-12)
    assert ms["w"][0] == pytest.approx(9.0) and lam["w"][0] == pytest.approx(1 / 3)


def test_sync_mean_gradient():
    np.testing.assert_allclose(A.mean_gradient([vec(1, 2), vec(3, 6)])["w"], [2, 4])


@pytest.mark.parametrize("kw, message", [
    ({"delay_ms": -1.0}, "strategy.delay_ms=-1.0 is invalid"),
    ({"delay_std_ms": -2.0}, "strategy.delay_std_ms=-2.0 is invalid"),
    ({"dc_lambda": -1.0}, "strategy.dc_lambda=-1.0 is invalid"),
    ({"delay": "sometimes"}, "strategy.delay='sometimes' is invalid; allowed: one of none, constant, one, gaussian"),
    ({"momentum": 1.0}, "strategy.momentum=1.0 is invalid"),
])
def test_bad_parameters(kw, message):
    with pytest.raises(ConfigError, match=message):
        A.Params(**kw).validate("strategy")
    with pytest.raises(ConfigError, match=r"strategy.delay_worker=5 is invalid; allowed: a worker index in \[0, 3\)"):
        A.check_setup(A.Params(delay="one", delay_worker=5), 3)

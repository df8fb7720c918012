"""System model (clients/system.py): speeds, fixed-time step budgets, simulated round time."""

from __future__ import annotations

import numpy as np
import pytest

from clients import system


def test_speed_profiles():
    np.testing.assert_array_equal(system.client_speeds("uniform", 3, seed=0), [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(system.client_speeds("ratios", 4, 0, ratios="1:2:4:8"), [1, 2, 4, 8])
    a = system.client_speeds("lognormal", 1000, seed=1, sigma=0.5)
    assert np.all(a > 0) and abs(np.log(a).std() - 0.5) < 0.05 and abs(np.log(a).mean()) < 0.05
    np.testing.assert_array_equal(a, system.client_speeds("lognormal", 1000, seed=1, sigma=0.5))  # seeded
    assert not np.array_equal(a, system.client_speeds("lognormal", 1000, seed=2, sigma=0.5))


def test_bad_profiles_are_refused():
    with pytest.raises(ValueError, match="3 speed ratios for 4 clients"):
        system.client_speeds("ratios", 4, 0, ratios="1:2:4")
    with pytest.raises(ValueError, match="positive numbers"):
        system.parse_ratios("1:-2")
    with pytest.raises(ValueError, match="unknown speed profile 'fast'"):
        system.client_speeds("fast", 2, 0)


def test_budget_steps_floor_and_at_least_one():
    """budget 4 with speeds 1:2:4:8 -> 4, 8, 16, 32; budget 1.5 with speeds 0.5, 1, 3 -> floor 0 -> 1, 1, 4."""
    assert system.budget_steps(4, [1, 2, 4, 8]) == ([4, 8, 16, 32], [])
    assert system.budget_steps(1.5, [0.5, 1.0, 3.0]) == ([1, 1, 4], [0])
    assert system.budget_steps(4, [0.25]) == ([1], [])  # 4 * 0.25 = 1 exactly, not 0.999...


def test_round_time_hand_computed():
    """Two clients, 10 ms per step at speed 1: J = 4 at speed 1 -> 40 ms; J = 8 at speed 2 -> 40 ms.
    100 Mbit/s, 5 ms latency, 1e6 bytes both ways: 2*0.005 + 8e6/1e8 = 0.09 s. Round: 0.04 + 0.09 = 0.13 s."""
    c = [system.compute_time(4, 1.0, 0.01, measured_s=99.0), system.compute_time(8, 2.0, 0.01, measured_s=99.0)]
    assert c == pytest.approx([0.04, 0.04])
    t = system.transfer_time(1_000_000, bandwidth_mbps=100, latency_ms=5)
    assert t == pytest.approx(0.09)
    assert system.round_time(c, [t, 0.0]) == pytest.approx(0.13)
    assert system.compute_time(5, 4.0, 0.0, measured_s=2.0) == pytest.approx(0.5)  # measured time / speed
    assert system.transfer_time(10**9, 0, 0) == 0.0  # infinite bandwidth, no latency

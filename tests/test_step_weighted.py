"""Step-weighted averaging (strategies/step_weighted.py)."""

from __future__ import annotations

import numpy as np
import pytest

from strategies.fedavg import weighted_average
from strategies.step_weighted import step_weights


def test_weights_hand_computed():
    """J = 4, 8, 16, 32 (speeds 1:2:4:8): weights J_i/60; x = (4*0 + 8*1 + 16*2 + 32*3)/60 = 136/60."""
    w = step_weights([4, 8, 16, 32])
    assert w == pytest.approx([4 / 60, 8 / 60, 16 / 60, 32 / 60])
    models = [{"w": np.array([float(i)], np.float32)} for i in range(4)]
    assert weighted_average(models, w)["w"][0] == pytest.approx(136 / 60)


def test_equal_steps_is_plain_average():
    rng = np.random.default_rng(0)
    models = [{"w": rng.normal(size=(3, 3)).astype(np.float32)} for _ in range(4)]
    np.testing.assert_array_equal(weighted_average(models, step_weights([5] * 4))["w"],
                                  weighted_average(models, [1] * 4)["w"])


def test_bad_steps():
    with pytest.raises(ValueError, match="positive sum"):
        step_weights([0, 0])

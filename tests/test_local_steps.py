"""Dynamic local steps J_t (strategies/local_steps.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from strategies.local_steps import steps_at


def seq(rule, rounds=5, j0=4, **kw):
    return [steps_at(rule, t, rounds, j0, **kw) for t in range(1, rounds + 1)]


def test_fixed_linear_exp():
    assert seq("fixed") == [4, 4, 4, 4, 4]
    assert seq("linear", final=12) == [4, 6, 8, 10, 12]           # 4 + 8 (t-1)/4
    assert seq("linear", final=1) == [4, 3, 2, 2, 1]              # 3.25 -> 3, 2.5 -> 2 (round half even), 1.75 -> 2
    assert seq("exp", final=64) == [4, 8, 16, 32, 64]             # 4 * 16^((t-1)/4)
    assert seq("exp", final=1, j0=16) == [16, 8, 4, 2, 1]


def test_lr_rule():
    """lr halves -> J halves with p = 1 (ceil); p = -1.5: lr 0.25x -> J 8x."""
    assert steps_at("lr", 3, 5, 8, lr=0.05, lr0=0.1) == 4
    assert steps_at("lr", 3, 5, 8, lr=0.03, lr0=0.1) == 3            # ceil(2.4)
    assert steps_at("lr", 3, 5, 2, lr=0.025, lr0=0.1, lr_power=-1.5) == 16


def test_adacomm_rule():
    """J_t = ceil(sqrt(F_t/F_0) J_0): F_0 = 2.3, F_t = 0.575 -> sqrt(0.25) = 0.5 -> 8 * 0.5 = 4."""
    assert steps_at("adacomm", 1, 10, 8) == 8                         # no loss yet
    assert steps_at("adacomm", 2, 10, 8, loss=0.575, loss0=2.3) == 4
    assert steps_at("adacomm", 2, 10, 8, loss=0.6, loss0=2.3) == 5    # ceil(4.09)
    assert steps_at("adacomm", 2, 10, 8, loss=math.nan, loss0=2.3) == 8


def test_post_local_and_bounds():
    assert seq("post_local", switch_round=3) == [1, 1, 4, 4, 4]
    assert seq("exp", final=64, max_steps=20) == [4, 8, 16, 20, 20]
    assert seq("linear", j0=1, final=1) == [1] * 5
    with pytest.raises(ValueError, match="unknown steps.rule 'sometimes'"):
        steps_at("sometimes", 1, 5, 4)

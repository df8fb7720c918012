"""Seed statistics (fedlab_app/stats.py) against hand-computed values."""

from __future__ import annotations

import math

import pytest

from fedlab_app import stats
from fedlab_app.stats import Stat, fmt, summarize, t975


def test_n2_by_hand():
    """x = (0.80, 0.84): mean 0.82, std = sqrt((0.02^2 + 0.02^2) / 1) = 0.028284,
    half = 12.706 * 0.028284 / sqrt(2) = 12.706 * 0.02 = 0.25412."""
    s = summarize([0.80, 0.84])
    assert s.n == 2
    assert s.mean == pytest.approx(0.82)
    assert s.std == pytest.approx(0.0282843, abs=1e-7)
    assert s.half == pytest.approx(0.25412, rel=1e-3)
    assert (s.low, s.high) == pytest.approx((0.82 - s.half, 0.82 + s.half))


def test_n3_by_hand():
    """x = (1, 2, 6): mean 3, squared deviations 4 + 1 + 9 = 14, std = sqrt(14 / 2) = 2.645751,
    half = 4.303 * 2.645751 / sqrt(3) = 6.57302."""
    s = summarize([1, 2, 6])
    assert (s.n, s.mean) == (3, 3.0)
    assert s.std == pytest.approx(2.645751, abs=1e-6)
    assert s.half == pytest.approx(6.57302, rel=1e-3)


def test_n1_has_no_interval_and_nan_is_dropped():
    s = summarize([0.7, math.nan, None])
    assert (s.n, s.mean) == (1, 0.7)
    assert math.isnan(s.std) and math.isnan(s.half)  # not a zero-width interval
    assert fmt(s) == "0.7000 (n=1)"
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.mean) and fmt(empty) == "-"


def test_identical_values_give_zero_width():
    s = summarize([0.5, 0.5, 0.5])
    assert s.std == 0.0 and s.half == 0.0


def test_fmt_with_scale():
    assert fmt(Stat(2, 2_500_000.0, 1.0, 120_000.0), digits=2, scale=1e-6) == "2.50 ± 0.12"
    assert fmt(Stat(3, 0.8512, 0.01, 0.01234)) == "0.8512 ± 0.0123"


def test_t_table_values_and_normal_tail(monkeypatch):
    """Reference values: t_{0.975,1} = 12.706, t_{0.975,2} = 4.303, t_{0.975,10} = 2.228,
    t_{0.975,30} = 2.042; beyond the table, 1.96."""
    monkeypatch.setitem(__import__("sys").modules, "scipy.stats", None)  # force the table
    assert [t975(d) for d in (1, 2, 10, 30)] == [12.706, 4.303, 2.228, 2.042]
    assert t975(31) == t975(500) == stats.Z975
    assert all(a > b for a, b in zip(stats.T975, stats.T975[1:]))  # decreasing in df
    with pytest.raises(ValueError):
        t975(0)


def test_table_agrees_with_scipy_when_installed():
    sp = pytest.importorskip("scipy.stats")
    for df, v in enumerate(stats.T975, 1):
        assert v == pytest.approx(sp.t.ppf(0.975, df), abs=5e-4)

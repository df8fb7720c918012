"""Summary statistics over seeds: mean, sample standard deviation and a 95% Student-t confidence interval.

For n values x_1..x_n (n >= 2):

    mean = sum(x_i) / n
    std  = sqrt(sum((x_i - mean)^2) / (n - 1))          (sample standard deviation, ddof = 1)
    half = t_{0.975, n-1} * std / sqrt(n)                (95% CI: mean +- half)

With n = 1 the standard deviation and the interval are undefined (NaN), never zero: a single seed says
nothing about the spread, and tables and plots label such a group ``n=1`` instead of drawing a band.
The t quantile comes from scipy when it is installed, otherwise from the table below (t_{0.975, df}
for df = 1..30, to 3 decimals) and the normal quantile 1.96 beyond df = 30.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# t_{0.975, df}, df = 1..30 (two-sided 95%), e.g. Student's table or scipy.stats.t.ppf(0.975, df)
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
        2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
        2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
Z975 = 1.96


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (two-sided 95% interval).

    Parameters
    ----------
    df : int
        Degrees of freedom, at least 1 (n - 1 for n values).

    Returns
    -------
    float
        ``scipy.stats.t.ppf(0.975, df)`` when scipy is installed; otherwise the tabulated value for
        df <= 30 and 1.96 (the normal quantile) beyond.
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    try:
        from scipy.stats import t
    except ImportError:
        return T975[df - 1] if df <= len(T975) else Z975
    return float(t.ppf(0.975, df))


@dataclass(frozen=True)
class Stat:
    """Summary of n values: ``mean``, sample ``std`` and 95% CI ``half`` width (NaN when n < 2)."""

    n: int
    mean: float
    std: float
    half: float

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def summarize(values) -> Stat:
    """Mean, sample standard deviation and 95% Student-t CI half-width of ``values``.

    Parameters
    ----------
    values : iterable of float
        One value per seed; NaNs are dropped (e.g. a run that never reached a target).

    Returns
    -------
    Stat
        ``n`` (finite values), ``mean`` (NaN when n = 0), ``std`` and ``half`` (NaN when n < 2).
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Stat(0, math.nan, math.nan, math.nan)
    mean = math.fsum(xs) / n
    if n == 1:
        return Stat(1, mean, math.nan, math.nan)
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return Stat(n, mean, std, t975(n - 1) * std / math.sqrt(n))


def fmt(stat: Stat, digits: int = 4, scale: float = 1.0, label_n1: bool = True) -> str:
    """``"mean ± half"`` (n >= 2), ``"mean (n=1)"`` or ``"-"`` (no value), with ``digits`` decimals.

    ``scale`` multiplies mean and half first (e.g. ``1e-6`` for bytes shown as MB); ``label_n1=False``
    leaves out ``(n=1)`` where the table already has an ``n`` column.
    """
    if stat.n == 0:
        return "-"
    mean = f"{stat.mean * scale:.{digits}f}"
    if stat.n == 1:
        return f"{mean} (n=1)" if label_n1 else mean
    return f"{mean} ± {stat.half * scale:.{digits}f}"

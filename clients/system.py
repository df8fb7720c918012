"""Simulated system heterogeneity: client speeds, per-round step budgets, simulated round time (pure numpy).

A client's *speed* is relative: a speed-1 client needs ``step_time_s`` simulated seconds per local
step, a speed-s client ``step_time_s / s``. Profiles (``system.profile``):

    uniform     s_i = 1 for every client
    ratios      s_i from ``system.ratios``, e.g. "1:2:4:8" (one entry per client)
    lognormal   s_i = exp(N(0, sigma^2)), seeded by the run's seed

Fixed-time rounds ("workers synchronize after a fixed time", ``system.budget > 0``): the round lasts
``budget`` steps of a speed-1 client, so client i runs ``J_i = floor(budget * s_i)`` steps. A client
whose budget would give 0 steps runs 1 step (it cannot return an update without one) and the round
is reported as stretched: its time then exceeds the budget (see :func:`budget_steps`).

Simulated round time (``sim_time_s``) is the slowest sampled client's
    compute_i  = J_i * step_time_s / s_i        (or measured compute seconds / s_i if step_time_s = 0)
    transfer_i = 2 * latency + (bytes_down_i + bytes_up_i) * 8 / bandwidth     (0 if bandwidth = 0)
    round time = max_i (compute_i + transfer_i)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fedlab_base.checks import parse_ratios
from fedlab_base.schema import PROFILES

__all__ = ["PROFILES", "parse_ratios", "client_speeds", "budget_steps", "compute_time", "transfer_time", "round_time"]


def client_speeds(profile: str, num_clients: int, seed: int, ratios: str = "", sigma: float = 0.5) -> np.ndarray:
    """Relative speed of each client ``(K,)`` for ``profile`` (see the module docstring)."""
    if profile == "uniform":
        return np.ones(num_clients)
    if profile == "ratios":
        values = parse_ratios(ratios)
        if len(values) != num_clients:
            raise ValueError(f"{len(values)} speed ratios for {num_clients} clients")
        return np.asarray(values, dtype=np.float64)
    if profile == "lognormal":
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
        return np.exp(rng.normal(0.0, sigma, size=num_clients))
    raise ValueError(f"unknown speed profile {profile!r}; allowed: {', '.join(PROFILES)}")


def budget_steps(budget: float, speeds: Sequence[float]) -> tuple[list[int], list[int]]:
    """Steps per client for a fixed-time round: ``J_i = max(1, floor(budget * s_i))``.

    Returns ``(steps, raised)``: ``raised`` lists the clients whose budget gave 0 steps and that
    run 1 step instead (the caller warns).
    """
    raw = [math.floor(budget * s + 1e-9) for s in speeds]  # 1e-9: 4 * 0.25 must give 1, not 0
    return [max(1, j) for j in raw], [i for i, j in enumerate(raw) if j < 1]


def compute_time(steps: int, speed: float, step_time_s: float, measured_s: float) -> float:
    """Simulated compute seconds of one client's round (measured seconds when ``step_time_s`` is 0)."""
    return (steps * step_time_s if step_time_s > 0 else measured_s) / speed


def transfer_time(nbytes: int, bandwidth_mbps: float, latency_ms: float) -> float:
    """Seconds to send ``nbytes`` down and up (two messages): ``2*latency + 8*nbytes/bandwidth``."""
    wire = 8.0 * nbytes / (bandwidth_mbps * 1e6) if bandwidth_mbps > 0 else 0.0
    return 2.0 * latency_ms / 1e3 + wire


def round_time(compute_s: Sequence[float], transfer_s: Sequence[float]) -> float:
    """Simulated duration of a synchronous round: the slowest client's compute + transfer time."""
    return max((c + t for c, t in zip(compute_s, transfer_s)), default=0.0)

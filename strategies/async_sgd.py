"""Asynchronous SGD with a parameter server, per-worker delays and delay compensation (DC-ASGD).

Each of the M workers takes the current model w_v (version v), computes a gradient g (J = 1) or
the pseudo-gradient of J local SGD steps, g = (w_v - w_after)/lr, on its shard, and pushes it. The
server applies results one at a time as they arrive, with no barrier:

    plain      w <- w - lr * u(g)
    dc         w <- w - lr * u(g + lambda * g*g*(w - w_bak(m)))        (Zheng et al., "Asynchronous
               Stochastic Gradient Descent with Delay Compensation", ICML 2017; w_bak(m) the model
               worker m started from, kept by the server per worker)
    dc-adaptive  lambda_t = lambda0 / sqrt(MS_m + eps),  MS_m <- mom*MS_m + (1 - mom)*g*g   (per worker)
    u(d)       d (momentum 0); v <- mu*v + d, u = v (heavy ball); u = d + mu*v (Nesterov)

and then sends that worker the new model. The staleness of a result is the server version when it
is applied minus the version the worker started from. ``sync=true`` is synchronous SGD in the same
harness: every worker starts from the same version, the server waits for all and applies the mean.

Virtual clock (simulation): worker m's k-th result finishes at start + J*step_time/speed_m +
delay_m(k); results are applied in finish-time order (ties: lower worker id first). A result depends
only on the model it started from, so the workers' computations run in parallel while the run
stays deterministic for a seed; nothing sleeps. ``clock=real`` applies results in arrival order and
makes the workers sleep their delays (for deployments).

Delays (``delay``): none | constant (``delay_ms`` for every worker) | one (``delay_ms`` for worker
``delay_worker`` only) | gaussian (N(``delay_ms``, ``delay_std_ms``^2) per worker and step, clipped at 0).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedlab_base.checks import check, check_choice

DELAYS = ("none", "constant", "one", "gaussian")
CLOCKS = ("virtual", "real")
DC_MODES = ("off", "constant", "adaptive")


@dataclass(frozen=True)
class Params:
    sync: bool = False
    delay: str = "none"
    delay_ms: float = 0.0
    delay_std_ms: float = 0.0
    delay_worker: int = 0
    momentum: float = 0.0
    nesterov: bool = False
    dc: str = "off"
    dc_lambda: float = 0.0
    dc_ms_momentum: float = 0.95
    dc_eps: float = 1e-7
    clock: str = "virtual"

    def validate(self, p: str) -> None:
        check_choice(f"{p}.delay", self.delay, DELAYS)
        check(self.delay_ms >= 0 and math.isfinite(self.delay_ms), f"{p}.delay_ms", self.delay_ms, "a number >= 0")
        check(self.delay_std_ms >= 0 and math.isfinite(self.delay_std_ms), f"{p}.delay_std_ms", self.delay_std_ms,
              "a number >= 0")
        check(self.delay_worker >= 0, f"{p}.delay_worker", self.delay_worker, "a worker index >= 0")
        check(0.0 <= self.momentum < 1.0, f"{p}.momentum", self.momentum, "0 <= momentum < 1")
        check(not self.nesterov or self.momentum > 0, f"{p}.nesterov", self.nesterov, "false when momentum is 0")
        check_choice(f"{p}.dc", self.dc, DC_MODES)
        check(self.dc_lambda >= 0 and math.isfinite(self.dc_lambda), f"{p}.dc_lambda", self.dc_lambda, "a number >= 0")
        check(0.0 <= self.dc_ms_momentum < 1.0, f"{p}.dc_ms_momentum", self.dc_ms_momentum, "0 <= x < 1")
        check(self.dc_eps > 0, f"{p}.dc_eps", self.dc_eps, "a number > 0")
        check_choice(f"{p}.clock", self.clock, CLOCKS)


def check_setup(params: Params, num_clients: int) -> None:
    """Checks that need the number of workers (called before anything starts)."""
    check(params.delay != "one" or params.delay_worker < num_clients, "strategy.delay_worker", params.delay_worker,
          f"a worker index in [0, {num_clients})")


def delay_s(params: Params, worker: int, k: int, seed: int) -> float:
    """Delay (seconds) of worker ``worker``'s ``k``-th result under ``params.delay`` (seeded, >= 0)."""
    if params.delay == "none":
        return 0.0
    if params.delay == "constant" or (params.delay == "one" and worker == params.delay_worker):
        return params.delay_ms / 1e3
    if params.delay == "one":
        return 0.0
    rng = np.random.default_rng(np.random.SeedSequence([seed, worker, k, 0xDE1A]))
    return max(0.0, float(rng.normal(params.delay_ms, params.delay_std_ms))) / 1e3


class VirtualClock:
    """Finish times of in-flight work; :meth:`pop` gives the earliest ``(time, worker)`` (ties: lower id)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int]] = []

    def start(self, worker: int, now: float, duration: float) -> float:
        """Worker starts at ``now`` for ``duration`` seconds; returns its finish time."""
        heapq.heappush(self._heap, (now + duration, worker))
        return now + duration

    def pop(self) -> tuple[float, int]:
        return heapq.heappop(self._heap)

    def __len__(self) -> int:
        return len(self._heap)


@dataclass
class ServerState:
    """What the parameter server keeps besides the model: version, momentum, per-worker DC state."""

    version: int = 0
    velocity: dict[str, np.ndarray] | None = None
    mean_square: dict[int, dict[str, np.ndarray]] | None = None


def compensate(g: dict[str, np.ndarray], w: dict[str, np.ndarray], w_bak: dict[str, np.ndarray], lam: float | dict,
               ) -> dict[str, np.ndarray]:
    """DC-ASGD's corrected gradient ``g + lambda * g*g*(w - w_bak)`` (``lam`` a number or per-entry arrays)."""
    return {k: g[k] + (lam[k] if isinstance(lam, dict) else lam) * g[k] * g[k] * (w[k] - w_bak[k]) for k in g}


def adaptive_lambda(ms: dict[str, np.ndarray] | None, g: dict[str, np.ndarray], lam0: float, mom: float,
                    eps: float) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """``MS <- mom*MS + (1-mom)*g^2`` (MS starts at 0) and ``lambda = lam0/sqrt(MS + eps)``: returns (lambda, MS)."""
    ms = {k: mom * (ms[k] if ms else 0.0) + (1 - mom) * g[k] * g[k] for k in g}
    return {k: lam0 / np.sqrt(v + eps) for k, v in ms.items()}, ms


def server_step(w: dict[str, np.ndarray], g: dict[str, np.ndarray], lr: float, params: Params, state: ServerState,
                worker: int = 0, w_bak: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Apply one result to ``w`` (float64 inside; see the module docstring); updates ``state`` in place."""
    g = {k: g[k].astype(np.float64) for k in g if np.issubdtype(w[k].dtype, np.floating)}
    w64 = {k: w[k].astype(np.float64) for k in g}
    if params.dc != "off" and w_bak is not None:
        bak = {k: w_bak[k].astype(np.float64) for k in g}
        if params.dc == "adaptive":
            state.mean_square = state.mean_square or {}
            lam, state.mean_square[worker] = adaptive_lambda(state.mean_square.get(worker), g, params.dc_lambda,
                                                             params.dc_ms_momentum, params.dc_eps)
        else:
            lam = params.dc_lambda
        g = compensate(g, w64, bak, lam)
    if params.momentum > 0:
        v = {k: params.momentum * (state.velocity[k] if state.velocity else 0.0) + g[k] for k in g}
        state.velocity = v
        g = {k: g[k] + params.momentum * v[k] for k in g} if params.nesterov else v
    state.version += 1
    return {k: (w64[k] - lr * g[k]).astype(w[k].dtype) if k in g else w[k] for k in w}


def mean_gradient(gs: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Synchronous SGD's average of the workers' gradients (float64)."""
    return {k: sum(g[k].astype(np.float64) for g in gs) / len(gs) for k in gs[0]}


def staleness_histogram(values: Sequence[int]) -> dict[str, int]:
    """``{staleness: count}`` (JSON keys) of the applied results."""
    vals, counts = np.unique(np.asarray(values, dtype=np.int64), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(vals, counts)}


def replay(duration, m: int, updates: int) -> list[tuple[float, int, int]]:
    """The virtual-clock schedule alone: ``[(time, worker, staleness)]`` of the first ``updates`` results.

    ``duration(worker, k)`` is the virtual time of worker's k-th computation. This is the order the
    server loop applies results in (tested against it); a reference for hand-built timelines.
    """
    clock, version, started, ks, out = VirtualClock(), 0, [0] * m, [0] * m, []
    for w in range(m):
        clock.start(w, 0.0, duration(w, 0))
    while len(out) < updates:
        t, w = clock.pop()
        out.append((t, w, version - started[w]))
        version += 1
        ks[w] += 1
        started[w] = version
        clock.start(w, t, duration(w, ks[w]))
    return out

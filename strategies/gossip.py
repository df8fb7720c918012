"""Peer-to-peer gossip: D-PSGD, SGP (push-sum) and GoSGD as one push-sum recursion.

Every node i holds a numerator y_i (a model) and a weight w_i; it trains on the de-biased model
z_i = y_i / w_i. Each round t every node runs J local steps on z_i (then y_i = z_i w_i), and the
nodes mix with a matrix A(t) (``strategies/mixing.py``; node j sends A_ij y_j, A_ij w_j to node i):

    y_i <- A_ii y_i + sum_{j != i} A_ij (y_j + noise_ij)        w_i <- sum_j A_ij w_j

    dpsgd  (Lian et al., "Can Decentralized Algorithms Outperform Centralized Algorithms?", NeurIPS
           2017): A = W doubly stochastic (or row-stochastic), w_i = 1 for ever: x_i <- sum_j W_ij x_j.
           With a row-stochastic W the nodes still agree, but on a point that drifts away from the
           plain average of their models (reported as ``avg_drift``).
    sgp    (Assran et al., "Stochastic Gradient Push for Distributed Deep Learning", ICML 2019):
           A column-stochastic (default: the time-varying directed exponential graph); w_i varies.
    gosgd  (Blot et al., "Gossip training for deep learning", 2016): w_i = alpha_i = 1/M at the start;
           each node with probability p halves its (alpha_i, y_i) and pushes the halves to one random
           peer, who adds them: x_j <- (alpha_j x_j + alpha_i x_i)/(alpha_i + alpha_j),
           alpha_j <- alpha_i + alpha_j. That is push-sum with the GoSGD push matrix.

Column-stochastic A conserves sum_i w_i and sum_i y_i (tested); the consensus model reported and
evaluated is x_bar = sum_i y_i / sum_i w_i. ``noise_std`` sigma adds N(0, sigma_t^2) to every
transmitted model (sigma_t = sigma * noise_decay^(t-1)); sigma = 0 adds nothing (tested equal).

The nodes' local step: ``local_update`` (SGP steps the numerator, the others the de-biased model).
``momentum_mode`` (reset | keep): reset (the default, as in FedAvg and LocalSGD, so that methods
compare like for like and the committed results stay comparable) builds a fresh optimizer on every
node each round; keep carries each node's momentum buffers across rounds in its ``context.state``,
as reference SGP does.

Config keys (``strategy.*``): ``matrix`` (``auto``: the method's default, or one of ``mixing.MATRICES``), ``p`` (GoSGD push probability,
random-graph edge probability), ``density`` (random stochastic matrices), ``edges`` (an edge list
"0-1,1-2"), ``custom`` (a matrix "a,b;c,d"; rows are receivers), ``noise_std``, ``noise_decay``, ``node_eval_samples``
(test samples for the per-node accuracies; 0 = none).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedlab_base.checks import ConfigError, check, check_choice
from strategies import mixing
from strategies.params import MomentumParams

METHODS = ("dpsgd", "sgp", "gosgd")


@dataclass(frozen=True)
class Params(MomentumParams):
    matrix: str = "auto"  # auto: ring (dpsgd), directed_exponential (sgp), gosgd (gosgd)
    p: float = 0.5
    density: float = 1.0
    edges: str = ""
    custom: str = ""
    noise_std: float = 0.0
    noise_decay: float = 1.0
    node_eval_samples: int = 1000

    def validate(self, p: str) -> None:
        check_choice(f"{p}.momentum_mode", self.momentum_mode, ("reset", "keep"))
        check_choice(f"{p}.matrix", self.matrix, ("auto", *mixing.MATRICES))
        check(0.0 < self.p <= 1.0, f"{p}.p", self.p, "0 < p <= 1")
        check(0.0 < self.density <= 1.0, f"{p}.density", self.density, "0 < density <= 1")
        check(self.noise_std >= 0 and np.isfinite(self.noise_std), f"{p}.noise_std", self.noise_std, "a number >= 0")
        check(0.0 < self.noise_decay <= 1.0, f"{p}.noise_decay", self.noise_decay, "0 < decay <= 1")
        check(self.node_eval_samples >= 0, f"{p}.node_eval_samples", self.node_eval_samples, "an integer >= 0")


def mix(self_coef: float, own: dict[str, np.ndarray], coefs: Sequence[float],
        incoming: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``self_coef * own + sum_j coefs[j] * incoming[j]``, float64 inside, cast back to ``own``'s dtypes.

    Applied by the server to the models it relays (``strategies/gossip_mode.py``): the state node i's own
    mixing step would give, bit for bit, since it is this function on the same arrays.
    """
    # in place, the same operations in the same order as ``acc = self_coef * own; acc = acc + c_j * in_j``
    # (a float64 multiply of the float64 copy of in_j; tests/test_gossip.py checks bit equality): no
    # temporaries per term, which made a 256-node round's mixing allocate 2 GB
    out = {}
    for k, v in own.items():
        acc = v.astype(np.float64)
        acc *= self_coef
        term = np.empty_like(acc)
        for c, m in zip(coefs, incoming):
            np.multiply(m[k], c, out=term, dtype=np.float64)
            acc += term
        out[k] = np.rint(acc).astype(v.dtype) if np.issubdtype(v.dtype, np.integer) else acc.astype(v.dtype)
    return out


def mix_weight(self_coef: float, own: float, coefs: Sequence[float], incoming: Sequence[float]) -> float:
    """``self_coef * own + sum_j coefs[j] * incoming[j]`` in this order (node and server alike)."""
    w = self_coef * own
    for c, v in zip(coefs, incoming):
        w += c * v
    return w


def senders(A: np.ndarray, i: int) -> list[int]:
    """The nodes j != i that send to node i (``A[i, j] != 0``), in increasing order."""
    return [j for j in np.flatnonzero(A[i]).tolist() if j != i]  # != 0.0, as -0.0 == 0.0 (one pass in NumPy)


def mix_all(A: np.ndarray, ys: Sequence[dict[str, np.ndarray]], ws: Sequence[float],
            sent: Callable[[int, int], dict[str, np.ndarray]] | None = None) -> tuple[list[dict], list[float]]:
    """One gossip step for all nodes: ``y_i <- A_ii y_i + sum_{j != i} A_ij y~_ji``, ``w <- A w``.

    ``sent(j, i)`` is what node i received from node j (``y_j`` plus link noise); default ``y_j``. It
    is asked for receiver by receiver, so that only one node's incoming models exist at a time.
    """
    new_y, new_w = [], []
    for i in range(len(ys)):
        src = senders(A, i)
        coefs = [float(A[i, j]) for j in src]
        new_y.append(mix(float(A[i, i]), ys[i], coefs, [sent(j, i) if sent is not None else ys[j] for j in src]))
        new_w.append(mix_weight(float(A[i, i]), float(ws[i]), coefs, [float(ws[j]) for j in src]))
    return new_y, new_w


def link_noise(y: dict[str, np.ndarray], sigma: float, seed: int, t: int, src: int, dst: int) -> dict[str, np.ndarray]:
    """``y`` plus N(0, sigma^2) on every float entry, seeded by (seed, round, sender, receiver); sigma=0: ``y``."""
    if sigma == 0.0:
        return y
    rng = np.random.default_rng(np.random.SeedSequence([seed, t, src, dst, 0x90551]))
    return {k: (v + rng.normal(0.0, sigma, v.shape)).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
            for k, v in y.items()}


def local_update(method: str, y: dict[str, np.ndarray], w: float, z: dict[str, np.ndarray] | None,
                 z_new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A node's numerator after its local steps took its de-biased model from ``z = y/w`` to ``z_new``.

    SGP (Assran et al. 2019, Algorithm 1) steps the numerator itself: ``y <- y + (z_new - z)``, i.e.
    ``y <- y - lr*grad f_i(z)`` for one SGD step, so that every node's objective counts equally
    and the consensus minimises the average objective whatever the (column-stochastic) matrix.
    D-PSGD (w = 1) and GoSGD (whose pushes move the pair (alpha_i, x_i) with x_i = z_i) keep the
    de-biased model and rescale it: ``y <- w * z_new``. With w = 1 both rules agree. Buffers that
    are not floating point (BatchNorm's step counter) take ``z_new``'s value. Only SGP reads ``z``.
    """
    if method == "sgp":
        return {k: (y[k] + (v - z[k])).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in z_new.items()}
    return {k: (v * w).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in z_new.items()}


def debias(y: dict[str, np.ndarray], w: float) -> dict[str, np.ndarray]:
    """The model a node trains and is evaluated on: ``z = y / w`` (float entries only)."""
    return {k: (v / w).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in y.items()}


def consensus(ys: Sequence[dict[str, np.ndarray]], ws: np.ndarray) -> dict[str, np.ndarray]:
    """The consensus model ``x_bar = sum_i y_i / sum_i w_i`` (float64 inside)."""
    total = float(np.sum(ws))
    out = {}
    for k, v in ys[0].items():
        acc = np.asarray(0 + ys[0][k].astype(np.float64))  # as ``sum(...)`` starts: from 0 (-0.0 becomes 0.0)
        for y in ys[1:]:
            np.add(acc, y[k], out=acc, dtype=np.float64)
        acc /= total
        out[k] = np.rint(acc).astype(v.dtype) if np.issubdtype(v.dtype, np.integer) else acc.astype(v.dtype)
    return out


def distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Euclidean distance between two models over their float entries (the consensus drift of a round)."""
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k].astype(np.float64)) ** 2)
                             for k in a if np.issubdtype(a[k].dtype, np.floating))))


def consensus_distance(zs: Sequence[dict[str, np.ndarray]]) -> float:
    """``(1/M) sum_i ||z_i - z_mean||^2`` over all float entries (z_mean the plain mean of the z_i)."""
    keys = [k for k, v in zs[0].items() if np.issubdtype(v.dtype, np.floating)]

    def flat(z: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([z[k].ravel().astype(np.float64) for k in keys])

    # one node's float64 copy at a time, not an (M, P) matrix (256 LeNet-5 nodes: 126 MB, and as much again
    # for each temporary); the same sums in the same order as ``flat.mean(0)`` and ``sum(axis=1)`` of it
    total = flat(zs[0])
    for z in zs[1:]:
        total += flat(z)
    mean = total / len(zs)
    return float(np.mean(np.array([np.sum((flat(z) - mean) ** 2) for z in zs])))


DEFAULT_MATRIX = {"dpsgd": "ring", "sgp": "directed_exponential", "gosgd": "gosgd"}
ACCEPTS = {"dpsgd": ("doubly", "row"), "sgp": ("column", "doubly"), "gosgd": ("column",)}


def initial_weight(method: str, m: int) -> float:
    """w_i at the start: GoSGD's alpha_i = 1/M; 1 for D-PSGD and SGP."""
    return 1.0 / m if method == "gosgd" else 1.0


def initial_state(method: str, m: int, x0: dict[str, np.ndarray]) -> tuple[list[dict], list[float]]:
    """Every node's (y_i, w_i) at the start: w_i = ``initial_weight``, y_i = w_i x0 (so z_i = y_i / w_i = x0)."""
    w = initial_weight(method, m)
    y = {k: (v * w).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v for k, v in x0.items()}
    return [y] * m, [w] * m


def matrix_at(params: Params, m: int, t: int, seed: int) -> np.ndarray:
    """The mixing matrix of round ``t``: drawn afresh each round when time-varying, else the round-0 one."""
    t = t if params.matrix in mixing.TIME_VARYING else 0
    rng = np.random.default_rng(np.random.SeedSequence([seed, t, 0x313]))
    return mixing.build_matrix(params.matrix, m, t, rng, p=params.p, density=params.density, edges=params.edges,
                               custom=params.custom)


def resolved(method: str, params: Params) -> Params:
    """``params`` with ``matrix=auto`` replaced by the method's default matrix."""
    return dataclasses.replace(params, matrix=DEFAULT_MATRIX[method]) if params.matrix == "auto" else params


MAX_NODES = 4096  # a dense 4096 x 4096 float64 mixing matrix is 134 MB


def check_setup(method: str, params: Params, m: int, seed: int) -> None:
    """Refuse, before training, a matrix the method cannot use with ``m`` nodes (raises ConfigError)."""
    name = params.matrix
    check(m <= MAX_NODES, "num_clients", m, f"at most {MAX_NODES} nodes for strategy={method} (its mixing matrix "
          f"is dense, num_clients x num_clients, and is built and checked before training)")
    if method == "gosgd":
        check(name == "gosgd", "strategy.matrix", name, "gosgd (GoSGD mixes by its random pushes)")
    need = mixing.KIND.get(name)
    if need is not None:
        check(need in ACCEPTS[method], "strategy.matrix", name,
              f"a matrix that is {' or '.join(ACCEPTS[method])}-stochastic for strategy={method} ({name} is {need})")
    key = {"edges": "strategy.edges", "custom": "strategy.custom"}.get(name, "strategy.matrix")
    value = getattr(params, key.split(".")[1])
    try:
        W = matrix_at(params, m, 1, seed)
    except ValueError as exc:
        raise ConfigError(f"{key}={value!r} is invalid with num_clients={m}: {exc}") from None
    if need is None:  # a custom matrix: whatever stochasticity it has must suit the method
        got = mixing.stochasticity(W)
        check(got in ACCEPTS[method], key, value, f"a {' or '.join(ACCEPTS[method])}-stochastic matrix for "
              f"strategy={method} (rows and columns must sum to 1 as needed; this one is {got})")
    if name not in mixing.TIME_VARYING and m > 1:
        check(strongly_connected(W), key, value,
              f"a strongly connected graph with num_clients={m} (the nodes could never agree otherwise)")


def strongly_connected(W: np.ndarray) -> bool:
    """Whether every node reaches every other along the directed edges j -> i of ``W[i, j] > 0``."""
    def reach(adj: np.ndarray) -> int:
        seen, todo = {0}, [0]
        while todo:
            j = todo.pop()
            for i in np.flatnonzero(adj[:, j]):
                if int(i) not in seen:
                    seen.add(int(i))
                    todo.append(int(i))
        return len(seen)
    adj = W > 0
    return reach(adj) == len(W) and reach(adj.T) == len(W)

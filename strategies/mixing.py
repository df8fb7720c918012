"""Mixing matrices for gossip / decentralized averaging (pure numpy: no flwr, no torch).

Convention: ``W`` is (M, M) float64, non-negative, and one mixing step is ``x_i <- sum_j W[i, j] x_j``.
Row i holds the weights node i applies to what it receives; column j is what node j sends. An
off-diagonal ``W[i, j] != 0`` is one message (node j -> node i).
    row-stochastic    W 1 = 1          (each node averages what it receives; consensus value may drift)
    column-stochastic 1^T W = 1^T      (push-sum: mass conserved; divide by the pushed weight)
    doubly stochastic both             (average preserved exactly: D-PSGD, Lian et al. 2017)

Graphs are symmetric boolean adjacency matrices without self loops. Weights on a graph use
Metropolis-Hastings (Boyd, Diaconis & Xiao 2004; Xiao & Boyd 2004), d_i = degree of node i:
    W_ij = 1 / (1 + max(d_i, d_j)) if i ~ j,   W_ii = 1 - sum_{j != i} W_ij,   0 otherwise
which is symmetric and doubly stochastic for any graph.

Directed exponential graph (Assran, Loizou, Ballas & Rabbat 2019, "Stochastic Gradient Push", SGP):
at step t node i keeps 1/2 and pushes 1/2 to (i + 2^k) mod M, k = t mod K, K = #{k : 2^k < M}:
    W[i, i] = 1/2,   W[(i + 2^k) mod M, i] = 1/2
(W = (I + P)/2 with P a permutation, so it is in fact doubly stochastic; push-sum weights stay 1.)

GoSGD (Blot, Picard, Cord & Thome 2016): each node pushes with probability p to one uniformly random
other node, keeping half of its (weight, numerator): column j of a pusher is W[j, j] = W[target, j] = 1/2.
With push-sum weights a, x_i <- (a_i x_i + a_j x_j) / (a_i + a_j), a_i <- a_i + a_j is exactly push-sum.

Spectral gap (speed of consensus): symmetric W: 1 - max(|lambda_2|, |lambda_M|) (eigvalsh, lambda_1 = 1);
otherwise 1 - |lambda|_(2), the second largest eigenvalue modulus (eigvals).
"""

from __future__ import annotations

import re

import numpy as np

MATRICES = ("uniform", "ring", "torus", "exponential", "random_graph", "edges", "matching", "row_random",
            "column_random", "directed_exponential", "gosgd", "custom")
KIND: dict[str, str | None] = {
    "uniform": "doubly", "ring": "doubly", "torus": "doubly", "exponential": "doubly", "random_graph": "doubly",
    "edges": "doubly", "matching": "doubly", "row_random": "row", "column_random": "column",
    "directed_exponential": "doubly", "gosgd": "column", "custom": None}
TIME_VARYING = {"matching", "random_graph", "directed_exponential", "gosgd"}


def _check_m(m: int) -> int:
    if int(m) != m or m < 1:
        raise ValueError(f"number of nodes must be an integer >= 1, got {m!r}")
    return int(m)


def _from_edges(m: int, pairs) -> np.ndarray:
    adj = np.zeros((m, m), dtype=bool)
    for i, j in pairs:
        adj[i, j] = adj[j, i] = True
    np.fill_diagonal(adj, False)  # (M, M) symmetric, no self loops
    return adj


# ---- graphs --------------------------------------------------------------------------------------------------

def ring_adjacency(m: int) -> np.ndarray:
    """Ring: i ~ i +- 1 mod m (m = 1: no edges, m = 2: one edge). Returns (m, m) bool."""
    m = _check_m(m)
    return _from_edges(m, [(i, (i + 1) % m) for i in range(m)])


def torus_adjacency(m: int) -> np.ndarray:
    """2-D torus on a sqrt(m) x sqrt(m) grid, 4 neighbours with wrap-around (duplicates collapse when small).

    Raises
    ------
    ValueError
        If ``m`` is not a perfect square.
    """
    m = _check_m(m)
    s = int(np.sqrt(m) + 0.5)
    if s * s != m:
        raise ValueError(f"torus topology needs a square number of nodes, got {m} (allowed: 1, 4, 9, 16, ...)")
    return _from_edges(m, [(r * s + c, ((r + 1) % s) * s + c) for r in range(s) for c in range(s)]
                       + [(r * s + c, r * s + (c + 1) % s) for r in range(s) for c in range(s)])


def exponential_adjacency(m: int) -> np.ndarray:
    """Static exponential graph: i ~ (i +- 2^k) mod m for every k with 2^k < m. Returns (m, m) bool."""
    m = _check_m(m)
    return _from_edges(m, [(i, (i + 2 ** k) % m) for i in range(m) for k in range(max(m - 1, 0).bit_length())])


def complete_adjacency(m: int) -> np.ndarray:
    """Complete graph on m nodes. Returns (m, m) bool."""
    return ~np.eye(_check_m(m), dtype=bool)


def random_adjacency(m: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """Erdos-Renyi G(m, p): each of the m(m-1)/2 edges independently with probability p (may be disconnected)."""
    m = _check_m(m)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"edge probability p must be in [0, 1], got {p}")
    upper = np.triu(rng.random((m, m)) < p, k=1)
    return upper | upper.T


def edges_adjacency(m: int, text: str) -> np.ndarray:
    """Undirected graph from an edge list such as ``"0-1,1-2,2-0"`` (node ids in [0, m), no self loops).

    Edges may also be separated by ``;`` or spaces (on a Hydra command line commas need quoting).
    """
    m = _check_m(m)
    items = [s.strip() for s in re.split(r"[,;\s]+", str(text)) if s.strip()]
    if not items:
        raise ValueError(f"edges topology needs an edge list like '0-1,1-2,2-0', got {text!r}")
    pairs = []
    for item in items:
        got = re.fullmatch(r"(\d+)\s*-\s*(\d+)", item)
        if not got:
            raise ValueError(f"bad edge {item!r} in {text!r}; expected 'i-j' pairs separated by ',' or ';' e.g. '0-1;1-2'")
        i, j = int(got[1]), int(got[2])
        if i >= m or j >= m:
            raise ValueError(f"edge {item!r}: node ids must be in [0, {m}) for {m} nodes")
        if i == j:
            raise ValueError(f"edge {item!r} is a self loop; each node always keeps its own model")
        pairs.append((i, j))
    return _from_edges(m, pairs)


def is_connected(adj: np.ndarray) -> bool:
    """Whether the undirected graph ``adj`` (M, M) is connected (breadth-first search from node 0)."""
    adj = np.asarray(adj, dtype=bool)
    seen, frontier = {0}, [0]
    while frontier:
        nxt = {int(j) for i in frontier for j in np.flatnonzero(adj[i] | adj[:, i])} - seen
        seen |= nxt
        frontier = list(nxt)
    return len(seen) == adj.shape[0]


# ---- doubly stochastic ---------------------------------------------------------------------------------------

def uniform_matrix(m: int) -> np.ndarray:
    """Exact averaging: every entry 1/m (spectral gap 1)."""
    m = _check_m(m)
    return np.full((m, m), 1.0 / m)


def metropolis_hastings(adj: np.ndarray) -> np.ndarray:
    """Metropolis-Hastings weights on ``adj``: W_ij = 1/(1 + max(d_i, d_j)) on edges, the rest on the diagonal."""
    adj = np.asarray(adj, dtype=bool) & ~np.eye(len(adj), dtype=bool)
    deg = adj.sum(axis=1)  # (M,)
    w = np.where(adj, 1.0 / (1.0 + np.maximum(deg[:, None], deg[None, :])), 0.0)
    np.fill_diagonal(w, 1.0 - w.sum(axis=1))
    return w


def random_matching(m: int, rng: np.random.Generator) -> np.ndarray:
    """Uniformly random (near-)perfect matching; each pair averages with weights 1/2 (odd m: one node alone)."""
    m = _check_m(m)
    w, perm = np.eye(m), rng.permutation(m)
    for a, b in zip(perm[0:m - 1:2], perm[1::2]):
        w[a, a] = w[b, b] = w[a, b] = w[b, a] = 0.5
    return w


# ---- row / column stochastic ---------------------------------------------------------------------------------

def random_row_stochastic(m: int, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Positive uniform(0, 1] entries on the diagonal and, with probability ``density``, elsewhere; rows sum to 1.

    Not column-stochastic in general: the consensus value drifts away from the average.
    """
    m = _check_m(m)
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    w = 1.0 - rng.random((m, m))  # (M, M) in (0, 1]
    w = np.where((rng.random((m, m)) < density) | np.eye(m, dtype=bool), w, 0.0)
    return w / w.sum(axis=1, keepdims=True)


def random_column_stochastic(m: int, rng: np.random.Generator, density: float = 1.0) -> np.ndarray:
    """Column counterpart of :func:`random_row_stochastic` (columns sum to 1: push-sum)."""
    return random_row_stochastic(m, rng, density).T.copy()


def directed_exponential(m: int, t: int) -> np.ndarray:
    """SGP's time-varying directed exponential graph at step ``t``: node i keeps 1/2, sends 1/2 to i + 2^(t mod K)."""
    m = _check_m(m)
    if m == 1:
        return np.ones((1, 1))
    shift = 2 ** (int(t) % (m - 1).bit_length())  # K = #{k : 2^k < m} = ceil(log2 m)
    w = 0.5 * np.eye(m)
    w[(np.arange(m) + shift) % m, np.arange(m)] = 0.5
    return w


def gosgd_matrix(m: int, p: float, rng: np.random.Generator) -> np.ndarray:
    """GoSGD round: each node pushes with probability p half of its (weight, model) to a random other node."""
    m = _check_m(m)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"push probability p must be in [0, 1], got {p}")
    w = np.eye(m)
    if m == 1:
        return w
    push = rng.random(m) < p  # (M,)
    target = (np.arange(m) + rng.integers(1, m, size=m)) % m  # uniform over the other nodes
    j = np.flatnonzero(push)
    w[j, j] = 0.5
    w[target[j], j] = 0.5
    return w


# ---- properties ----------------------------------------------------------------------------------------------

def spectral_gap(w: np.ndarray) -> float | None:
    """Spectral gap of a stochastic matrix (larger: faster consensus).

    Parameters
    ----------
    w : np.ndarray
        Stochastic mixing matrix, shape (M, M).

    Returns
    -------
    float or None
        Symmetric W: ``1 - max(|lambda_2|, |lambda_M|)`` with eigenvalues from ``eigvalsh`` (lambda_1 = 1).
        Non-symmetric W: ``1 - |lambda|_(2)``, one minus the second largest eigenvalue modulus (``eigvals``).
        None when M = 1. 0 for a disconnected graph.
    """
    w = np.asarray(w, dtype=np.float64)
    if w.shape[0] == 1:
        return None
    if np.allclose(w, w.T):
        lam = np.linalg.eigvalsh(w)  # ascending
        return float(1.0 - max(abs(lam[-2]), abs(lam[0])))
    mod = np.sort(np.abs(np.linalg.eigvals(w)))[::-1]
    return float(1.0 - mod[1])


def stochasticity(w: np.ndarray, atol: float = 1e-9) -> str:
    """``"doubly"``, ``"row"``, ``"column"`` or ``"none"`` (also ``"none"`` if an entry is below ``-atol``)."""
    w = np.asarray(w, dtype=np.float64)
    if w.min() < -atol:
        return "none"
    rows, cols = np.allclose(w.sum(axis=1), 1.0, atol=atol, rtol=0), np.allclose(w.sum(axis=0), 1.0, atol=atol, rtol=0)
    return "doubly" if rows and cols else "row" if rows else "column" if cols else "none"


def check_matrix(w: np.ndarray, need: str, name: str) -> np.ndarray:
    """Validate a mixing matrix.

    Parameters
    ----------
    w : np.ndarray
        Candidate matrix, must be square (M, M), finite and non-negative.
    need : {"row", "column", "doubly"}
        Required stochasticity: ``"row"`` accepts row or doubly, ``"column"`` column or doubly,
        ``"doubly"`` only doubly (tolerance 1e-9 on the sums).
    name : str
        What to call the matrix in the error (e.g. the config key).

    Returns
    -------
    np.ndarray
        ``w`` as float64.

    Raises
    ------
    ValueError
        Naming ``name``, the failing property, the worst row/column sum and what is allowed.
    """
    if need not in ("row", "column", "doubly"):
        raise ValueError(f"need must be 'row', 'column' or 'doubly', got {need!r}")
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1] or not np.isfinite(w).all() or w.min() < -1e-9:
        raise ValueError(f"{name}: mixing matrix must be a square, finite, non-negative (M, M) array, "
                         f"got shape {w.shape}, min {np.nanmin(w) if w.size else 'n/a'}")
    for axis, kind, part in ((1, "row", "row"), (0, "column", "column")):
        if need in (kind, "doubly"):
            sums = w.sum(axis=axis)
            worst = int(np.argmax(np.abs(sums - 1.0)))
            if abs(sums[worst] - 1.0) > 1e-9:
                raise ValueError(f"{name}: mixing matrix is not {need}-stochastic: {part} {worst} sums to "
                                 f"{sums[worst]:.6g}; allowed: non-negative entries with every {part} summing to 1 "
                                 f"(this matrix is {stochasticity(w)}-stochastic)")
    return w


def parse_matrix(text: str, m: int) -> np.ndarray:
    """Parse ``"0.5,0.5;0.5,0.5"`` (rows split by ';', entries by ',' or spaces) into an (m, m) float64 array."""
    rows = [r.strip() for r in str(text).strip().strip(";").split(";")]
    out = []
    for i, row in enumerate(rows):
        toks = [t for t in re.split(r"[,\s]+", row) if t]
        try:
            vals = [float(t) for t in toks]
        except ValueError:
            raise ValueError(f"custom matrix row {i} ({row!r}) has an entry that is not a number") from None
        if len(vals) != m:
            raise ValueError(f"custom matrix must be {m}x{m} for m = {m} nodes; row {i} has {len(vals)} entries")
        out.append(vals)
    if len(out) != m:
        raise ValueError(f"custom matrix must be {m}x{m} for m = {m} nodes; got {len(out)} rows "
                         "(separate rows with ';')")
    return np.array(out, dtype=np.float64)


def message_count(w: np.ndarray) -> int:
    """Number of models sent node-to-node in one mixing step: nonzero off-diagonal entries."""
    off = np.asarray(w) != 0
    return int(off.sum() - np.trace(off))


def messages_per_node(w: np.ndarray) -> np.ndarray:
    """Models each node sends (nonzero off-diagonal in its column) plus receives (in its row), shape (M,)."""
    off = (np.asarray(w) != 0) & ~np.eye(len(w), dtype=bool)
    return off.sum(axis=0) + off.sum(axis=1)


def build_matrix(name: str, m: int, t: int, rng: np.random.Generator | None, *, p: float = 0.5,
                 density: float = 1.0, edges: str = "", custom: str = "") -> np.ndarray:
    """The mixing matrix ``name`` for ``m`` nodes at step ``t``.

    Parameters
    ----------
    name : str
        One of ``MATRICES``. Graph topologies (ring, torus, exponential, random_graph, edges) get
        Metropolis-Hastings weights; names in ``TIME_VARYING`` change with ``t`` or the draw.
    m : int
        Number of nodes.
    t : int
        Step (round) index; only ``directed_exponential`` uses it.
    rng : np.random.Generator or None
        Source of randomness; required for random_graph, matching, row_random, column_random, gosgd.
    p : float
        Edge probability of ``random_graph`` (G(m, p), drawn fresh each call, may be disconnected);
        push probability of ``gosgd``.
    density : float
        Off-diagonal fill probability of ``row_random`` / ``column_random``.
    edges : str
        Edge list for ``edges``, e.g. ``"0-1,1-2,2-0"``.
    custom : str
        Matrix text for ``custom``, e.g. ``"0.5,0.5;0.5,0.5"``.

    Returns
    -------
    np.ndarray
        (m, m) float64 with the stochasticity ``KIND[name]``; ``custom`` is only parsed, the caller checks it
        with :func:`check_matrix`.
    """
    if name not in MATRICES:
        raise ValueError(f"unknown mixing matrix {name!r}; allowed: {', '.join(MATRICES)}")
    if rng is None and name in ("random_graph", "matching", "row_random", "column_random", "gosgd"):
        raise ValueError(f"mixing matrix {name!r} is random and needs a numpy Generator (rng)")
    graphs = {"ring": ring_adjacency, "torus": torus_adjacency, "exponential": exponential_adjacency}
    if name in graphs:
        return metropolis_hastings(graphs[name](m))
    return {
        "uniform": lambda: uniform_matrix(m),
        "random_graph": lambda: metropolis_hastings(random_adjacency(m, p, rng)),
        "edges": lambda: metropolis_hastings(edges_adjacency(m, edges)),
        "matching": lambda: random_matching(m, rng),
        "row_random": lambda: random_row_stochastic(m, rng, density),
        "column_random": lambda: random_column_stochastic(m, rng, density),
        "directed_exponential": lambda: directed_exponential(m, t),
        "gosgd": lambda: gosgd_matrix(m, p, rng),
        "custom": lambda: parse_matrix(custom, m),
    }[name]()

"""The gossip maths of ``strategies/gossip.py`` on stacked node states, bit for bit the per-node functions.

A stacked state holds every node's model as one ``(M, ...)`` array per name (row i is node i's). The server
keeps the nodes' states so: a round's messages carry one array per name for a block of nodes instead of one
per node and name (``strategies/gossip_mode.py``), a checkpoint pickles a few arrays, and the local update
is one operation per name. Each function applies, element by element, the same floating-point operations in
the same order as its per-node counterpart (tested bit for bit, ``tests/test_gossip_stacked.py``):

    debias        z_i = y_i / w_i                        (:func:`gossip.debias`, row i)
    consensus_distance  (1/M) sum_i ||z_i - z_mean||^2   (:func:`gossip.consensus_distance`)
    local_update  y_i = w_i z_i'  or  y_i + (z_i' - z_i)  (:func:`gossip.local_update`, row i)
    mix           y_i <- A_ii y_i + sum_{j in senders(i)} A_ij y~_ji, w <- A w  (:func:`gossip.mix_all`)

The mixing takes every receiver at once, a block of model entries at a time (:func:`mix`), in torch: the
block of all nodes' rows is converted to float64 once, then the k-th senders of all receivers are gathered,
multiplied and added (k = 1, 2, ... in ``gossip.senders`` order), each a separate torch operation, so every
sum is rounded as NumPy rounds it in :func:`gossip.mix`. On 256 LeNet-5 nodes (exponential graph, 15
senders each) a step took 0.25 s (1 torch thread) and 0.23 s (2) against 0.45 s receiver by receiver
(``python bench/bench_mix.py --reps 5`` -> ``results/bench/mix.json``, medians, bit for bit equal).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from strategies import gossip

BLOCK = 1024  # model entries mixed at a time: 256 nodes' rows, float64 terms and sums, 3 x 2 MB


def stack(models: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-node models (same names, shapes, dtypes) -> one ``(M, ...)`` array per name."""
    return {k: np.stack([y[k] for y in models]) for k in models[0]}


def row(stacked: dict[str, np.ndarray], i: int) -> dict[str, np.ndarray]:
    """Node i's model as views of the stacked arrays (no copy): ``Y[k][i, ...]``, an array also where node i's
    ``k`` has no dimensions (``Y[k][i]`` would be a NumPy scalar)."""
    return {k: v[i, ...] for k, v in stacked.items()}


def rows(stacked: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every node's model, :func:`row` by row."""
    return [row(stacked, i) for i in range(len(next(iter(stacked.values()))))]


def _per_row(ws: Sequence[float], v: np.ndarray) -> np.ndarray:
    """The weights as a column in ``v``'s dtype, one per row: what ``v_i op w_i`` casts a Python float to
    (NumPy's weak scalars: a float32 array and a Python float compute in float32)."""
    return np.asarray(ws, dtype=np.float64).astype(v.dtype).reshape((len(v),) + (1,) * (v.ndim - 1))


def _floating(v: np.ndarray) -> bool:
    return np.issubdtype(v.dtype, np.floating)


def debias(ys: dict[str, np.ndarray], ws: Sequence[float]) -> dict[str, np.ndarray]:
    """Every node's ``z_i = y_i / w_i`` (float entries; others as they are), as :func:`gossip.debias`.

    With every w_i = 1 (D-PSGD) this is ``ys`` itself, the same arrays, without a copy: ``y / 1.0`` is ``y``
    exactly.
    """
    if all(float(w) == 1.0 for w in ws):
        return dict(ys)
    return {k: np.divide(v, _per_row(ws, v)) if _floating(v) else v for k, v in ys.items()}


def consensus_distance(zs: dict[str, np.ndarray]) -> float:
    """:func:`gossip.consensus_distance` of ``rows(zs)``, bit for bit, without a concatenated copy of each node.

    The same float64 sums in the same order: the mean node by node, then each node's squared distance summed
    by NumPy over one contiguous buffer laid out as the per-node function concatenates (so its pairwise sum
    groups the same entries), then their mean.
    """
    keys = [k for k, v in zs.items() if _floating(v)]
    flat = {k: zs[k].reshape(len(zs[k]), -1) for k in keys}
    m = len(next(iter(zs.values())))
    sizes = [flat[k].shape[1] for k in keys]
    edges = np.cumsum([0, *sizes]).tolist()
    part = {k: slice(a, b) for k, a, b in zip(keys, edges[:-1], edges[1:], strict=True)}
    total = np.empty(edges[-1], np.float64)
    for k in keys:
        total[part[k]] = flat[k][0]
    for i in range(1, m):
        for k in keys:
            np.add(total[part[k]], flat[k][i], out=total[part[k]], dtype=np.float64)
    mean = total / m
    buf = total  # reused: the sums are in ``mean`` now
    sums = np.empty(m, np.float64)
    for i in range(m):
        for k in keys:
            np.subtract(flat[k][i], mean[part[k]], out=buf[part[k]], dtype=np.float64)
        np.square(buf, out=buf)
        sums[i] = np.sum(buf)
    return float(np.mean(sums))


def local_update(method: str, ys: dict[str, np.ndarray], ws: Sequence[float], zs: dict[str, np.ndarray] | None,
                 z_new: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every node's numerator after its local steps, as :func:`gossip.local_update` (only SGP reads ``zs``).

    Computed in place in ``z_new``'s float arrays (the caller's to give away: the trained models as received),
    with the same operations in the same order; returns ``z_new``.
    """
    for k, v in z_new.items():
        if not _floating(v):
            continue
        if method == "sgp":
            np.subtract(v, zs[k], out=v)
            np.add(ys[k], v, out=v)
        else:
            np.multiply(v, _per_row(ws, v), out=v)
    return z_new


def mix(A: np.ndarray, ys: dict[str, np.ndarray], ws: Sequence[float],
        sent: Callable[[int, int], dict[str, np.ndarray]] | None = None,
        block: int = BLOCK) -> tuple[dict[str, np.ndarray], list[float]]:
    """One gossip step for all nodes, as :func:`gossip.mix_all` on ``rows(ys)``, returned stacked.

    ``sent(j, i)``: what node i received from node j (link noise: a model per pair); then this is
    :func:`gossip.mix_all` itself, receiver by receiver. Without it, every receiver is mixed at once, ``block``
    entries of each model at a time, in torch (see the module's docstring).
    """
    if sent is not None:
        mixed, new_w = gossip.mix_all(A, rows(ys), ws, sent)
        return stack(mixed), new_w
    m = A.shape[0]
    src = [gossip.senders(A, i) for i in range(m)]
    coefs = [[float(A[i, j]) for j in s] for i, s in enumerate(src)]
    new_w = [gossip.mix_weight(float(A[i, i]), float(ws[i]), coefs[i], [float(ws[j]) for j in src[i]])
             for i in range(m)]
    out = {k: np.empty(v.shape, v.dtype) for k, v in ys.items()}
    deg = max((len(s) for s in src), default=0)
    who = torch.tensor([s + [i] * (deg - len(s)) for i, s in enumerate(src)], dtype=torch.int64).reshape(m, deg)
    coef = torch.tensor([c + [0.0] * (deg - len(c)) for c in coefs], dtype=torch.float64).reshape(m, deg)
    # per slot: None where every receiver has an s-th sender, else the receivers that have one (no 0 * x terms)
    some = [None if all(s < len(d) for d in src) else torch.tensor([i for i, d in enumerate(src) if s < len(d)])
            for s in range(deg)]
    diag = torch.tensor([float(A[i, i]) for i in range(m)], dtype=torch.float64)[:, None]
    x_buf, term_buf, acc_buf = (torch.empty(m * block, dtype=torch.float64) for _ in range(3))
    for k, v in ys.items():
        flat = torch.from_numpy(np.ascontiguousarray(v).reshape(m, -1))
        res = torch.from_numpy(out[k].reshape(m, -1))
        for a in range(0, flat.shape[1], block):
            cols = flat[:, a:a + block]
            n = cols.shape[1]
            x, term, acc = x_buf[:m * n].view(m, n), term_buf[:m * n].view(m, n), acc_buf[:m * n].view(m, n)
            x.copy_(cols)  # float64: as ``v.astype(np.float64)``
            torch.mul(x, diag, out=acc)
            for s in range(deg):
                if (r := some[s]) is None:
                    torch.index_select(x, 0, who[:, s], out=term)
                    term.mul_(coef[:, s, None])
                    acc.add_(term)
                else:
                    acc.index_add_(0, r, x.index_select(0, who[r, s]) * coef[r, s, None])
            res[:, a:a + n] = acc if v.dtype.kind == "f" else torch.round(acc)
    return out, new_w

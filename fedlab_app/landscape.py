"""Loss landscape around a training trajectory: the maths (numpy only; I/O in ``landscape_io.py``).

Given the flattened parameters theta_t (shape (P,)) of one or more runs at every checkpoint and a
center c (the final model of the first run):

    X = stack_t(theta_t - c)                       (N, P): differences from the final model, all runs
    X = U S V^T  (SVD);  d_k = V[:, k]             principal directions (common basis for all runs)
    explained_k = S_k^2 / sum_j S_j^2              fraction of the trajectories' variance on axis k
    (a_t, b_t) = argmin ||a d_1 + b d_2 - (theta_t - c)||     projection (least squares; = dot products
                                                   for orthonormal directions)
    L(a, b) = loss(c + a d_1 + b d_2)              on a grid covering every projected trajectory

Filter normalisation (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", section 4):
each filter (slice along the first axis of a weight tensor) of a direction is rescaled to the norm of
the same filter of the center, d_f <- d_f * ||c_f|| / ||d_f||; 1-D tensors (biases, BatchNorm) are set
to 0. It makes axes comparable between layers and networks of different scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def flatten(arrays: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Concatenate ``arrays[name].ravel()`` over ``names`` into one float64 vector (P,)."""
    return np.concatenate([np.asarray(arrays[n], dtype=np.float64).ravel() for n in names])


def pca_basis(trajectories: Sequence[np.ndarray], center: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Principal directions of the points' differences from ``center``.

    Parameters
    ----------
    trajectories : sequence of np.ndarray
        One (T_i, P) array of flattened parameters per run.
    center : np.ndarray
        (P,), usually the final model of the first run.
    k : int
        Number of directions.

    Returns
    -------
    dirs : np.ndarray
        (k, P) orthonormal directions; the sign makes the first run's start project positively.
    explained : np.ndarray
        (k,) fraction of the total variance of the differences along each direction (sums to <= 1).
    """
    x = np.concatenate([np.asarray(t, np.float64) - center for t in trajectories])  # (N, P)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    total = float(np.sum(s**2))
    dirs = np.zeros((k, x.shape[1]))
    explained = np.zeros(k)
    m = min(k, len(s))
    dirs[:m] = vt[:m]
    explained[:m] = s[:m] ** 2 / total if total > 0 else 0.0
    start = x[0]
    for i in range(m):
        if dirs[i] @ start < 0:
            dirs[i] = -dirs[i]
    return dirs, explained


def filter_normalize(direction: np.ndarray, center: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Li et al.'s filter normalisation of a flattened ``direction`` against the flattened ``center``.

    ``shapes`` are the parameter tensors' shapes in flattening order. For a tensor of 2 or more
    dimensions each filter ``f`` (index along the first axis) becomes ``d_f * ||c_f|| / ||d_f||`` (0
    where ``d_f`` is 0); tensors of 0 or 1 dimension (biases, norm layers) become 0.
    """
    out = np.zeros_like(direction, dtype=np.float64)
    i = 0
    for shape in shapes:
        size = int(np.prod(shape))
        if len(shape) >= 2:
            d = direction[i:i + size].reshape(shape[0], -1)  # (filters, fan-in)
            c = center[i:i + size].reshape(shape[0], -1)
            dn = np.linalg.norm(d, axis=1, keepdims=True)
            scale = np.divide(np.linalg.norm(c, axis=1, keepdims=True), dn, out=np.zeros_like(dn), where=dn > 0)
            out[i:i + size] = (d * scale).ravel()
        i += size
    if i != direction.size:
        raise ValueError(f"shapes cover {i} values, the direction has {direction.size}")
    return out


def project(points: np.ndarray, center: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Coordinates (T, k) of ``points`` (T, P) in the plane ``center + span(dirs)`` (least squares)."""
    diff = np.asarray(points, np.float64) - center  # (T, P)
    coords, *_ = np.linalg.lstsq(dirs.T, diff.T, rcond=None)  # (k, T)
    return coords.T


def grid_axes(coords: Sequence[np.ndarray], n: int = 21, margin: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates along both axes covering every projected point, widened on each side by ``margin``
    of the axis' span, and at least by ``margin / 2`` of the larger span (a flat trajectory still gets a
    readable second axis) and by 1e-3 (all points coincide)."""
    pts = np.concatenate([np.asarray(c, np.float64) for c in coords])  # (N, 2)
    spans = pts.max(axis=0) - pts.min(axis=0)
    axes = []
    for j in range(2):
        lo, hi = float(pts[:, j].min()), float(pts[:, j].max())
        pad = max(margin * (hi - lo), margin / 2 * float(spans.max()), 1e-3)
        axes.append(np.linspace(lo - pad, hi + pad, n))
    return axes[0], axes[1]


def loss_surface(loss: Callable[[np.ndarray], float], center: np.ndarray, dirs: np.ndarray,
                 alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """``Z[j, i] = loss(center + alphas[i] * dirs[0] + betas[j] * dirs[1])``, shape (len(betas), len(alphas))."""
    z = np.empty((len(betas), len(alphas)))
    for j, b in enumerate(betas):
        for i, a in enumerate(alphas):
            z[j, i] = loss(center + a * dirs[0] + b * dirs[1])
    return z

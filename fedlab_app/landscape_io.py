"""``fedlab landscape RUN_DIR...``: the loss landscape around the runs' trajectories (I/O and figure).

Reads each run's checkpoints (``checkpoints/round_NNNN.pt``; round 0 is the seeded initial model,
rebuilt from the config), builds the model and a seeded subset of the training data from the first
run's ``config.yaml``, and calls the maths in ``landscape.py``: PCA of the trajectories around the
first run's final model (one common basis for all runs), optionally filter-normalised directions,
the training loss on a grid of the first two axes. Writes ``landscape.png`` (contours, each run's
trajectory projected on them, the explained variance of each axis in the axis labels) and
``landscape.json`` (grid, losses, coordinates, explained variance). Runs must share the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import numpy as np
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from clients.train import Normalizer, evaluate  # noqa: E402
from fedlab_app import landscape as ls  # noqa: E402
from fedlab_app.models import build_model  # noqa: E402
from fedlab_app.splits import make_splits  # noqa: E402
from fedlab_app.config import flatten, parse  # noqa: E402
from fedlab_app.results import RunDir  # noqa: E402


def load_trajectory(run_dir: RunDir) -> tuple[list[int], list[dict[str, np.ndarray]]]:
    """``(rounds, arrays)`` of every checkpoint of the run, in round order."""
    found = sorted(run_dir.ckpt_dir.glob("round_*.pt")) if run_dir.ckpt_dir.exists() else []
    if not found:
        raise FileNotFoundError(f"{run_dir.path}: no checkpoints/round_*.pt (run with checkpoint_every=1)")
    loaded = [RunDir.load_checkpoint(p) for p in found]
    return [c[0] for c in loaded], [c[1] for c in loaded]


def _setup(run_dir: RunDir, samples: int, seed: int):
    """Model (with its seeded initial weights), normalizer and a seeded training subset from the config."""
    cfg = parse(flatten(run_dir.read_config()))
    s = make_splits(cfg.dataset, cfg.partition, cfg.num_clients, cfg.seed)
    pool = np.sort(np.concatenate(s.parts))  # the clients' training samples (no validation hold-out)
    idx = np.sort(np.random.default_rng(seed).choice(pool, size=min(samples, len(pool)), replace=False))
    x = torch.from_numpy(s.data.x_train[idx].copy())
    y = torch.from_numpy(s.data.y_train[idx].astype(np.int64))
    model = build_model(cfg.model, s.data.x_train.shape[1:], s.data.num_classes, seed=cfg.seed)
    return model, Normalizer.from_stats(s.data.mean, s.data.std), x, y


def run_landscape(paths: list[str], out: str | None = None, grid: int = 21, samples: int = 2000,
                  filter_norm: bool = False, margin: float = 0.25, seed: int = 0) -> Path:
    """Compute and draw the loss landscape of the runs ``paths`` (one common basis).

    Parameters
    ----------
    paths : list of str
        Run directories with checkpoints; the first one's final model is the center.
    out : str, optional
        Output folder (default: the first run's ``plots/``).
    grid : int
        Grid points per axis (the loss is evaluated ``grid ** 2`` times).
    samples : int
        Size of the seeded subset of the training data the loss is evaluated on.
    filter_norm : bool
        Filter-normalise the two directions (Li et al. 2018) before evaluating the grid.
    margin : float
        Grid margin around the trajectories, as a fraction of their span.
    seed : int
        Seed of the training subset.

    Returns
    -------
    Path
        The written ``landscape.png``.
    """
    runs = [RunDir(p) for p in paths]
    model, norm, x, y = _setup(runs[0], samples, seed)
    params = dict(model.named_parameters())
    names, shapes = list(params), [tuple(p.shape) for p in params.values()]
    init = ls.flatten({k: v.detach().numpy() for k, v in params.items()}, names)
    trajs, rounds_per_run = [], []
    for rd in runs:
        rounds, arrays = load_trajectory(rd)
        rest = [ls.flatten(a, names) for a in arrays]
        same_init = parse(flatten(rd.read_config())).seed == parse(flatten(runs[0].read_config())).seed
        trajs.append(np.stack(([init] if same_init and rounds[0] > 0 else []) + rest))
        rounds_per_run.append(([0] if same_init and rounds[0] > 0 else []) + rounds)
    final_arrays = load_trajectory(runs[0])[1][-1]
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in final_arrays.items()})  # buffers too
    center = trajs[0][-1]
    dirs, explained = ls.pca_basis(trajs, center)
    if filter_norm:
        dirs = np.stack([ls.filter_normalize(d, center, shapes) for d in dirs])
    coords = [ls.project(t, center, dirs) for t in trajs]
    alphas, betas = ls.grid_axes(coords, grid, margin)

    def loss(vec: np.ndarray) -> float:
        torch.nn.utils.vector_to_parameters(torch.from_numpy(vec.astype(np.float32)), model.parameters())
        return evaluate(model, x, y, norm)[0]

    z = ls.loss_surface(loss, center, dirs, alphas, betas)
    out_dir = Path(out) if out else runs[0].plots_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = [rd.path.name for rd in runs]
    (out_dir / "landscape.json").write_text(json.dumps({
        "runs": [str(rd.path) for rd in runs], "explained_variance": explained.tolist(), "filter_norm": filter_norm,
        "samples": int(len(y)), "alphas": alphas.tolist(), "betas": betas.tolist(), "loss": z.tolist(),
        "trajectories": [{"run": lab, "rounds": r, "coords": c.tolist()}
                         for lab, r, c in zip(labels, rounds_per_run, coords)]}, indent=1))
    return plot_landscape(alphas, betas, z, coords, labels, explained, out_dir / "landscape.png", filter_norm)


def plot_landscape(alphas, betas, z, coords, labels, explained, path: Path, filter_norm: bool = False) -> Path:
    """Filled contours of the loss (log-spaced levels) with each trajectory: start o, end *."""
    fig, ax = plt.subplots(figsize=(7, 5.5))
    zpos = np.clip(z, 1e-8, None)
    levels = np.geomspace(zpos.min(), zpos.max(), 25) if zpos.max() > zpos.min() * 1.0001 else 25
    cs = ax.contourf(alphas, betas, zpos, levels=levels, cmap="viridis",
                     norm=matplotlib.colors.LogNorm() if not isinstance(levels, int) else None)
    ax.contour(alphas, betas, zpos, levels=cs.levels[::3], colors="white", linewidths=0.4, alpha=0.6)
    fig.colorbar(cs, ax=ax, label="training loss (cross-entropy, subset)", format="%.4g")
    colors = plt.get_cmap("tab10").colors
    for k, (c, lab) in enumerate(zip(coords, labels)):
        col = colors[(k + 1) % 10]
        ax.plot(c[:, 0], c[:, 1], "-", marker=".", color=col, lw=1.5, label=lab)
        ax.plot(c[0, 0], c[0, 1], "o", color=col, ms=7, mec="black")
        ax.plot(c[-1, 0], c[-1, 1], "*", color=col, ms=13, mec="black")
    kind = "filter-normalised " if filter_norm else ""
    ax.set(xlabel=f"{kind}PC1 ({100 * explained[0]:.1f}% of variance)",
           ylabel=f"{kind}PC2 ({100 * explained[1]:.1f}% of variance)",
           title="loss landscape around the final model (o start, * end)")
    ax.legend(fontsize=8, loc="best")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

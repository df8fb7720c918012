"""Figures drawn from the results files (matplotlib, Agg backend: works headless)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from fedlab_app.results import RunDir
from strategies.mixing import spectral_gap


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on the first figure: a run imports it when it draws,
    not while it starts (0.6 s of a run's launch on this machine)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["round"], r[key]) for r in rows if key in r and not math.isnan(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        if ax.get_xlabel() == "round":
            ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_run(run_dir: RunDir) -> list[Path]:
    """Draw ``plots/accuracy.png``, ``plots/loss.png`` and ``plots/communication.png`` from metrics.csv, and
    ``plots/label_distribution.png`` from label_counts.csv where the run wrote one."""
    plt = _pyplot()
    rows = run_dir.read_metrics()
    if not rows:
        return plot_run_labels(run_dir)
    title = run_dir.path.name
    out = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("test_acc", "test"), ("val_acc", "validation"), ("train_acc", "train (during local training)")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set(xlabel="round", ylabel="accuracy", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.append(_save(fig, run_dir.plots_dir / "accuracy.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("train_loss", "train (during local training)"), ("test_loss", "test"), ("val_loss", "validation")):
        xs, ys = _series(rows, key)
        if xs:
            ax.plot(xs, ys, marker="o", ms=3, label=label)
    ax.set(xlabel="round", ylabel="cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.append(_save(fig, run_dir.plots_dir / "loss.png"))

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [(r["bytes"] / 1e6, r["test_acc"]) for r in rows if not math.isnan(r["test_acc"])]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3)
    ax.set(xlabel="cumulative communication (MB, both directions)", ylabel="test accuracy", title=title)
    ax.grid(alpha=0.3)
    out.append(_save(fig, run_dir.plots_dir / "communication.png"))
    return out + plot_run_labels(run_dir)


def plot_run_labels(run_dir: RunDir) -> list[Path]:
    """``plots/label_distribution.png`` from the run's label_counts.csv; [] where it has none."""
    counts = run_dir.read_label_counts()
    if counts is None:
        return []
    try:
        cfg = run_dir.read_config()
        title = f"{cfg['dataset']['name']}, partition={cfg['partition']['name']}: labels per client"
    except (OSError, KeyError, TypeError):
        title = f"{run_dir.path.name}: labels per client"
    path = run_dir.plots_dir / "label_distribution.png"
    plot_label_distribution(counts, path, title)
    return [path]


def plot_gossip(rows: list[dict], path: Path, title: str = "") -> Path:
    """Gossip runs: consensus-model accuracy with the nodes' min/mean/max, and the consensus distance."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    xs, acc = _series(rows, "test_acc")
    a1.plot(xs, acc, marker="o", ms=3, label="consensus model x_bar")
    nx, mean = _series(rows, "node_acc_mean")
    if nx:
        lo, hi = _series(rows, "node_acc_min")[1], _series(rows, "node_acc_max")[1]
        a1.plot(nx, mean, marker=".", label="nodes: mean (band: min-max)")
        a1.fill_between(nx, lo, hi, alpha=0.2)
    a1.set(xlabel="round", ylabel="test accuracy", title=title)
    a1.grid(alpha=0.3)
    a1.legend()
    cx, cd = _series(rows, "consensus_dist")
    a2.semilogy(cx, [max(v, 1e-16) for v in cd], marker="o", ms=3)
    a2.set(xlabel="round", ylabel="(1/M) sum ||x_i - x_mean||^2", title="consensus distance")
    a2.grid(alpha=0.3)
    return _save(fig, path)


def plot_staleness(values, path, title: str = "") -> Path:
    """Histogram of the staleness (server version at apply - version at start) of every applied result."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    vals = np.asarray(values, dtype=np.int64)
    if len(vals):
        ax.hist(vals, bins=np.arange(vals.max() + 2) - 0.5, rwidth=0.85)
    ax.set(xlabel="staleness (updates)", ylabel="applied results", title=title or "staleness")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_label_distribution(counts: np.ndarray, path, title: str = "") -> None:
    """Save a stacked horizontal bar chart of the label counts per client as PNG (Agg).

    Parameters
    ----------
    counts : np.ndarray
        Label counts, shape (K, C), e.g. from ``label_counts``.
    path : str or os.PathLike
        Output file; its parent directories are created.
    title : str, optional
        Figure title.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    counts = np.asarray(counts, dtype=float)
    k, c = counts.shape
    fig = Figure(figsize=(8, min(2 + 0.18 * k, 30)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    cmap = matplotlib.colormaps["tab10" if c <= 10 else "tab20"]
    left, y = np.zeros(k), np.arange(k, dtype=float)
    lo, hi = y - 0.425, y + 0.425  # bars 0.85 high
    for j in range(c):  # one collection of k rectangles per label: 1,000 clients draw in well under a second
        right = left + counts[:, j]
        verts = np.stack([np.stack([left, lo], 1), np.stack([left, hi], 1), np.stack([right, hi], 1),
                          np.stack([right, lo], 1)], axis=1)
        ax.add_collection(PolyCollection(verts, facecolors=[cmap(j % cmap.N)], edgecolors="none", label=str(j)))
        left = right
    ax.set_xlim(0, max(float(left.max()), 1.0) * 1.02)
    ax.set_ylim(k - 0.5, -0.5)  # client 0 on top
    ax.set_xlabel("samples")
    ax.set_ylabel("client")
    ax.set_title(title or f"label distribution ({k} clients, {c} classes)")
    if c <= 20:
        ax.legend(title="label", loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_mixing_matrix(W: np.ndarray, path, title: str = "") -> Path:
    """Save a heatmap of the mixing matrix ``W`` (x: sender j, y: receiver i) with its spectral gap in the title.

    Parameters
    ----------
    W : np.ndarray
        Mixing matrix, shape (M, M); ``x_i <- sum_j W[i, j] x_j``.
    path : str or os.PathLike
        Output PNG; its parent directories are created.
    title : str, optional
        Title prefix (default ``"mixing matrix (M nodes)"``).

    Returns
    -------
    Path
        The written file.
    """
    plt = _pyplot()
    W = np.asarray(W, dtype=np.float64)
    m = W.shape[0]
    gap = spectral_gap(W)
    head = title or f"mixing matrix ({m} nodes)"
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    im = ax.imshow(W, cmap="viridis", vmin=0.0, vmax=max(float(W.max()), 1e-12), interpolation="nearest")
    fig.colorbar(im, ax=ax, label="weight W[i, j]")
    if m <= 10:  # small enough to print every entry
        for i in range(m):
            for j in range(m):
                if W[i, j] != 0:
                    ax.text(j, i, f"{W[i, j]:.2g}", ha="center", va="center", fontsize=7,
                            color="black" if W[i, j] > 0.6 * W.max() else "white")
    ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
    ax.set(xlabel="sender j", ylabel="receiver i",
           title=head if gap is None else f"{head}\nspectral gap {gap:.4g}")
    return _save(fig, Path(path))

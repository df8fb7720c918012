"""Loss-landscape maths (fedlab_app/landscape.py) on problems with known answers, and the I/O end to end."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_fmnist

from fedlab_app.landscape import filter_normalize, flatten, grid_axes, loss_surface, pca_basis, project


def test_straight_line_is_all_on_the_first_axis():
    """theta_t = c + (1 - t/10) v, t = 0..10: every difference from the final model is a multiple of v,
    so the first axis explains 100% of the variance and is +-v/||v||."""
    rng = np.random.default_rng(0)
    c, v = rng.normal(size=50), rng.normal(size=50)
    traj = np.stack([c + (1 - t / 10) * v for t in range(11)])
    dirs, explained = pca_basis([traj], c)
    assert explained[0] == pytest.approx(1.0) and explained[1] == pytest.approx(0.0, abs=1e-12)
    assert dirs[0] @ v / np.linalg.norm(v) == pytest.approx(1.0)  # start projects positively
    coords = project(traj, c, dirs)
    assert coords[:, 0] == pytest.approx(np.linalg.norm(v) * (1 - np.arange(11) / 10))
    assert coords[-1] == pytest.approx([0.0, 0.0])


def test_quadratic_trajectory_ends_at_the_grid_minimum():
    """f(theta) = 1/2 (theta - m)^T H (theta - m), H = diag(1, 4, 2, 3, 0.5, 5), gradient descent with
    step 0.2 from m + 3 e0 - 2 e1 (+ noise-free): theta_t - m = (I - 0.2 H)^t (theta_0 - m) stays in
    span(e0, e1) and reaches m (to 1e-9 after 200 steps). The PCA plane is span(e0, e1) (explained
    variance 1 in total), the final model projects to (0, 0), and the loss on the grid is smallest at
    the grid point nearest to it."""
    h = np.array([1.0, 4.0, 2.0, 3.0, 0.5, 5.0])
    m = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -0.5])
    f = lambda th: 0.5 * float(np.sum(h * (th - m) ** 2))  # noqa: E731
    theta = m + np.array([3.0, -2.0, 0, 0, 0, 0])
    traj = [theta.copy()]
    for _ in range(200):
        theta = theta - 0.2 * h * (theta - m)
        traj.append(theta.copy())
    traj = np.stack(traj)
    assert np.abs(traj[-1] - m).max() < 1e-9
    dirs, explained = pca_basis([traj], traj[-1])
    assert explained.sum() == pytest.approx(1.0)
    assert np.abs(dirs[:, 2:]).max() < 1e-9  # the plane of e0, e1
    coords = project(traj, traj[-1], dirs)
    alphas, betas = grid_axes([coords], n=41, margin=0.3)
    z = loss_surface(f, traj[-1], dirs, alphas, betas)
    j, i = np.unravel_index(np.argmin(z), z.shape)
    nearest = (np.abs(betas - coords[-1, 1]).argmin(), np.abs(alphas - coords[-1, 0]).argmin())
    assert (j, i) == nearest
    assert z.min() == pytest.approx(f(traj[-1] + alphas[i] * dirs[0] + betas[j] * dirs[1]))
    assert z[0, 0] > z[j, i] and f(traj[0]) > z.min()


def test_common_basis_for_two_runs():
    """Run A moves along e0, run B along e1 (both ending at the center): two axes, half the variance each
    (equal lengths), and each run projects onto its own axis."""
    c = np.zeros(4)
    a = np.stack([c + s * np.array([1.0, 0, 0, 0]) for s in (2, 1, 0)])
    b = np.stack([c + s * np.array([0, 1.0, 0, 0]) for s in (2, 1, 0)])
    dirs, explained = pca_basis([a, b], c)
    assert explained == pytest.approx([0.5, 0.5])
    pa, pb = project(a, c, dirs), project(b, c, dirs)
    assert np.abs(pa).max(axis=0).min() == pytest.approx(0.0, abs=1e-12)  # A uses one axis only
    assert np.abs(pb).max(axis=0).min() == pytest.approx(0.0, abs=1e-12)


def test_filter_normalize_by_hand():
    """A (2, 2) weight with filters c = [3, 4] (norm 5) and [0, 1] (norm 1), direction [1, 0] and [0, 2],
    then a bias of 2: the filters become [5, 0] and [0, 1], the bias 0."""
    center = np.array([3.0, 4.0, 0.0, 1.0, 7.0, 7.0])
    direction = np.array([1.0, 0.0, 0.0, 2.0, 1.0, 1.0])
    out = filter_normalize(direction, center, [(2, 2), (2,)])
    assert out == pytest.approx([5.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        filter_normalize(direction, center, [(2, 2)])


def test_project_on_non_orthogonal_directions():
    """Directions d0 = (1, 0, 0), d1 = (1, 1, 0): the point c + 2 d0 + 3 d1 = c + (5, 3, 0) -> (2, 3)."""
    dirs = np.array([[1.0, 0, 0], [1.0, 1.0, 0]])
    c = np.array([1.0, 1.0, 1.0])
    assert project(np.array([[6.0, 4.0, 1.0]]), c, dirs)[0] == pytest.approx([2.0, 3.0])


def test_flatten_follows_names():
    arrays = {"b": np.array([3.0]), "a": np.array([[1.0, 2.0]])}
    assert list(flatten(arrays, ["a", "b"])) == [1.0, 2.0, 3.0]


@needs_fmnist
def test_landscape_of_a_run_from_its_checkpoints(tmp_path):
    """A hand-made run whose checkpoints walk in a straight line from the seeded initial model (rounds 1-4 at
    1/4 .. 4/4 of the way): the trajectory starts at round 0 (rebuilt from the config), the first axis explains
    all of its variance, the final model sits at (0, 0), and the figure and the grid of losses are written."""
    import json

    import torch
    from conftest import compose

    from fedlab_app.config import flatten as flat
    from fedlab_app.config import parse
    from fedlab_app.landscape_io import run_landscape
    from fedlab_app.models import build_model
    from fedlab_app.results import RunDir

    nested = compose("num_clients=2", "dataset.limit_train=400")
    cfg = parse(flat(nested))
    init = {k: v.numpy().copy() for k, v in build_model(cfg.model, (1, 28, 28), 10, seed=cfg.seed).state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    step = {k: 0.05 * torch.randn(v.shape, generator=gen).numpy() for k, v in init.items()}
    rd = RunDir(tmp_path / "run")
    rd.create()
    rd.write_config(nested)
    for t in range(1, 5):
        rd.save_checkpoint(t, {k: (init[k] + t / 4 * step[k]).astype(np.float32) for k in init}, {})
    png = run_landscape([str(rd.path)], out=str(tmp_path / "out"), grid=5, samples=200)
    assert png.exists() and png.stat().st_size > 10_000
    info = json.loads((tmp_path / "out" / "landscape.json").read_text())
    assert info["explained_variance"][0] == pytest.approx(1.0, abs=1e-6)
    traj = info["trajectories"][0]
    assert traj["rounds"] == [0, 1, 2, 3, 4] and traj["coords"][-1] == pytest.approx([0.0, 0.0], abs=1e-6)
    loss = np.array(info["loss"])
    assert loss.shape == (5, 5) and np.isfinite(loss).all() and loss.min() > 0

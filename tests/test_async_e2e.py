"""Asynchronous SGD end to end on Flower's simulation engine: one worker without delay is plain SGD;
the loop applies results in the virtual clock's order (staleness as replayed); a run stopped and
resumed equals the same run straight (same seed, same result, in-flight work re-issued)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import compose, needs_fmnist

from clients.train import batches
from fedlab_app import config
from fedlab_app.local import fresh_model, local_data
from fedlab_app.results import RunDir
from fedlab_app.driver import initial_arrays
from fedlab_app.simulate import simulate
from strategies import async_sgd as A

pytestmark = needs_fmnist
BASE = ("strategy=async_sgd", "dataset.limit_train=900", "client.batch_size=32", "client.lr=0.05")
X = ("num_clients=3", "rounds=3", "system.profile=ratios", "system.ratios=1:2:3", "system.step_time_s=0.01",
     "strategy.delay=gaussian", "strategy.delay_ms=15", "strategy.delay_std_ms=10", "strategy.momentum=0.5",
     "strategy.dc=adaptive", "strategy.dc_lambda=2")


def sim(out_dir, *overrides):
    cfg = config.parse(config.flatten(compose(*BASE, *overrides, f"out_dir={out_dir}")))
    summary = simulate(cfg)
    return cfg, summary, RunDir.load_checkpoint(RunDir(out_dir).last_checkpoint())[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("async")
    return {"one": sim(base / "one", "num_clients=1", "rounds=4"), "x": sim(base / "x", *X)}


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("async_resume")
    assert sim(base / "y", *X, "stop_after=2")[1]["status"] == "stopped"
    return sim(base / "y", *X, "resume=true")


def test_one_worker_without_delay_is_plain_sgd(runs):
    """4 updates of the one worker == 4 steps of torch SGD (lr 0.05) on the same batches."""
    cfg, summary, got = runs["one"]
    assert summary["status"] == "finished" and summary["updates"] == 4
    local = local_data(cfg, 0, 1)
    model = fresh_model(cfg, local)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in initial_arrays(cfg).items()})
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for k in range(4):
        (_, idx), = list(batches(len(local.y), 32, cfg.seed, 0, k << 20, steps=1))
        opt.zero_grad()
        F.cross_entropy(model(local.norm(local.x[idx])), local.y[idx]).backward()
        opt.step()
    for name, v in model.state_dict().items():
        np.testing.assert_allclose(got[name], v.numpy(), rtol=0, atol=1e-5, err_msg=name)
    assert summary["staleness_histogram"] == {"0": 4}


def test_staleness_follows_the_virtual_clock(runs):
    cfg, summary, _ = runs["x"]
    p = cfg.strategy.params
    speeds = [1.0, 2.0, 3.0]
    expected = A.replay(lambda w, k: 0.01 / speeds[w] + A.delay_s(p, w, k, cfg.seed), 3, 9)
    assert summary["staleness_histogram"] == A.staleness_histogram([s for _, _, s in expected])
    assert summary["sim_time_s"] == pytest.approx(expected[-1][0])
    assert len(summary["per_class"]["f1"]) == 10


@pytest.mark.slow
def test_stopped_and_resumed_run_equals_the_straight_run(runs, resumed):
    (_, sx, x), (_, sy, y) = runs["x"], resumed
    assert sy["status"] == "finished" and sy["updates"] == sx["updates"] == 9
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    assert sx["staleness_histogram"] == sy["staleness_histogram"]
    assert sx["comm"]["messages"] == sy["comm"]["messages"] and sx["comm"]["bytes"] == sy["comm"]["bytes"]

"""Centralized baseline: equals FedAvg with one client, resumes exactly, stops when it diverges."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose, needs_fmnist

from fedlab_app import config
from fedlab_app.results import RunDir
from fedlab_app.simulate import simulate

pytestmark = needs_fmnist
TINY = ("dataset.limit_train=1000", "client.batch_size=50")


def run(out_dir, *overrides: str) -> tuple[dict, dict[str, np.ndarray]]:
    cfg = config.parse(config.flatten(compose(*TINY, *overrides, f"out_dir={out_dir}")))
    summary = simulate(cfg)
    return summary, RunDir.load_checkpoint(RunDir(out_dir).last_checkpoint())[1]


@pytest.mark.slow  # 11-18 s; tests/test_app_smoke.py::test_fedavg_one_client_equals_centralized keeps the check fast
def test_fedavg_one_client_one_round_equals_centralized(tmp_path):
    """One round of E=2 local epochs on one client == 2 centralized epochs: same seed, data order, lr,
    momentum kept within the run, BatchNorm, dropout and augmentation re-seeded per epoch.
    Both train with one torch thread: with two, convolution sums run in another order (differences
    of ~1e-7 that 40 steps grow to ~1e-3)."""
    common = ("schedule=constant", "model=lenet5_bn", "dataset.augment=true", "optimizer.momentum=0.9", "optimizer.weight_decay=1e-4")
    fed_sum, fed = run(tmp_path / "fed", *common, "num_clients=1", "rounds=1", "client.local_epochs=2")
    cen_sum, cen = run(tmp_path / "cen", *common, "strategy=centralized", "strategy.epochs=2", "strategy.threads=1")
    assert fed_sum["status"] == cen_sum["status"] == "finished"
    for k in cen:
        np.testing.assert_allclose(fed[k], cen[k], rtol=0, atol=1e-6, err_msg=k)
    assert fed_sum["final"]["test_acc"] == pytest.approx(cen_sum["final"]["test_acc"], abs=1e-4)
    assert cen_sum["comm"]["messages"] == 0 and fed_sum["comm"]["messages"] == 2


def test_centralized_resume_keeps_optimizer_state(tmp_path):
    """A 3-epoch run stopped after 2 (stop_after) and resumed == 3 epochs straight (momentum, cosine)."""
    over = ("strategy=centralized", "schedule=cosine", "optimizer.momentum=0.9")
    _, straight = run(tmp_path / "a", *over, "strategy.epochs=3")
    stopped, _ = run(tmp_path / "b", *over, "strategy.epochs=3", "stop_after=2")
    assert stopped["status"] == "stopped" and stopped["rounds"] == 2
    summary, resumed = run(tmp_path / "b", *over, "strategy.epochs=3", "resume=true")
    assert summary["status"] == "finished" and summary["rounds"] == 3
    for k in straight:
        np.testing.assert_array_equal(straight[k], resumed[k], err_msg=k)
    lrs = [r["lr"] for r in RunDir(tmp_path / "b").read_metrics()]
    assert lrs[0] == pytest.approx(0.02) and lrs[1] == pytest.approx(0.015) and lrs[2] == pytest.approx(0.005)


def test_divergence_stops_the_run_and_is_recorded(tmp_path):
    summary, _ = run(tmp_path / "d", "strategy=centralized", "strategy.epochs=5", "client.lr=500")
    assert summary["status"] == "diverged"
    assert summary["rounds"] < 5
    assert RunDir(tmp_path / "d").read_summary()["status"] == "diverged"

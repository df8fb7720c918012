"""End-to-end runs on Flower's simulation engine (Ray), asserting on the results files.

Each simulation costs ~8-15 s (Ray start + actors), so the runs are small (a few thousand
Fashion-MNIST samples) and shared between tests through module-scoped fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, compose, needs_fmnist

from clients.optim import make_optimizer
from clients.train import Normalizer, train
from fedlab_app import config
from fedlab_app.models import build_model, use_channels_last
from fedlab_app.recorder import COMMON_COLUMNS
from fedlab_app.results import RunDir
from fedlab_app.simulate import simulate
from fedlab_app.splits import client_shard, make_splits

pytestmark = needs_fmnist
SMALL = ("dataset.limit_train=3000", "num_clients=3", "client.batch_size=64")


def run_sim(out_dir, *overrides: str) -> tuple[config.Config, RunDir, dict]:
    cfg = config.parse(config.flatten(compose(*overrides, f"out_dir={out_dir}")))
    summary = simulate(cfg)
    return cfg, RunDir(out_dir), summary


def final_arrays(run_dir: RunDir) -> dict[str, np.ndarray]:
    return RunDir.load_checkpoint(run_dir.last_checkpoint())[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: 3 rounds straight. Run B: stopped after 2 of 3 rounds (stop_after), then resumed."""
    base = tmp_path_factory.mktemp("runs")
    a = run_sim(base / "a", *SMALL, "rounds=3")
    b2 = run_sim(base / "b", *SMALL, "rounds=3", "stop_after=2")
    assert b2[2]["status"] == "stopped"
    b2_metrics = b2[1].read_metrics()
    b3 = run_sim(base / "b", *SMALL, "rounds=3", "resume=true")
    return {"a": a, "b2": b2, "b2_metrics": b2_metrics, "b3": b3}


def test_results_contract(runs):
    cfg, rd, summary = runs["a"]
    assert summary["status"] == "finished" and summary["rounds"] == 3
    assert set(["test_acc", "test_loss"]) <= set(summary["final"])
    assert 0.5 < summary["final"]["test_acc"] <= 1.0
    assert summary == json.loads((rd.path / "summary.json").read_text())
    rows = rd.read_metrics()
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert rd.metrics_path.read_text().splitlines()[0].split(",") == list(COMMON_COLUMNS)  # sync: no mode columns
    assert rows[-1]["test_acc"] == pytest.approx(summary["final"]["test_acc"], abs=1e-6)
    assert all(0 <= r["test_acc"] <= 1 for r in rows)
    assert [r["wall_time_s"] for r in rows] == sorted(r["wall_time_s"] for r in rows)
    assert rd.read_config()["num_clients"] == 3
    assert sorted(p.name for p in rd.ckpt_dir.iterdir()) == ["round_0001.pt", "round_0002.pt", "round_0003.pt"]
    for name in ("accuracy.png", "loss.png", "communication.png", "label_distribution.png"):
        assert (rd.plots_dir / name).stat().st_size > 5000, name


def test_communication_counts(runs):
    """Every round: one model down and one model up per client; bytes = messages x model bytes."""
    cfg, rd, summary = runs["a"]
    model_bytes = summary["comm"]["bytes"] / summary["comm"]["messages"]
    n_params = sum(v.size * v.itemsize for v in final_arrays(rd).values())
    assert n_params <= model_bytes < n_params + 2000  # payload plus Flower's per-array metadata
    rows = rd.read_metrics()
    for r in rows:
        assert r["messages_down"] == r["messages_up"] == 3 * r["round"]
        assert r["messages"] == 6 * r["round"] and r["bytes"] == pytest.approx(r["messages"] * model_bytes)
    per_node = summary["comm"]["per_node"]
    assert sorted(per_node) == ["0", "1", "2"] and all(v["messages"] == 6 for v in per_node.values())
    assert summary["comm"]["max_node_messages"] == 6


def test_resume_gives_the_same_run(runs):
    _, rd_a, sum_a = runs["a"]
    _, rd_b, sum_b = runs["b3"]
    assert [r["round"] for r in runs["b2_metrics"]] == [1, 2]
    assert sum_b["status"] == "finished" and sum_b["rounds"] == 3
    a, b = final_arrays(rd_a), final_arrays(rd_b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert sum_a["final"]["test_acc"] == sum_b["final"]["test_acc"]
    assert sum_a["comm"]["messages"] == sum_b["comm"]["messages"] and sum_a["comm"]["bytes"] == sum_b["comm"]["bytes"]
    cols = ("round", "test_acc", "test_loss", "train_loss", "messages", "bytes")
    assert [[r[c] for c in cols] for r in rd_a.read_metrics()] == [[r[c] for c in cols] for r in rd_b.read_metrics()]


@pytest.mark.slow  # 21 s: kept out of the default suite's 5 minutes
def test_fedavg_one_client_equals_centralized(tmp_path, rounds=2, epochs=1, momentum=0.9):
    """FedAvg with one client == plain SGD over the same shard for rounds*epochs epochs, same data order.

    The client creates its optimizer (momentum buffer included) anew each round; so does the reference.
    """
    cfg, rd, summary = run_sim(tmp_path / "fed", "num_clients=1", "dataset.limit_train=1000", f"rounds={rounds}",
                               f"client.local_epochs={epochs}", f"optimizer.momentum={momentum}")
    assert summary["status"] == "finished"
    data = make_splits(cfg.dataset, cfg.partition, 1, cfg.seed).data
    x, y = client_shard(cfg.dataset, cfg.partition, 1, cfg.seed, 0)
    model = build_model(cfg.model, tuple(x.shape[1:]), data.num_classes, seed=cfg.seed)
    norm = Normalizer.from_stats(data.mean, data.std, use_channels_last(cfg.model))
    torch.set_num_threads(1)
    for rnd in range(rounds):  # the optimizer (and momentum) starts fresh each round, as on a client
        opt = make_optimizer(model, cfg.optimizer, cfg.client.lr)
        train(model, x, y, norm, opt, batch_size=cfg.client.batch_size, seed=cfg.seed, stream=0,
              first_epoch=rnd * epochs, epochs=epochs)
    fed = final_arrays(rd)
    for k, v in model.state_dict().items():
        np.testing.assert_allclose(fed[k], v.numpy(), rtol=0, atol=1e-6, err_msg=k)


@pytest.mark.parametrize("args, expected", [
    (["client.lr=-1"], ["configuration error: client.lr=-1", "> 0"]),
    (["num_clients=3", "dataset.limit_train=2"], ["cannot start", "num_clients=3", "2 training samples"]),
])
def test_cli_rejects_bad_input_before_starting(args, expected):
    proc = subprocess.run([sys.executable, "-c", "from fedlab_app.cli import main; main()", "run", *args],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "ray" not in proc.stderr.lower()  # nothing started


@pytest.mark.slow
def test_cli_multirun_sweep(tmp_path):
    """`fedlab run --multirun` runs each combination into its own folder of one sweep folder and exits 0."""
    env_root = tmp_path / "sweep"
    proc = subprocess.run([sys.executable, "-c", "from fedlab_app.cli import main; main()", "run", "--multirun",
                           "num_clients=1,2", "rounds=1", "dataset.limit_train=600"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT,
                          env={**__import__("os").environ, "FEDLAB_RESULTS_DIR": str(env_root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweeps = list((env_root / "sweeps").iterdir())
    assert len(sweeps) == 1 and (sweeps[0] / "multirun.yaml").exists()
    assert sorted(p.name for p in sweeps[0].iterdir() if p.is_dir()) == [
        "0_dataset.limit_train=600__num_clients=1__rounds=1", "1_dataset.limit_train=600__num_clients=2__rounds=1"]
    summaries = [json.loads(p.read_text()) for p in sweeps[0].glob("*/summary.json")]
    assert sorted(s["num_clients"] for s in summaries) == [1, 2]
    assert all(s["status"] == "finished" for s in summaries)

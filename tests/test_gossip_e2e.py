"""Gossip end to end on Flower's simulation engine: D-PSGD with the uniform matrix == LocalSGD,
node-to-node message counts, GoSGD weight conservation with noisy links, and exact resume of the
nodes' own state."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose, needs_fmnist

from fedlab_app import config
from fedlab_app.results import RunDir
from fedlab_app.simulate import simulate

pytestmark = needs_fmnist
BASE = ("dataset.limit_train=900", "num_clients=3", "client.batch_size=32", "client.local_steps=3")
GOSGD = ("strategy=gosgd", "strategy.node_eval_samples=200", "strategy.p=1.0", "strategy.noise_std=0.01", "rounds=3")


def sim(out_dir, *overrides):
    summary = simulate(config.parse(config.flatten(compose(*BASE, *overrides, f"out_dir={out_dir}"))))
    rd = RunDir(out_dir)
    _, arrays, _, extra = RunDir.load_checkpoint(rd.last_checkpoint())
    return summary, rd.read_metrics(), arrays, extra["mode"]  # the gossip mode's checkpoint state


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("gossip")
    out = {"dpsgd": sim(base / "a", "strategy=dpsgd", "strategy.matrix=uniform", "rounds=2",
                        "strategy.node_eval_samples=200"),
           "localsgd": sim(base / "b", "strategy=localsgd", "rounds=2", "sim.clients_per_worker=1"),
           "gosgd": sim(base / "c", *GOSGD)}
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("gossip_resume")
    assert sim(base / "d", *GOSGD, "stop_after=2")[0]["status"] == "stopped"
    return sim(base / "d", *GOSGD, "resume=true")


def test_uniform_dpsgd_equals_localsgd(runs):
    (sd, _, xd, extra), (sl, _, xl, _) = runs["dpsgd"], runs["localsgd"]
    assert sd["status"] == sl["status"] == "finished"
    for k in xl:
        np.testing.assert_allclose(xd[k], xl[k], rtol=0, atol=1e-5, err_msg=k)
    assert {k: v.shape[0] for k, v in extra["stacked"].items()} == {k: 3 for k in xl}  # node i's y_i: row i
    for k in xl:  # after the last mixing step every node holds the average
        for node in extra["stacked"][k]:
            np.testing.assert_allclose(node.numpy(), xl[k], rtol=0, atol=1e-5)


def test_node_to_node_messages_are_counted(runs):
    """Uniform W over 3 nodes: 6 off-diagonal entries -> 6 models per round; 3 restore messages down."""
    summary, metrics, x, _ = runs["dpsgd"]
    model_bytes = summary["comm"]["bytes_down"] / 3
    assert summary["comm"]["messages_p2p"] == 12 and summary["comm"]["messages_down"] == 3
    assert summary["comm"]["bytes_p2p"] == 12 * model_bytes
    assert summary["comm"]["messages_up"] == 0
    assert summary["comm"]["max_node_messages"] == 1 + 2 * 4  # restore + (2 sent + 2 received) x 2 rounds
    assert [m["messages_p2p"] for m in metrics] == [6, 12]
    assert metrics[-1]["consensus_dist"] < 1e-10  # all nodes equal after a uniform mixing step
    assert 0.0 <= metrics[-1]["node_acc_min"] <= metrics[-1]["node_acc_mean"] <= metrics[-1]["node_acc_max"] <= 1


def test_gosgd_conserves_total_weight(runs):
    summary, metrics, _, extra = runs["gosgd"]
    assert summary["status"] == "finished"
    assert metrics[0]["train_loss"] < 2.5  # the nodes train on x0, not on M x0 (which blows up)
    assert float(extra["weights"].sum()) == pytest.approx(1.0, abs=1e-12)  # sum of alpha_i = 1
    assert summary["comm"]["messages_p2p"] == 9  # p = 1: every node pushes once per round
    assert metrics[-1]["consensus_dist"] > 0  # nodes differ (random pushes, noisy links)


@pytest.mark.slow
def test_resumed_gossip_run_equals_straight_run(runs, resumed):
    (s1, m1, x1, e1), (s2, m2, x2, e2) = runs["gosgd"], resumed
    assert s2["status"] == "finished" and s2["rounds"] == 3
    for k in x1:
        np.testing.assert_array_equal(x1[k], x2[k], err_msg=k)
    np.testing.assert_array_equal(e1["weights"].numpy(), e2["weights"].numpy())
    assert [m["test_acc"] for m in m1] == [m["test_acc"] for m in m2]
    assert s1["comm"]["messages_p2p"] == s2["comm"]["messages_p2p"]

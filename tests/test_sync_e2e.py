"""Synchronous strategies end to end on Flower's simulation engine (small runs, results files asserted).

A: LocalSGD, K=2, post-local-SGD steps (J = 1 in round 1, then 3). B: SlowMo with alpha=1, beta=0 on
the same config == A exactly. C: SlowMo (beta 0.5) + step-weighted aggregation + optimizer state averaged
by the server, on fixed-time rounds with speeds 1:2 and a simulated network, 3 rounds straight.
D: C stopped after 2 rounds and resumed == C exactly (slow momentum and averaged optimizer state
come back from the checkpoint).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import compose, needs_fmnist

from fedlab_app import config
from fedlab_app.results import RunDir
from fedlab_app.simulate import simulate

pytestmark = needs_fmnist
BASE = ("dataset.limit_train=1200", "num_clients=2", "client.batch_size=32", "eval.every=1")
A = ("strategy=localsgd", "rounds=2", "client.local_steps=3", "steps.rule=post_local", "steps.switch_round=2")
C = ("strategy=slowmo", "strategy.beta=0.5", "strategy.aggregation=steps", "strategy.momentum_mode=average",
     "rounds=3", "system.profile=ratios", "system.ratios=1:2", "system.budget=2", "system.step_time_s=0.01",
     "system.bandwidth_mbps=100", "system.latency_ms=5")


def sim(out_dir, *overrides):
    summary = simulate(config.parse(config.flatten(compose(*BASE, *overrides, f"out_dir={out_dir}"))))
    rd = RunDir(out_dir)
    return summary, rd.read_metrics(), RunDir.load_checkpoint(rd.last_checkpoint())[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("sync")
    out = {"A": sim(base / "a", *A), "B": sim(base / "b", *A, "strategy=slowmo", "strategy.alpha=1", "strategy.beta=0"),
           "C": sim(base / "c", *C)}
    return out


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    base = tmp_path_factory.mktemp("sync_resume")
    stopped = sim(base / "d", *C, "stop_after=2")
    assert stopped[0]["status"] == "stopped"
    return sim(base / "d", *C, "resume=true")


def test_slowmo_alpha1_beta0_equals_localsgd(runs):
    (sa, ma, xa), (sb, mb, xb) = runs["A"], runs["B"]
    assert sa["status"] == sb["status"] == "finished"
    for k in xa:
        np.testing.assert_array_equal(xa[k], xb[k], err_msg=k)
    assert [r["test_acc"] for r in ma] == [r["test_acc"] for r in mb]


def test_dynamic_steps_are_logged_per_round(runs):
    assert [r["local_steps"] for r in runs["A"][1]] == [1, 3]  # post-local SGD: J = 1, then J_0 = 3


def test_fixed_time_rounds_steps_and_simulated_time(runs):
    """Speeds 1:2, budget 2 -> J = 2 and 4 (mean 3). Simulated compute: 2*0.01/1 = 4*0.01/2 = 0.02 s;
    transfer per client: 2*5 ms + 8*bytes/1e8 with the client's bytes of the round (both ways)."""
    summary, metrics, _ = runs["C"]
    assert summary["status"] == "finished"
    assert [r["local_steps"] for r in metrics] == [3, 3, 3]
    per_node = summary["comm"]["per_node"]
    slowest = max(v["bytes"] for v in per_node.values())  # both clients send the same bytes here
    expected = 3 * (0.02 + 0.01) + 8 * slowest / 1e8
    assert summary["sim_time_s"] == pytest.approx(expected, rel=1e-6)


def test_averaged_optimizer_state_travels_and_is_counted(runs):
    """Round 1 sends the model down; from round 2 the averaged momentum buffers go with it (same size)."""
    m = runs["C"][1]
    down1 = m[0]["bytes_down"]
    down2 = m[1]["bytes_down"] - m[0]["bytes_down"]
    assert down2 == pytest.approx(2 * down1, rel=0.01)
    assert m[0]["bytes_up"] == pytest.approx(2 * down1, rel=0.01)  # the reply carries its state from round 1


@pytest.mark.slow
def test_resumed_slowmo_run_equals_straight_run(runs, resumed):
    (sc, _, xc), (sd, _, xd) = runs["C"], resumed
    assert sd["status"] == "finished" and sd["rounds"] == 3
    for k in xc:
        np.testing.assert_array_equal(xc[k], xd[k], err_msg=k)
    assert sc["comm"]["bytes"] == sd["comm"]["bytes"]
    assert sc["sim_time_s"] == pytest.approx(sd["sim_time_s"])

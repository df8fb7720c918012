"""Asynchronous SGD on a real local federation (``strategy.clock=real``) with one node slowed on purpose.

Three SuperNodes (127.0.0.1, TLS, node authentication). A one-round FedAvg run first measures W,
its round's wall time (node discovery and one training message: about two messages' time T); then
node 0 sleeps 1.5 W before each computation (``strategy.delay=one strategy.delay_worker=0
strategy.delay_ms=...``; with ``clock=real`` the node really sleeps). The two fast nodes keep going:
the run applies its 15 results (5 rounds of 3, about 7.5 T of fast work) while node 0 answers once or
twice. A fast node's result is overtaken by about two others (the other fast node's and at most one
of the slow node's); the slow node's by every result the fast nodes deliver during its sleep and
computation (about 2 * 4T / T = 8), so the histogram's tail (>= 4) is the slow node arriving stale.
Every process started is stopped by
PID. Slow: ``pytest -m slow``.
"""

from __future__ import annotations

import json

import pytest
from conftest import needs_fmnist
from test_deploy import deploy_run, free_port_block

from fedlab_app import deploy

pytestmark = [needs_fmnist, pytest.mark.slow]


def test_slow_node_arrives_stale_and_the_others_keep_going(tmp_path):
    d = tmp_path / "fed"
    deploy.up(d, 3, port=free_port_block(4))
    try:
        probe = tmp_path / "probe"
        proc = deploy_run(d, probe, "rounds=1")
        assert proc.returncode == 0
        per_message = float((probe / "metrics.csv").read_text().splitlines()[1].split(",")[1])  # round 1's wall s
        out = tmp_path / "async"
        proc = deploy_run(d, out, "strategy=async_sgd", "strategy.clock=real", "strategy.delay=one",
                          "strategy.delay_worker=0", f"strategy.delay_ms={1500 * per_message:.0f}",
                          "client.local_steps=2", "rounds=5")
        summary = json.loads((out / "summary.json").read_text())
        assert proc.returncode == 0 and summary["status"] == "finished", summary
        assert summary["updates"] == 15
        ups = {k: v["messages"] for k, v in summary["comm"]["per_node"].items()}
        assert ups["1"] >= 2 * ups["0"] and ups["2"] >= 2 * ups["0"], ups  # the fast nodes did most of the work
        hist = {int(k): n for k, n in summary["staleness_histogram"].items()}
        assert sum(hist.values()) == 15
        assert max(hist) >= 4, hist  # the slow node's result, applied after the fast nodes' updates
    finally:
        pids = deploy.down(d)
        assert not any(deploy._alive(p) for p in pids)

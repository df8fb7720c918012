"""A real local federation (127.0.0.1 only): SuperLink + 3 SuperNodes with TLS and node authentication.

Runs 2 rounds of FedAvg and checks the results files; an unregistered SuperNode is refused; a
SuperNode killed during a later run: the run finishes without it, the failure recorded; a
misconfigured node (its ClientApp raises): a clear error for that node, the others go on. Every
process started is stopped by PID at the end. Slow (a deployed round starts a ClientApp process per
node, and a killed node is noticed only after 2 missed heartbeats, 40-60 s): ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time

import pytest
from conftest import ROOT, needs_fmnist

from fedlab_app import deploy, trace

pytestmark = [needs_fmnist, pytest.mark.slow]
FEDLAB = str(ROOT / ".venv" / "bin" / "fedlab") if (ROOT / ".venv" / "bin" / "fedlab").exists() else "fedlab"


def free_port_block(n: int) -> int:
    """A port p such that p .. p+n can be bound on 127.0.0.1, below Linux's ephemeral range.

    Ports in the ephemeral range (``ip_local_port_range``, 32768-60999 by default) are what the federation's
    own outgoing connections use: one of them took a SuperNode's port between this check and its bind (CI,
    2026-12-02: "address already in use").
    """
    try:
        low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    top = max(low, 10_000 + 2 * n) - n - 1
    rng = random.Random()
    for _ in range(200):
        p = rng.randrange(10_000, top)
        if all(_free(p + i) for i in range(n + 1)):
            return p
    raise RuntimeError("no free port block")


def _free(port: int) -> bool:
    """Whether ``port`` can be bound on 127.0.0.1 now (nothing listens on it or holds it)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def deploy_run(d, out, *overrides, wait=True):
    cmd = [FEDLAB, "deploy", "run", "--dir", str(d), "dataset.limit_train=900", "client.batch_size=64",
           f"out_dir={out}", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    if wait:
        proc.communicate(timeout=600)
    return proc


def rows(out) -> int:
    f = out / "metrics.csv"
    return max(f.read_text().count("\n") - 1, 0) if f.exists() else 0


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    d = tmp_path_factory.mktemp("deploy")
    port = free_port_block(4)
    before = os.environ.get(trace.ENV)
    os.environ[trace.ENV] = str(d / "trace.jsonl")  # the federation's processes keep it (fedlab_app/trace.py)
    try:
        deploy.up(d, 3, port=port)
    finally:
        if before is None:
            del os.environ[trace.ENV]
        else:
            os.environ[trace.ENV] = before
    try:
        yield d, port
    finally:
        pids = deploy.down(d)
        assert pids and not any(deploy._alive(p) for p in pids)


def test_federation_with_tls_auth_failures(federation, tmp_path):
    d, port = federation
    # 1. two rounds of FedAvg over TLS, 3 authenticated SuperNodes
    proc = deploy_run(d, tmp_path / "run1", "rounds=2")
    summary = json.loads((tmp_path / "run1" / "summary.json").read_text())
    assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""
    assert summary["status"] == "finished" and summary["rounds"] == 2 and summary["num_clients"] == 3
    assert summary["comm"]["messages"] == 12 and summary["failures"] == 0
    assert "BEGIN CERTIFICATE" in (d / "certs" / "ca.crt").read_text()
    assert "--enable-supernode-auth" in deploy.load_state(d)["processes"][0]["cmd"]
    # every training message's journey was traced, stage by stage, in order, through the warm ClientApp path
    journeys = trace.journeys(trace.read(d / "trace.jsonl"))
    assert len({r["run"] for r in journeys}) == 1 and len(journeys) == 6, journeys  # 2 rounds x 3 nodes
    order = [label for label, *_ in trace.STAGES]
    for r in journeys:
        assert all(r[k] is not None for k in order), r
        # in one process, strictly in order; across processes within 0.5 s (each marks after its own step
        # returns); an event put in the wrong round or node would be off by a round (seconds)
        for a, b in (("server sends", "server pushed"), ("child started", "task pulled"),
                     ("task pulled", "FAB installed"), ("FAB installed", "app loaded"), ("app loaded", "handler"),
                     ("handler", "trained"), ("trained", "reply pushed to node"),
                     ("node has message", "node has reply"), ("node has reply", "reply on SuperLink")):
            assert r[a] <= r[b], (a, b, r)
        for a, b in (("server pushed", "node has message"), ("launcher started", "child started"),
                     ("node has message", "task pulled"), ("reply pushed to node", "node has reply"),
                     ("reply on SuperLink", "server has replies")):
            assert r[a] <= r[b] + 0.5, (a, b, r)
    assert "imported fedlab_app.client_app from" in (d / "logs" / "prefork.log").read_text()

    # 2. an unregistered SuperNode is refused
    key, _ = deploy.make_node_key(d / "keys" / "rogue")
    rogue = deploy.start_supernode(d, f"127.0.0.1:{port}", 0, 3, port + 10, key=key, name="rogue")
    assert rogue.wait(timeout=120) != 0
    assert "Failed to activate SuperNode" in (d / "logs" / "rogue.log").read_text()

    # 3. a SuperNode killed after round 1 of 3: the run finishes with 2 nodes, the failure recorded
    out = tmp_path / "run2"
    proc = deploy_run(d, out, "rounds=3", wait=False)
    t0 = time.monotonic()
    while rows(out) < 1:
        assert time.monotonic() - t0 < 300 and proc.poll() is None, "round 1 never finished"
        time.sleep(0.5)
    node2 = next(p for p in deploy.load_state(d)["processes"] if p["name"] == "supernode2")
    os.killpg(node2["pid"], signal.SIGKILL)
    proc.communicate(timeout=600)
    summary = json.loads((out / "summary.json").read_text())
    assert proc.returncode == 0 and summary["status"] == "finished" and summary["rounds"] == 3
    assert summary["failures"] >= 1
    assert any(e["node"] == "2" and "Node Unavailable" in e["reason"] for e in summary["failure_events"])
    metrics = (out / "metrics.csv").read_text().splitlines()
    assert metrics[-1].split(",")[4] == "2"  # clients in the last round

    # 4. node 2 comes back misconfigured (partition-id 7 of 3): its ClientApp raises, the others go on
    deploy.start_supernode(d, f"127.0.0.1:{port}", 7, 3, port + 3, key=d / "keys" / "node2", name="supernode2b")
    time.sleep(10)
    deploy_run(d, tmp_path / "run3", "rounds=1")
    summary = json.loads((tmp_path / "run3" / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["failures"] == 1
    assert "partition-id=7" in summary["failure_events"][0]["reason"]

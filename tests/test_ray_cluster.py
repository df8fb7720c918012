"""Simulation on a Ray cluster (``sim.ray_address``): a head node and a second worker node on this machine.

The test starts both Ray nodes itself (``ray start --block``, each in its own process group, 1 CPU
each, so Flower's actor pool gets one actor per node), runs ``fedlab run sim.ray_address=<head>`` with
4 clients of one message each (the head in its own ``--temp-dir``, so that no address file is left in
``/tmp/ray`` for other processes' ``ray.init()`` to find), checks that ``summary.json``'s ``workers`` names both Ray nodes (by
their node ids' 12-character prefixes), and stops both nodes by PID. It never runs ``ray stop``, which
would stop every Ray instance of this user. Slow (two Ray nodes and a simulation): ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT, needs_fmnist

from fedlab_app.compose import compose
from fedlab_app.simulate import ray_init_args

pytestmark = [needs_fmnist, pytest.mark.slow]
BIN = Path(sys.executable).parent
FEDLAB = str(BIN / "fedlab")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([str(BIN / "ray"), "start", "--block", "--num-cpus", "1", "--disable-usage-stats",
                             "--object-store-memory", "100000000", *args],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the Ray node's process group (``ray start --block`` stops its raylet and GCS), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            time.sleep(1)  # the group's other processes exit with their leader
        except subprocess.TimeoutExpired:
            continue
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


def _ray_node_ids(address: str) -> list[str]:
    """The alive nodes' ids of the cluster at ``address`` (asked in a separate driver process)."""
    code = (f"import ray, json; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_init_args_join_a_cluster_without_num_cpus():
    cfg = compose(["sim.ray_address=10.0.0.1:6379"])
    assert ray_init_args(cfg)["address"] == "10.0.0.1:6379" and "num_cpus" not in ray_init_args(cfg)
    private = ray_init_args(compose([]))
    assert private["address"] == "local" and private["num_cpus"] >= 1  # never joins a cluster by accident


def test_simulation_spreads_over_two_ray_nodes(tmp_path):
    port = _free_port()
    address = f"127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX
    head = _start(["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--include-dashboard=false",
                   "--temp-dir", temp], tmp_path / "head.log")
    procs = [head]
    try:
        t0 = time.monotonic()
        while True:  # the head node answers once its GCS listens
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert head.poll() is None and time.monotonic() - t0 < 180, (tmp_path / "head.log").read_text()[-2000:]
            time.sleep(1)
        procs.append(_start(["--address", address, "--node-ip-address", "127.0.0.1"], tmp_path / "worker.log"))
        t0 = time.monotonic()
        while len(nodes := _ray_node_ids(address)) < 2:
            assert time.monotonic() - t0 < 180, (tmp_path / "worker.log").read_text()[-2000:]
            time.sleep(2)
        out = tmp_path / "run"
        res = subprocess.run([FEDLAB, "run", f"sim.ray_address={address}", "num_clients=4", "rounds=2",
                              "sim.clients_per_worker=1", "dataset.limit_train=800", "client.batch_size=64",
                              f"out_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "finished"
        workers = summary["workers"]
        assert sum(workers.values()) == 8  # 4 clients x 2 rounds, each reply names its Ray node
        assert set(workers) == {n[:12] for n in nodes}, (workers, nodes)  # both nodes trained clients
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)
    assert all(p.poll() is not None for p in procs)

"""The server survives: a deployed run whose SuperLink (and ServerApp) is killed mid-run continues.

A local federation (127.0.0.1, TLS, node authentication, 3 SuperNodes). First an uninterrupted
4-round FedAvg run. Then the same run again, whose SuperLink process group (SuperLink, its
SuperExec and the ServerApp) is SIGKILLed once round 2 is checkpointed; ``fedlab deploy restart``
starts the SuperLink again and ``fedlab deploy run ... resume=true`` finishes the run from the
checkpoint: its final model equals the uninterrupted run's bit for bit. With the SuperLink's state in
SQLite (its database keeps the registered keys and node ids) the SuperNodes reconnect on their own; with
it in memory (``fedlab deploy up``'s default) the restart registers the keys again and restarts the
SuperNodes too, which Flower's SuperNode needs (it exits when the SuperLink no longer knows its id).
Every process started is stopped by PID. Slow: ``pytest -m slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
from conftest import ROOT, needs_fmnist
from test_deploy import FEDLAB, deploy_run, free_port_block, rows

from fedlab_app import deploy
from fedlab_app.results import RunDir

pytestmark = [needs_fmnist, pytest.mark.slow]


def online_nodes(d) -> int:
    res = deploy.flwr(d, "supernode", "ls", deploy.CONNECTION, "--format", "json", timeout=60)
    try:
        nodes = json.loads(res.stdout)["nodes"]
    except (ValueError, KeyError):
        return 0
    return sum(1 for n in nodes if str(n.get("status", "")).lower() == "online")


def final_model(out) -> dict:
    rnd, arrays, _, _ = RunDir.load_checkpoint(RunDir(out).last_checkpoint())
    assert rnd == 4
    return arrays


@pytest.mark.parametrize("state", ["sqlite", "memory"])
def test_killed_superlink_restarts_and_the_run_resumes_exactly(tmp_path, state):
    d = tmp_path / "fed"
    deploy.up(d, 3, port=free_port_block(4), superlink_state=state)
    procs = []
    try:
        straight, cut = tmp_path / "straight", tmp_path / "cut"
        proc = deploy_run(d, straight, "rounds=4")
        assert proc.returncode == 0, proc.stdout.read() if proc.stdout else ""

        proc = deploy_run(d, cut, "rounds=4", wait=False)
        procs.append(proc)
        t0 = time.monotonic()
        while rows(cut) < 2:  # rounds 1 and 2 checkpointed (checkpoint_every=1)
            assert time.monotonic() - t0 < 400 and proc.poll() is None, "round 2 never finished"
            time.sleep(0.3)
        link = next(p for p in deploy.load_state(d)["processes"] if p["name"] == "superlink")
        os.killpg(link["pid"], signal.SIGKILL)  # the SuperLink, its SuperExec and the ServerApp
        try:
            proc.communicate(timeout=180)  # `flwr run --stream` notices the lost SuperLink
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate(timeout=30)
        assert rows(cut) < 4  # killed mid-run: no summary.json written (SIGKILL), or not a finished one
        assert not (cut / "summary.json").exists() or json.loads((cut / "summary.json").read_text())["status"] != "finished"

        restarted = ["superlink"] if state == "sqlite" else ["superlink", *(f"supernode{i}" for i in range(3))]
        assert deploy.restart(d) == restarted
        assert deploy.restart(d) == []  # nothing else had stopped, and the restarted processes run
        t0 = time.monotonic()
        while online_nodes(d) < 3:  # the SuperNodes reconnect (sqlite: by themselves)
            assert time.monotonic() - t0 < 300, "the SuperNodes did not come back"
            time.sleep(3)
        res = subprocess.run([FEDLAB, "deploy", "run", "--dir", str(d), "dataset.limit_train=900", "client.batch_size=64",
                              f"out_dir={cut}", "rounds=4", "resume=true"], cwd=ROOT, capture_output=True, text=True,
                             timeout=900, check=False)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        resumed = json.loads((cut / "summary.json").read_text())
        assert resumed["status"] == "finished" and resumed["rounds"] == 4
        a, b = final_model(straight), final_model(cut)
        assert a.keys() == b.keys()
        for k in a:
            np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)
        assert resumed["final"]["test_acc"] == json.loads((straight / "summary.json").read_text())["final"]["test_acc"]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate(timeout=30)
        pids = deploy.down(d)
        assert not any(deploy._alive(p) for p in pids)

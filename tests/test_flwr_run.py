"""`flwr run .` (Flower's own CLI) runs the same app through a local SuperLink.

Flower's CLI starts a detached local SuperLink (and a SuperExec, a simulation process and Ray) and
exits 0 even when the run failed, so the test reads the outcome from the results files and from
`flwr ls`, then stops every process the SuperLink started, by process group.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, needs_fmnist

FLWR = str(Path(sys.executable).with_name("flwr"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def superlink_pids(port: int) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"flower-superlink.*--port {port}"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def stop_tree(pids: list[int]) -> None:
    """SIGTERM the SuperLink(s), then SIGKILL whatever is left in their process groups and their children's."""
    groups = set()
    for pid in pids:
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        for p in [pid, *map(int, kids)]:
            try:
                groups.add(os.getpgid(p))
            except ProcessLookupError:
                pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + 10
    while time.time() < deadline and any(subprocess.run(["pgrep", "-g", str(g)], capture_output=True).returncode == 0
                                         for g in groups):
        time.sleep(0.2)
    for g in groups:
        try:
            os.killpg(g, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@needs_fmnist
@pytest.mark.slow
def test_flwr_run_dot(tmp_path):
    port, control = free_port(), free_port()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr_home"), "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
           "FLWR_LOCAL_CONTROL_API_PORT": str(control), "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "PATH": f"{Path(FLWR).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # flower-superlink
    out_dir = tmp_path / "run"
    cmd = [FLWR, "run", ".", "--format", "json", "--stream",
           "--federation-config", "num-supernodes=2 client-resources-num-cpus=1",
           "--run-config", f'num_clients=2 rounds=2 dataset.limit_train=1000 out_dir="{out_dir}"']
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        reply = json.loads(proc.stdout[proc.stdout.index("{"):])
        assert reply["success"], reply
        ls = subprocess.run([FLWR, "ls", "--run-id", str(reply["run-id"]), "--format", "json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
        status = json.loads(ls.stdout[ls.stdout.index("{"):])["runs"][0]["status"]
        assert status == "finished:completed", ls.stdout
        summary = json.loads((out_dir / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds"] == 2 and summary["num_clients"] == 2
        assert summary["comm"]["messages"] == 8
        assert (out_dir / "metrics.csv").read_text().count("\n") == 3
    finally:
        stop_tree(superlink_pids(port))
    assert superlink_pids(port) == []

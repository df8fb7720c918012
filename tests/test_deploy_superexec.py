"""A SuperLink whose SuperExec has exited (Flower 1.41 gives up for good after a TLS handshake timeout) is seen
(``deploy.superexec_alive``), restarted before the next run (``deploy.heal_superlink``), and a run waiting for its
ServerApp is stopped at once instead of after the start timeout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fedlab_app import deploy

# a stand-in SuperLink: listens on its port and keeps a child named flower-superexec (not reaped once it dies)
FAKE_SUPERLINK = r"""
import os, socket, subprocess, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()
child = subprocess.Popen(["bash", "-c", "exec -a flower-superexec sleep 600"])
open(sys.argv[2], "w").write(str(child.pid))
signal_ = __import__("signal")
signal_.signal(signal_.SIGTERM, lambda *_: (child.kill(), sys.exit(0)))
while True:
    time.sleep(0.1)  # never waits on the child: a dead SuperExec stays a zombie, as under Flower's SuperLink
"""

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="reads Linux /proc")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_pid(path, wait=10.0) -> int:
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait:
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.05)
    raise AssertionError("the fake SuperLink did not start its child")


@pytest.fixture
def fake_federation(tmp_path):
    d, port = tmp_path / "fed", _free_port()
    d.mkdir()
    script = tmp_path / "superlink.py"
    script.write_text(FAKE_SUPERLINK)
    child_file = tmp_path / "child.pid"
    deploy.save_state(d, {"processes": [], "nodes": 0, "address": f"127.0.0.1:{port}", "tls": False, "auth": False})
    deploy.start_process(d, "superlink", [sys.executable, str(script), str(port), str(child_file)])
    deploy.wait_port("127.0.0.1", port, 20)
    yield d, child_file
    deploy.down(d)


def test_a_live_superexec_is_seen_and_a_dead_one_too(fake_federation):
    d, child_file = fake_federation
    assert deploy.superexec_alive(d) is True
    assert deploy.superlink_report(d).endswith("ServerApp): running")
    os.kill(_child_pid(child_file), signal.SIGKILL)  # as Flower's SuperExec exits after giving up
    t0 = time.monotonic()
    while deploy.superexec_alive(d) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert deploy.superexec_alive(d) is False
    assert "EXITED" in deploy.superlink_report(d)


def test_heal_restarts_a_superlink_without_superexec_and_leaves_a_sound_one(fake_federation):
    d, child_file = fake_federation
    assert deploy.heal_superlink(d) is False  # its SuperExec runs: nothing to do
    first = deploy.load_state(d)["processes"][0]["pid"]
    old_child = _child_pid(child_file)
    child_file.write_text("")
    os.kill(old_child, signal.SIGKILL)
    t0 = time.monotonic()
    while deploy.superexec_alive(d) and time.monotonic() - t0 < 10:
        time.sleep(0.05)
    assert deploy.heal_superlink(d, wait=20) is True
    again = [p["pid"] for p in deploy.load_state(d)["processes"] if p["name"] == "superlink"]
    assert again and again[0] != first  # a new SuperLink process ...
    assert deploy.superexec_alive(d) is True  # ... with its SuperExec
    assert _child_pid(child_file) != old_child


def test_no_superlink_of_ours_means_cannot_tell(tmp_path):
    d = tmp_path / "remote"
    d.mkdir()
    deploy.save_state(d, {"processes": [], "nodes": 0, "address": "10.0.0.1:9300", "tls": True, "auth": True})
    assert deploy.superexec_alive(d) is None and deploy.heal_superlink(d) is False


def test_a_run_waiting_for_a_serverapp_nothing_will_start_is_stopped_early(tmp_path, monkeypatch):
    monkeypatch.setattr(deploy, "STARTER_CHECK_S", 0.2)
    proc = subprocess.Popen([sys.executable, "-c", "import time; print('waiting', flush=True); time.sleep(600)"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.perf_counter()
    out, why = deploy._wait_for(proc, t0, 3600, 300, tmp_path / "config.yaml", time.time(), tmp_path / "logs",
                                lambda: True)
    assert time.perf_counter() - t0 < 20
    assert "SuperExec" in why and "has exited" in why and "waiting" in out
    assert proc.poll() is not None  # stopped

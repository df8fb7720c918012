"""`fedlab deploy run` stops a run whose ServerApp never starts (``deploy.run``'s ``start_timeout``), instead of
waiting up to an hour; a run that started may take longer than that."""

from __future__ import annotations

import json
import os
import stat
import sys
import time

from fedlab_app import deploy

FAKE = """#!{python}
# a stand-in for `flwr run APP CONNECTION --run-config FILE --stream` and `flwr stop RUN_ID CONNECTION`
import json, pathlib, sys, time, tomllib
if sys.argv[1] == "stop":
    pathlib.Path("stopped").write_text(" ".join(sys.argv[2:]))  # in the app dir (its cwd)
    sys.exit(0)
cfg = tomllib.loads(pathlib.Path(sys.argv[sys.argv.index("--run-config") + 1]).read_text())
out = pathlib.Path(cfg["out_dir"])
print("fake flwr run", flush=True)
if {starts}:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text("seed: 0\\n")
    time.sleep(1.2)  # longer than the start timeout, after the start
    (out / "summary.json").write_text(json.dumps({{"status": "finished"}}))
else:
    if {accepted}:
        print("Successfully started run 4242", flush=True)
    (pathlib.Path(cfg["out_dir"]).parent / "fake.pid").write_text(str(__import__("os").getpid()))
    time.sleep(600)
"""


def _fake_flwr(tmp_path, monkeypatch, starts: bool, accepted: bool = False):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "flwr"
    exe.write_text(FAKE.format(python=sys.executable, starts=starts, accepted=accepted))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(deploy, "BIN", bin_dir)
    return tmp_path / "fed"


def test_a_serverapp_that_never_starts_is_stopped_and_named(tmp_path, monkeypatch):
    d = _fake_flwr(tmp_path, monkeypatch, starts=False)
    d.mkdir()
    t0 = time.monotonic()
    summary = deploy.run(d, {"out_dir": str(tmp_path / "run")}, tmp_path, start_timeout=0.5)
    assert time.monotonic() - t0 < 15
    assert summary["status"] == "failed" and "the ServerApp did not start within 0.5 s" in summary["error"]
    assert "fake flwr run" in (d / "logs" / "flwr_run.log").read_text()  # its output is kept
    pid = int((tmp_path / "fake.pid").read_text())
    try:
        os.kill(pid, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive  # stopped, and reaped
    assert not (tmp_path / "stopped").exists()  # it never said the SuperLink accepted a run: nothing to stop there


def test_a_run_the_superlink_accepted_is_stopped_there_too(tmp_path, monkeypatch):
    d = _fake_flwr(tmp_path, monkeypatch, starts=False, accepted=True)
    d.mkdir()
    summary = deploy.run(d, {"out_dir": str(tmp_path / "run")}, tmp_path, start_timeout=0.5)
    assert summary["status"] == "failed" and "run 4242 stopped on the SuperLink" in summary["error"]
    assert (tmp_path / "stopped").read_text() == f"4242 {deploy.CONNECTION}"


def test_submitted_run_reads_flwr_runs_line():
    assert deploy.submitted_run("Loading project configuration...\n🎊 Successfully started run 1234567\n") == 1234567
    assert deploy.submitted_run("error: could not connect") is None


def test_a_started_run_may_take_longer_than_the_start_timeout(tmp_path, monkeypatch):
    d = _fake_flwr(tmp_path, monkeypatch, starts=True)
    d.mkdir()
    summary = deploy.run(d, {"out_dir": str(tmp_path / "run")}, tmp_path, start_timeout=0.5)
    assert summary["status"] == "finished", json.dumps(summary)[-500:]

"""A deployed message's journey (fedlab_app/trace.py) and the changes it led to: events are written only when
FEDLAB_TRACE names a file, rounds travel as Flower's group_id, the SuperNode loop's steps are marked around
Flower's own functions, journeys are put together per round and node (hand-made events), a ClientApp reuses the
app directory an earlier message of the same FAB installed (and only that), the ServerApp's object pulls retry
sooner, and the SuperLink's SuperExec asks for work at its own interval."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from fedlab_app import deploy, flower_waits, prefork, trace


def test_nothing_is_written_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for unset in (None, ""):  # unset, or empty (an empty path would fail to open)
        if unset is None:
            monkeypatch.delenv(trace.ENV, raising=False)
        else:
            monkeypatch.setenv(trace.ENV, unset)
        trace.mark("server", "send", round=1)
        assert not trace.enabled() and list(tmp_path.iterdir()) == []
    monkeypatch.setenv(trace.ENV, str(tmp_path / "t.jsonl"))
    trace.mark("server", "send", t=12.5, round=1, type="train")
    trace.mark("node", "received", round=1, type="train", node=7)
    first, second = trace.read(tmp_path / "t.jsonl")
    assert first == {"t": 12.5, "pid": first["pid"], "who": "server", "what": "send", "round": 1, "type": "train"}
    assert second["node"] == 7 and second["t"] > 1e9


@pytest.fixture
def _task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for attr in ("_task_id", "_run_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, attr, 1, raising=False)


def test_rounds_travel_as_group_id(_task_identity):
    from flwr.app import ConfigRecord, Message, RecordDict

    msgs = [Message(RecordDict({"config": ConfigRecord({"server-round": 4})}), dst_node_id=1, message_type="train"),
            Message(RecordDict({"config": ConfigRecord({"lr": 0.1})}), dst_node_id=1, message_type="train"),
            Message(RecordDict({"config": ConfigRecord({"server-round": 4})}), dst_node_id=1, message_type="train",
                    group_id="mine")]
    trace.tag_rounds(msgs)
    assert [trace.about(m) for m in msgs] == [{"run": 1, "round": 4, "type": "train"},
                                              {"run": 1, "round": "", "type": "train"},
                                              {"run": 1, "round": "mine", "type": "train"}]
    reply = Message(RecordDict(), reply_to=msgs[0])
    assert trace.about(reply) == {"run": 1, "round": 4, "type": "train"}  # a reply keeps its message's round


def test_journeys_put_each_messages_events_together():
    """Two nodes (SuperNode pids 100 and 200) in round 3; times are seconds after an arbitrary origin. The
    ClientApp of node 100 is pid 11, launched by launcher pid 10; node 200's events are partly missing."""
    ev = [{"t": 50.0, "pid": 1, "who": "server", "what": "send", "round": 3, "type": "train"},
          {"t": 50.2, "pid": 1, "who": "server", "what": "pushed", "round": 3, "type": "train"},
          {"t": 50.5, "pid": 100, "who": "node", "what": "received", "node": 100, "round": 3, "type": "train"},
          {"t": 50.1, "pid": 10, "who": "launcher", "what": "launched", "node": 100},
          {"t": 50.3, "pid": 11, "who": "clientapp", "what": "started", "launcher": 10},
          {"t": 50.6, "pid": 11, "who": "clientapp", "what": "task pulled", "round": 3, "type": "train"},
          {"t": 51.0, "pid": 11, "who": "clientapp", "what": "trained", "round": 3, "type": "train"},
          {"t": 51.4, "pid": 100, "who": "node", "what": "reply sent", "node": 100, "round": 3, "type": "train"},
          {"t": 50.7, "pid": 200, "who": "node", "what": "received", "node": 200, "round": 3, "type": "train"},
          {"t": 52.0, "pid": 1, "who": "server", "what": "replies", "round": 3, "type": "train"},
          {"t": 49.0, "pid": 1, "who": "server", "what": "send", "round": "", "type": "query"},  # other type
          {"t": 53.0, "pid": 300, "who": "node", "what": "received", "node": 300, "round": 4, "type": "train"},
          {"t": 60.0, "pid": 1, "who": "server", "what": "send", "round": 3, "type": "train", "run": 9},  # run 9
          {"t": 60.4, "pid": 100, "who": "node", "what": "received", "node": 100, "round": 3, "type": "train",
           "run": 9}]
    rows = trace.journeys(ev)
    assert [(r["run"], r["round"], r["node"]) for r in rows] == [(9, 3, 100), (None, 3, 100), (None, 3, 200)]
    assert rows[0]["node has message"] == 0.4 and rows[0]["trained"] is None  # run 9 kept apart
    rows = rows[1:]  # round 4 was never sent
    a, b = rows
    assert (a["server sends"], a["server pushed"], a["node has message"], a["launcher started"]) == (0, 0.2, 0.5, 0.1)
    assert (a["child started"], a["task pulled"], a["trained"], a["reply on SuperLink"]) == (0.3, 0.6, 1.0, 1.4)
    assert a["server has replies"] == b["server has replies"] == 2.0 and a["handler"] is None
    assert b["node has message"] == 0.7 and b["launcher started"] is None and b["trained"] is None


def test_the_supernode_loop_is_marked_around_flowers_steps(monkeypatch, tmp_path):
    from flwr.supernode import start_client_internal as loop

    msg = SimpleNamespace(metadata=SimpleNamespace(group_id="2", message_type="train", run_id=6))
    calls = []

    def pull(*, state, receive):  # Flower's step: pull a message and its objects, store it (None: nothing stored)
        got = receive()
        calls.append(("pull", state))
        return None if got is None or state == "objects failed" else 5

    def push(*, state, send):
        calls.append(("push", send(msg, "tree", 0.1)))

    monkeypatch.setattr(loop, "_pull_and_store_message", pull)
    monkeypatch.setattr(loop, "_push_messages", push)
    monkeypatch.setenv(trace.ENV, str(tmp_path / "t.jsonl"))
    flower_waits.trace_node_loop()
    assert loop._pull_and_store_message(state="s", receive=lambda: None) is None
    assert loop._pull_and_store_message(state="objects failed", receive=lambda: (msg, "tree")) is None
    assert not (tmp_path / "t.jsonl").exists()  # an empty poll, or a message not stored, is not an event
    assert loop._pull_and_store_message(state="s", receive=lambda: (msg, "tree")) == 5
    loop._push_messages(state="s", send=lambda m, tree, rt: ({"ids"}, "session"))
    ev = trace.read(tmp_path / "t.jsonl")
    assert [(e["who"], e["what"], e["run"], e["round"], e["type"], e["node"]) for e in ev] == [
        ("node", w, 6, 2, "train", ev[0]["pid"]) for w in ("received", "reply seen", "reply sent")]
    assert calls == [("pull", "s"), ("pull", "objects failed"), ("pull", "s"), ("push", ({"ids"}, "session"))]


def test_a_clientapp_reuses_the_app_its_fab_installed_and_only_that(monkeypatch, tmp_path):
    from flwr.supernode.runtime import run_clientapp as rc

    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    fab = b"PK fab bytes"
    run = SimpleNamespace(fab_id="fedlab/fedlab", fab_version="1.0.0", fab_hash=hashlib.sha256(fab).hexdigest())
    installs = []
    monkeypatch.setattr(rc, "pull_task_input", lambda client: ("msg", "ctx", run, SimpleNamespace(content=fab)))
    monkeypatch.setattr(rc, "install_from_fab", lambda f, skip_prompt=False: installs.append(f) or "flower's")
    prefork._reuse_installed_fab()
    rc.pull_task_input(None)
    assert rc.install_from_fab(fab, skip_prompt=True) == "flower's"  # not installed yet: Flower installs
    app = tmp_path / "apps" / f"fedlab.fedlab.1.0.0.{run.fab_hash[:8]}"
    app.mkdir(parents=True)
    assert rc.install_from_fab(fab, skip_prompt=True) == "flower's"  # no pyproject.toml: not a whole install
    (app / "pyproject.toml").write_text("[project]\n")
    assert rc.install_from_fab(fab, skip_prompt=True) == app and len(installs) == 2  # reused, nothing unpacked
    assert rc.install_from_fab(b"other bytes", skip_prompt=True) == "flower's"  # not the run's FAB
    assert len(installs) == 3


@pytest.fixture
def _flowers_pull_defaults():
    """Flower's object-pull retry settings (process-wide), put back after the test."""
    from flwr.supercore.inflatable import inflatable_utils as utils

    saved = {name: dict(getattr(utils, name).__kwdefaults__)
             for name in ("pull_objects", "pull_and_inflate_object_from_tree")}
    yield
    for name, defaults in saved.items():
        getattr(utils, name).__kwdefaults__.update(defaults)


def test_the_serverapps_object_pulls_retry_sooner(_flowers_pull_defaults, monkeypatch):
    """The deployed grid's pulls of a reply's objects start retrying after FIRST_PULL_RETRY_S once the ServerApp
    wraps its grid; FEDLAB_SERVER_PULL_RETRY=0 keeps Flower's 1 s."""
    from flwr.superlink.grid import http_grid

    from fedlab_app.driver import PromptGrid

    defaults = http_grid.pull_objects.__kwdefaults__  # the function the deployed grid calls, by that name
    assert defaults["initial_backoff"] == 1
    monkeypatch.setenv("FEDLAB_SERVER_PULL_RETRY", "0")
    PromptGrid(object())
    assert defaults["initial_backoff"] == 1
    monkeypatch.delenv("FEDLAB_SERVER_PULL_RETRY")
    PromptGrid(object())
    assert defaults["initial_backoff"] == flower_waits.FIRST_PULL_RETRY_S
    assert defaults["backoff_cap"] == flower_waits.PULL_RETRY_CAP_S


def test_the_superlinks_superexec_asks_at_its_own_interval(monkeypatch, tmp_path):
    started = []

    class FakePopen:
        def __init__(self, cmd, env, **kwargs):
            started.append(env)
            self.pid = 4242

    monkeypatch.setattr(deploy.subprocess, "Popen", FakePopen)
    monkeypatch.setattr(deploy, "wait_port", lambda host, port: None)
    monkeypatch.delenv("FEDLAB_SUPERLINK_EXEC_POLL_S", raising=False)
    monkeypatch.delenv("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", raising=False)
    deploy.save_state(tmp_path, {"processes": []})
    deploy.start_superlink(tmp_path, "127.0.0.1", 9999, tls=False, auth=False)
    deploy.start_process(tmp_path, "supernode0", ["true"])
    deploy.start_process(tmp_path, "superlink", ["true"])  # as `fedlab deploy restart` starts it again
    superlink, node, restarted = started
    assert superlink["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == deploy.SUPERLINK_EXEC_POLL_S == "1.0"
    assert restarted["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "1.0"
    assert node["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == deploy.SUPEREXEC_POLL_S == "0.1"
    assert json.loads((tmp_path / "state.json").read_text())["processes"][0]["name"] == "superlink"
    monkeypatch.setenv("FEDLAB_SUPERLINK_EXEC_POLL_S", "0.3")
    assert deploy.process_env(tmp_path, "superlink")["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.3"


def test_process_start_and_parent_from_proc():
    import os
    import time

    before = time.time()
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    try:
        started = trace.process_start(proc.pid)
        # to a clock tick (10 ms) and this clock's drift against the boot clock, not a whole second early
        assert started is not None and before - 0.05 <= started <= time.time(), (before, started)
        assert trace.parent(proc.pid) == os.getpid() and trace.parent(os.getpid()) == os.getppid()
        assert trace.process_start(2**22 + 7) is None and trace.parent(2**22 + 7) is None  # no such process
    finally:
        proc.kill()
        proc.wait()

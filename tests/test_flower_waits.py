"""Flower's waits shortened (fedlab_app/flower_waits.py): Flower's SuperNode loop still waits through
``time.sleep`` of its module (else the shortening would silently do nothing), the waits are cut to the
chosen interval and nothing else of ``time`` changes, bad intervals fail before anything starts, and object
pulls retry sooner in the processes that ask for it (SuperNodes, the prefork server's ClientApps)."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlab_app import deploy, flower_waits

ROOT = Path(__file__).resolve().parents[1]


def test_flower_supernode_loop_waits_through_its_time_module():
    from flwr.supernode import start_client_internal as loop

    tree = ast.parse(inspect.getsource(loop))
    waits = [ast.unparse(n) for n in ast.walk(tree)
             if isinstance(n, ast.Call) and ast.unparse(n.func).endswith("sleep")]
    assert "time.sleep(3)" in waits, waits  # the idle wait this module exists to cut
    assert all(w.startswith("time.sleep(") for w in waits), waits  # none out of the proxy's reach
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "time"]


def test_waits_are_cut_and_the_rest_of_time_is_unchanged(monkeypatch):
    from flwr.supernode import start_client_internal as loop

    monkeypatch.setattr(loop, "time", loop.time)  # put Flower's module back afterwards
    proxy = flower_waits.shorten_waits(0.05)
    assert loop.time is proxy and proxy.time is time.time and proxy.monotonic is time.monotonic
    t0 = time.monotonic()
    loop.time.sleep(3)  # Flower's idle wait
    loop.time.sleep(0.5)  # its wait for a ClientApp's reply
    loop.time.sleep(0.01)  # shorter waits stay as they are
    took = time.monotonic() - t0
    assert 0.11 <= took < 1.0, took


@pytest.mark.parametrize("bad", [0, -1, 3.5, float("nan")])
def test_bad_intervals_fail_before_anything_starts(bad, tmp_path):
    with pytest.raises(ValueError, match=r"must be > 0 and <= 3"):
        flower_waits.ShortSleeps(bad)
    with pytest.raises(ValueError, match=r"node poll interval"):
        deploy.up(tmp_path / "d", 1, poll=bad)
    assert not (tmp_path / "d").exists()  # nothing written, nothing started


def test_cli_names_the_bad_interval(tmp_path):
    res = subprocess.run([str(Path(sys.executable).parent / "fedlab"), "deploy", "up", "--nodes", "1", "--dir",
                          str(tmp_path / "d"), "--node-poll", "5"], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    assert res.returncode == 2 and "--node-poll=5 is invalid" in res.stderr and "<= 3" in res.stderr, res.stderr
    res = subprocess.run([sys.executable, "-m", "fedlab_app.flower_waits", "0"], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert res.returncode != 0 and "node poll interval 0.0" in res.stderr, res.stderr


def test_object_pulls_retry_sooner_where_asked():
    """In a fresh process (the setting is process-wide): Flower's first retry of an object not there yet drops
    from 1 s to FIRST_PULL_RETRY_S and its cap from 10 s, in the function a SuperNode calls (imported by name
    into its loop) and in the one a ClientApp calls. Fails if Flower renames the settings."""
    code = ("import sys; sys.path.insert(0, %r); from fedlab_app import flower_waits as w; "
            "from flwr.supernode import start_client_internal as loop; "
            "from flwr.supernode.runtime import run_clientapp as app; "
            "before = loop.pull_objects.__kwdefaults__['initial_backoff']; changed = w.retry_object_pulls_sooner(); "
            "print(before, *changed, loop.pull_objects.__kwdefaults__['initial_backoff'], "
            "app.pull_and_inflate_object_from_tree.__kwdefaults__['backoff_cap'])" % str(ROOT))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["1", "pull_objects", "pull_and_inflate_object_from_tree",
                                  str(flower_waits.FIRST_PULL_RETRY_S), str(flower_waits.PULL_RETRY_CAP_S)], \
        res.stderr[-2000:]

"""The prefork server (fedlab_app/prefork.py): a launcher's child runs the entry point with the launcher's
arguments, environment, directory and streams, and exits with its status; signals reach it; fedlab's own
modules are not carried into it (the ClientApp's come from the FAB); without a server the launcher runs the
fallback command itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedlab_app import prefork

ROOT = Path(__file__).resolve().parents[1]
TOY = '''import os, signal, sys, time
PRELOADED = set(sys.modules)
def main():
    print("argv", sys.argv[1:], "cwd", os.getcwd(), "X", os.environ.get("X"), flush=True)
    print("fedlab modules", sorted(m for m in sys.modules if m.split(".")[0] == "fedlab_app"), flush=True)
    import numpy  # preloaded by the server: still the same module (a second load would fail)
    print("numpy preloaded", numpy is sys.modules["numpy"] and "numpy" in PRELOADED, flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    if os.environ.get("SLEEP"):
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))
        print("sleeping", flush=True)
        time.sleep(60)
    return int(os.environ.get("CODE", "0"))
'''


@pytest.fixture
def server(tmp_path):
    (tmp_path / "toy.py").write_text(TOY)
    sock = tmp_path / "s.sock"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.Popen([sys.executable, "-c", f"from fedlab_app.prefork import serve; "
                             f"serve({str(sock)!r}, preload=('json', 'numpy'), target='toy:main')"], env=env)
    t0 = time.monotonic()
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() - t0 < 30, "the prefork server did not start"
        time.sleep(0.05)
    yield prefork.write_launcher(tmp_path / "bin", sock, Path("/bin/echo"))
    proc.terminate()
    assert proc.wait(10) == 0
    assert not sock.exists()


def test_child_runs_with_the_launchers_arguments_environment_and_streams(server, tmp_path):
    res = subprocess.run([str(server), "a", "b c"], cwd=tmp_path, env={**os.environ, "X": "42", "CODE": "3"},
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 3
    assert f"argv ['a', 'b c'] cwd {tmp_path} X 42" in res.stdout
    assert "fedlab modules []" in res.stdout  # the server imported fedlab_app.prefork; the child forgot it
    assert "numpy preloaded True" in res.stdout  # third-party modules stay (a venv inside the repo too)
    assert res.stderr.strip() == "to stderr"


def test_signals_reach_the_child(server, tmp_path):
    proc = subprocess.Popen([str(server)], env={**os.environ, "SLEEP": "1"}, stdout=subprocess.PIPE, text=True)
    lines = [proc.stdout.readline().strip() for _ in range(4)]
    assert lines[0].startswith("argv") and lines[3] == "sleeping", lines
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 7  # the child's own SIGTERM handler ran and its status came back


def test_without_a_server_the_launcher_runs_the_fallback(tmp_path):
    launcher = prefork.write_launcher(tmp_path / "bin", tmp_path / "nothing.sock", Path("/bin/echo"))
    res = subprocess.run([str(launcher), "cold", "start"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and res.stdout.strip() == "cold start"


WARM_CHECK = '''import os, sys
sys.path.insert(0, {root!r})
from fedlab_app import prefork
from flwr.common.config import get_project_dir
from flwr.supercore.object_ref import load_app
from flwr.supernode.runtime import run_clientapp as rc
A, B = {a!r}, {b!r}
print("warmed", prefork._warm_app(A), prefork._WARM["modules"])
warm = sys.modules["toyapp.client"]
rc.get_load_client_app_fn = lambda *a, **k: (lambda fid, fv, fh: load_app(
    "toyapp.client:app", ValueError, project_dir=get_project_dir(fid, fv, fh)))  # Flower's loader, in short
r, w = os.pipe()
prefork._use_warm_app(w)
loader = rc.get_load_client_app_fn("", None, True)
app = loader("pub/toy", "1.0.0", "a" * 64)
print("same", app is warm.app, sys.modules["toyapp.client"] is warm, warm.__file__.startswith(A),
      os.read(r, 4096).decode() == A)
other = loader("pub/toy", "1.0.0", "b" * 64)
print("other", other == "B", sys.modules["toyapp.client"].__file__.startswith(B), os.read(r, 4096).decode() == B)
prefork._warm_app(A)  # warm again; a child told FEDLAB_WARM_APP=0 must not see it
import socket
seen = []
prefork._entry = lambda target: (lambda: seen.append(("toyapp.client" in sys.modules, A in sys.path)) or 0)
mine, _ = socket.socketpair()
code = prefork._run_child(mine, [os.dup(0), os.dup(1), os.dup(2)], {{"cwd": os.getcwd(), "argv": ["x"],
                          "env": {{**os.environ, "FEDLAB_WARM_APP": "0"}}}}, prefork.TARGET)
print("cold child", code, seen)
'''


def test_the_server_imports_the_installed_app_and_a_child_uses_it_only_for_that_fab(tmp_path):
    """_warm_app imports the ClientApp module from an installed app directory; in a child, Flower's loader then
    gets that very module for a run whose FAB is installed there, and for another FAB (another directory) the
    warm modules are forgotten and the app comes from its own directory. Each load is reported. A child told
    FEDLAB_WARM_APP=0 starts without the warm modules and without their directory on sys.path."""
    dirs = []
    for h, value in (("a", "object()"), ("b", "'B'")):  # A: an object only that very module holds
        d = tmp_path / "home" / "apps" / f"pub.toy.1.0.0.{h * 8}"
        (d / "toyapp").mkdir(parents=True)
        (d / "pyproject.toml").write_text('[tool.flwr.app.components]\nclientapp = "toyapp.client:app"\n')
        (d / "toyapp" / "__init__.py").write_text("")
        (d / "toyapp" / "client.py").write_text(f"app = {value}\n")
        dirs.append(str(d))
    code = WARM_CHECK.format(root=str(ROOT), a=dirs[0], b=dirs[1])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "FLWR_HOME": str(tmp_path / "home")})
    assert res.stdout.splitlines() == [f"prefork: imported toyapp.client from {dirs[0]} (2 modules)",
                                       "warmed True ('toyapp', 'toyapp.client')", "same True True True True",
                                       "other True True True",
                                       f"prefork: imported toyapp.client from {dirs[0]} (2 modules)",
                                       "cold child 0 [(False, False)]"], res.stdout + res.stderr[-3000:]


def test_a_signal_before_the_childs_pid_is_known_still_reaches_it(tmp_path):
    """The launcher installs its relay before it sends the request: a SIGTERM that comes while it waits for the
    child's pid (here: a server that answers late) is passed on once the pid is known, not lost and not fatal."""
    sock = tmp_path / "slow.sock"
    code = ("import os, signal, socket, sys, time; sys.path.insert(0, %r); from fedlab_app import prefork\n"
            "srv = socket.socket(socket.AF_UNIX); srv.bind(%r); srv.listen(1); conn, _ = srv.accept()\n"
            "head, fds, _, _ = socket.recv_fds(conn, 8, 3)\n"
            "child = os.fork()\n"
            "if child == 0:\n"
            "    signal.signal(signal.SIGTERM, lambda *_: os._exit(7)); time.sleep(60); os._exit(0)\n"
            "time.sleep(1.0)  # the launcher is signalled meanwhile\n"
            "conn.sendall(prefork._PID.pack(child)); _, status = os.waitpid(child, 0)\n"
            "conn.sendall(prefork._PID.pack(os.waitstatus_to_exitcode(status)))\n" % (str(ROOT), str(sock)))
    server = subprocess.Popen([sys.executable, "-c", code])
    try:
        t0 = time.monotonic()
        while not sock.exists():
            assert server.poll() is None and time.monotonic() - t0 < 30, "the stand-in server did not start"
            time.sleep(0.05)
        launcher = subprocess.Popen([str(prefork.write_launcher(tmp_path / "bin", sock, Path("/bin/false")))])
        time.sleep(0.5)  # connected, waiting for the pid
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(30) == 7  # the child got the SIGTERM (its handler exits 7), the launcher survived
    finally:
        server.kill()
        server.wait(10)

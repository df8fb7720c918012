"""The ``fedlab`` script starts a simulated run's Ray while the CLI imports (``fedlab_app/ray_start.py``).

Checked: which command lines start Ray early; that the run takes the early instance over when it asks for
the same arguments and starts its own otherwise; that a configuration error through the script exits 2
with its message and leaves no Ray process; which instances start lean, and (slow) that a lean instance
lacks exactly the three services it skips and still runs actors; and (slow) a whole run through the script.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import strategies
from fedlab_app.ray_start import (
    AGENT_PORT_FILES,
    AGENT_STUB,
    NO_RAY_STRATEGIES,
    common_init_args,
    lean,
    plain_simulated_run,
    private_init_args,
    stub_agents,
)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = (sys.executable, "-c", "from fedlab_app.launch import main; main()")


@pytest.mark.parametrize("argv, early", [
    (["run"], True),
    (["run", "num_clients=20", "strategy=fedavg", "+seed=3", "verbose=false"], True),
    (["run", "--multirun", "num_clients=1,2"], False),  # a sweep: one Ray per job
    (["run", "num_clients=1,2"], False),
    (["run", "sim.ray_address=auto"], False),  # joins a cluster: Flower starts it
    (["run", "verbose=true"], False),  # Ray logs at INFO then
    (["run", "hydra.run.dir=x"], False),
    (["run", "--cfg", "job"], False),
    (["run", "strategy=centralized"], False),  # needs no Ray
    (["plot", "results/x"], False),
    ([], False),
])
def test_which_command_lines_start_ray_early(argv, early):
    assert plain_simulated_run(argv) is early


def test_the_strategies_that_need_no_ray_are_the_registrys():
    assert NO_RAY_STRATEGIES == {name for name, spec in strategies.REGISTRY.items()
                                 if spec.mode is not None and not spec.mode.uses_nodes}


def _ray_processes(temp: str) -> list[str]:
    """Command lines of the live processes that belong to the Ray instance whose temp dir is ``temp``."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if temp in cmd and "pytest" not in cmd:
            found.append(f"{proc.name} {cmd[:160]}")
    return found


def _no_ray_left(temp: str, timeout_s: float = 20.0) -> list[str]:
    """The Ray processes of ``temp`` still alive after up to ``timeout_s`` (killed ones take a moment to go)."""
    deadline = time.monotonic() + timeout_s
    while (left := _ray_processes(temp)) and time.monotonic() < deadline:
        time.sleep(0.25)
    return left


TAKEOVER = """
import json
from fedlab_app import ray_start
import ray

def session():
    return ray._private.worker._global_node.session_name

sessions = []
for verbose in (False, True):  # the early instance's arguments, then others (Ray logging at INFO)
    assert ray_start.start_early(["run", "rounds=1"])
    ray_start._early["ready"].wait()
    early = session()
    ray_start.start(ray_start.private_init_args(verbose=verbose))
    sessions.append([early, session()])
    assert not ray_start._early
    ray.shutdown()
print(json.dumps(sessions))
"""


@pytest.mark.slow
def test_a_run_takes_the_early_instance_over_when_its_arguments_match():
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit AF_UNIX
    try:
        proc = subprocess.run([sys.executable, "-c", TAKEOVER], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, "RAY_TMPDIR": temp})
        assert proc.returncode == 0, proc.stderr[-3000:]
        (early, same), (early2, other) = json.loads(proc.stdout.strip().splitlines()[-1])
        assert early == same  # taken over
        assert other != early2  # shut down, and a new one started
        assert _no_ray_left(temp) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow  # 8.5 s: kept out of the default suite's 5 minutes
def test_a_config_error_through_the_script_leaves_no_ray_process():
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        proc = subprocess.run([*LAUNCH, "run", "client.lr=-1"], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, "RAY_TMPDIR": temp})
        assert proc.returncode == 2
        assert "configuration error: client.lr=-1" in proc.stderr, proc.stderr[-2000:]
        assert _no_ray_left(temp) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_private_arguments_preload_the_client_app():
    args = private_init_args(verbose=False)
    assert args["address"] == "local" and args["num_cpus"] >= 1
    assert "fedlab_app.client_app" in args["_system_config"]["preload_python_modules"]


@pytest.mark.slow
def test_a_run_through_the_script_finishes(tmp_path):
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        proc = subprocess.run([*LAUNCH, "run", "rounds=2", "num_clients=4", "dataset.limit_train=800",
                               f"out_dir={tmp_path / 'run'}"], capture_output=True, text=True, timeout=300,
                              cwd=ROOT, env={**os.environ, "RAY_TMPDIR": temp})
        assert proc.returncode == 0, proc.stderr[-3000:]
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["rounds"] == 2
        assert len(list(Path(temp).glob("ray/session_2*"))) == 1  # one Ray instance: the early one, taken over
        assert _no_ray_left(temp) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ctrl_c_while_ray_starts_exits_130_and_leaves_no_ray_process(tmp_path):
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        proc = subprocess.Popen([*LAUNCH, "run", f"out_dir={tmp_path / 'run'}"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "RAY_TMPDIR": temp})
        time.sleep(1.0)  # Ray is starting (up after about 3 s)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err[-2000:]
        assert "fedlab: interrupted" in err and "Traceback" not in err
        assert _no_ray_left(temp) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_only_a_quiet_private_instance_is_lean(monkeypatch):
    monkeypatch.delenv("FEDLAB_RAY_LEAN", raising=False)
    assert lean(private_init_args(verbose=False))
    assert not lean(private_init_args(verbose=True))  # verbose: the workers' output reaches the terminal
    assert not lean({**common_init_args(False), "address": "auto"})  # a cluster is what it is
    monkeypatch.setenv("FEDLAB_RAY_LEAN", "0")
    assert not lean(private_init_args(verbose=False))


LEAN = """
import json, os, sys
from fedlab_app import ray_start
import ray

ray_start.init(ray_start.private_init_args(verbose=sys.argv[1] == "verbose"))

@ray.remote
def pid():
    return os.getpid()

assert ray.get(pid.remote()) != os.getpid()
temp = os.environ["RAY_TMPDIR"]
cmds = []
for proc in os.listdir("/proc"):
    try:
        cmd = open(f"/proc/{proc}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if temp in cmd or "ray::" in cmd:
        cmds.append(cmd)
ray.shutdown()
print(json.dumps(cmds))
"""

SKIPPED = ("autoscaler/_private/monitor.py", "_private/log_monitor.py", "dashboard/dashboard.py",
           "dashboard/agent.py", "runtime_env/agent/main.py")  # the last two stubbed: ray_agent_stub.sh


@pytest.mark.slow
@pytest.mark.parametrize("how", ["quiet", "verbose"])
def test_a_lean_instance_lacks_the_three_services_and_runs_tasks(how):
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    try:
        proc = subprocess.run([sys.executable, "-c", LEAN, how], capture_output=True, text=True, timeout=120,
                              cwd=ROOT, env={**os.environ, "RAY_TMPDIR": temp, "FEDLAB_RAY_LEAN": "1"})
        assert proc.returncode == 0, proc.stderr[-3000:]
        cmds = json.loads(proc.stdout.strip().splitlines()[-1])
        assert any("gcs_server" in c for c in cmds) and any("raylet" in c for c in cmds)
        present = {s for s in SKIPPED if any(s in c for c in cmds)}
        assert present == (set() if how == "quiet" else set(SKIPPED)), cmds
        stubs = [c for c in cmds if c.startswith("/bin/sh ") and "ray_agent_stub.sh" in c]
        assert len(stubs) == (2 if how == "quiet" else 0), cmds
        # the stubs, like every process of the instance, are gone once it is shut down
        assert _no_ray_left(temp) == []
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def test_the_stubs_write_the_port_files_ray_names():
    from ray._raylet import (
        DASHBOARD_AGENT_LISTEN_PORT_NAME,
        METRICS_AGENT_PORT_NAME,
        METRICS_EXPORT_PORT_NAME,
        RUNTIME_ENV_AGENT_PORT_NAME,
    )

    assert AGENT_PORT_FILES == {
        "--dashboard_agent_command=": (METRICS_AGENT_PORT_NAME, METRICS_EXPORT_PORT_NAME,
                                       DASHBOARD_AGENT_LISTEN_PORT_NAME),
        "--runtime_env_agent_command=": (RUNTIME_ENV_AGENT_PORT_NAME,),
    }


def test_stub_agents_rewrites_only_a_raylets_agent_commands():
    agent = subprocess.list2cmdline(["/usr/bin/python3", "/ray/dashboard/agent.py", "--node-id=ab12",
                                     "--gcs-address=1.2.3.4:5", "--session-dir=/tmp/ray/s 1", "--minimal"])
    raylet = ["/ray/raylet", "--node_id=ab12", f"--dashboard_agent_command={agent}",
              "--runtime_env_agent_command=/usr/bin/python3 main.py --node-id=ab12 --session-dir=/tmp/ray/s"]
    out = stub_agents(raylet)
    assert out[:2] == raylet[:2]
    assert out[2] == "--dashboard_agent_command=" + subprocess.list2cmdline(
        ["/bin/sh", AGENT_STUB, "metrics_agent_port,metrics_export_port,dashboard_agent_listen_port",
         "--node-id=ab12", "--session-dir=/tmp/ray/s 1"])
    assert out[3] == ("--runtime_env_agent_command=/bin/sh " + AGENT_STUB
                      + " runtime_env_agent_port --node-id=ab12 --session-dir=/tmp/ray/s")
    gcs = ["/ray/gcs_server", f"--dashboard_agent_command={agent}"]
    assert stub_agents(gcs) == gcs


def test_the_stub_writes_minus_one_and_ends_with_its_parent(tmp_path):
    """The stub's files hold -1 under Ray's names; it lives while its parent (the raylet) lives."""
    parent = subprocess.Popen(["/bin/sh", "-c", f'/bin/sh "{AGENT_STUB}" a_port,b_port --x=1 --node-id=n1 '
                               f'"--session-dir={tmp_path}" & wait'])
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "b_port_n1").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "a_port_n1").read_text() == "-1" and (tmp_path / "b_port_n1").read_text() == "-1"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a_port_n1", "b_port_n1"]  # no temporary left
        assert parent.poll() is None  # the stub still runs, so its parent still waits
        stub_pids = [p.name for p in Path("/proc").iterdir() if p.name.isdigit()
                     and _cmdline(p).startswith(b"/bin/sh\0" + AGENT_STUB.encode())
                     and str(tmp_path).encode() in _cmdline(p)]
    finally:
        parent.kill()  # the stub's parent dies (and is reaped): the stub ends within its 1 s poll
        parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in stub_pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(stub_pids) == 1 and not _running(stub_pids[0])


def _running(pid: str) -> bool:
    """Whether process ``pid`` exists and has not exited (an exited one not yet reaped is a zombie, state Z)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_the_stub_refuses_arguments_without_a_node_or_session(tmp_path):
    proc = subprocess.run(["/bin/sh", AGENT_STUB, "a_port", "--node-id=n1"], capture_output=True, text=True,
                          timeout=10)
    assert proc.returncode == 2 and "--session-dir=" in proc.stderr

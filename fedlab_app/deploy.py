"""``fedlab deploy``: the same app on a real SuperLink and SuperNodes, with TLS and node authentication.

A deployment directory (``--dir``, default ``.fedlab-deploy``) holds everything: ``certs/`` (a CA
and the SuperLink's certificate, made with ``cryptography``), ``keys/`` (one OpenSSH EC key pair per
SuperNode), ``flwr_home/config.toml`` (the ``fedlab`` connection ``flwr run`` uses), ``logs/`` and
``state.json`` (every process started, by PID, so ``down`` stops exactly those). With Flower 1.41 the
SuperLink serves its Fleet, Control and ServerAppIo APIs on one HTTPS port; each SuperNode needs its
own local port. A node whose public key was not registered is refused (``Failed to activate
SuperNode``). ``run`` composes the config as ``fedlab run`` does, passes it to ``flwr run`` as a TOML
file and reads the outcome from the run's ``summary.json`` (``flwr run`` exits 0 even when the run
failed): it exits non-zero unless the run finished.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from fedlab_app import flower_waits, prefork, trace
from fedlab_app.results import RunDir

DEFAULT_DIR = Path(".fedlab-deploy")
CONNECTION = "fedlab"
BIN = Path(sys.executable).parent  # flower-superlink, flower-supernode, flwr live beside this Python
SUPEREXEC_POLL_S = "0.1"  # how often a SuperNode's SuperExec asks for a task to start (Flower's: 1 s, per message)
# the SuperLink's SuperExec starts a ServerApp once per run, and its asking costs the SuperLink's CPU all run long
# (FEDLAB_SUPERLINK_EXEC_POLL_S overrides it: bench/bench_deploy.py --before)
SUPERLINK_EXEC_POLL_S = "1.0"
NODE_POLL_S = 0.2  # the longest wait in a SuperNode's loop (fedlab_app/flower_waits.py; Flower's own: 3 s)
PREFORK_BIN, PREFORK_SOCKET = "prefork-bin", "prefork.sock"  # start_prefork's launcher directory and socket


def make_certs(out: Path, hosts: list[str]) -> dict[str, Path]:
    """A CA (``ca.crt``) and a SuperLink certificate (``server.pem``/``server.key``) valid for ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedlab deployment CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    sans = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = {"ca": out / "ca.crt", "cert": out / "server.pem", "key": out / "server.key"}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    os.chmod(paths["key"], 0o600)
    return paths


def make_node_key(path: Path) -> tuple[Path, Path]:
    """An EC key pair in OpenSSH format (what Flower's SuperNode authentication reads): ``path``, ``path.pub``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path.parent.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    os.chmod(path, 0o600)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
    return path, pub


def flwr_env(d: Path) -> dict[str, str]:
    """Environment for every Flower process of deployment ``d`` (its own FLWR_HOME; no runtime installs). The
    SuperLink and SuperNodes start ``flower-superexec`` from PATH, and it starts ``flwr-clientapp`` from PATH:
    fedlab's launcher (``prefork-bin/``, :func:`start_prefork`) comes first when the deployment has one."""
    path = [str(BIN), os.environ.get("PATH", "")]
    if (d / PREFORK_BIN / "flwr-clientapp").exists():
        path.insert(0, str((d / PREFORK_BIN).resolve()))
    return {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": SUPEREXEC_POLL_S, "FEDLAB_REPLY_POLL_S": "0.1", **os.environ,
            "FLWR_HOME": str((d / "flwr_home").resolve()), "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": os.pathsep.join(path)}


def start_prefork(d: Path, wait: float = 60.0) -> subprocess.Popen:
    """Start deployment ``d``'s prefork server (``fedlab_app/prefork.py``: ClientApp processes forked warm,
    torch and Flower imported once) and write the ``flwr-clientapp`` launcher that SuperNodes started after
    it find first on their PATH; waits until it serves (a SuperNode started meanwhile would start cold)."""
    sock = (d / PREFORK_SOCKET).resolve()
    if len(str(sock)) > 100:  # Linux: sun_path holds 108 bytes
        raise ValueError(f"the prefork socket {sock} is longer than a Unix socket path may be (100 characters "
                         "here): choose a shorter --dir, or --cold")
    prefork.write_launcher(d / PREFORK_BIN, sock, BIN / "flwr-clientapp")
    proc = start_process(d, "prefork", [sys.executable, "-m", "fedlab_app.prefork", "serve", str(sock)])
    t0 = time.monotonic()
    while not sock.exists():
        if proc.poll() is not None or time.monotonic() - t0 > wait:
            raise RuntimeError(f"the prefork server did not start; see {d / 'logs' / 'prefork.log'}")
        time.sleep(0.1)
    return proc


def write_connection(d: Path, address: str, ca: Path | None) -> Path:
    """``flwr_home/config.toml`` with the ``fedlab`` connection (TLS with ``ca``, or insecure)."""
    home = d / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    tls = f'root-certificates = "{ca.resolve()}"' if ca else "insecure = true"
    path = home / "config.toml"
    path.write_text(f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{tls}\n')
    return path


def load_state(d: Path) -> dict:
    p = d / "state.json"
    return json.loads(p.read_text()) if p.exists() else {"processes": []}


def save_state(d: Path, state: dict) -> None:
    (d / "state.json").write_text(json.dumps(state, indent=2))


def process_env(d: Path, name: str) -> dict[str, str]:
    """The environment of deployment ``d``'s process ``name``: :func:`flwr_env`, and for the SuperLink its
    SuperExec's own interval (:data:`SUPERLINK_EXEC_POLL_S`; ``FEDLAB_SUPERLINK_EXEC_POLL_S`` overrides it)."""
    env = flwr_env(d)
    if name == "superlink":
        own = os.environ.get("FEDLAB_SUPERLINK_EXEC_POLL_S", SUPERLINK_EXEC_POLL_S)
        env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] = own
    return env


def start_process(d: Path, name: str, cmd: list[str]) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so its children stop with it), log to ``logs/<name>.log``, record its PID."""
    (d / "logs").mkdir(parents=True, exist_ok=True)
    log = open(d / "logs" / f"{name}.log", "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=process_env(d, name),
                            start_new_session=True)
    state = load_state(d)
    state["processes"].append({"name": name, "pid": proc.pid, "cmd": cmd})
    save_state(d, state)
    return proc


def wait_port(host: str, port: int, timeout: float = 60.0) -> None:
    """Wait until something listens on ``host:port``."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def flwr(d: Path, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    """Run the ``flwr`` CLI with deployment ``d``'s FLWR_HOME."""
    return subprocess.run([str(BIN / "flwr"), *args], env=flwr_env(d), capture_output=True, text=True, timeout=timeout)


def register(d: Path, pub: Path) -> None:
    """Register a SuperNode's public key with the SuperLink (only registered nodes may join)."""
    res = flwr(d, "supernode", "register", str(pub), CONNECTION)
    if res.returncode != 0:
        raise RuntimeError(f"registering {pub} failed: {res.stdout[-500:]} {res.stderr[-500:]}")


SUPERLINK_STATES = ("memory", "sqlite")  # where the SuperLink keeps nodes, runs and messages


def check_superlink_state(state: str) -> None:
    if state not in SUPERLINK_STATES:
        raise ValueError(f"SuperLink state {state!r}; allowed: {', '.join(SUPERLINK_STATES)}")


def start_superlink(d: Path, host: str, port: int, tls: bool, auth: bool, state: str = "memory") -> subprocess.Popen:
    """Start the SuperLink (certificates made on first use); writes the ``fedlab`` connection.

    ``state``: "memory", Flower's in-memory state (its default; a deployed round about 1 s faster here than with
    SQLite, ``results/bench/deploy_memory_state.json``), or "sqlite", a database in ``d`` that keeps the
    registered nodes and their ids across a restart. After a restart in memory, :func:`restart` registers the
    node keys again."""
    check_superlink_state(state)
    cmd = [str(BIN / "flower-superlink"), "--host", host, "--port", str(port)]
    ca = None
    if tls:
        certs = d / "certs"
        paths = ({"ca": certs / "ca.crt", "cert": certs / "server.pem", "key": certs / "server.key"}
                 if (certs / "ca.crt").exists() else make_certs(certs, [host, "localhost"]))
        cmd += ["--ssl-ca-certfile", str(paths["ca"]), "--ssl-certfile", str(paths["cert"]), "--ssl-keyfile", str(paths["key"])]
        ca = paths["ca"]
    else:
        cmd.append("--insecure")
    if auth:
        cmd.append("--enable-supernode-auth")
    cmd += ["--database", ":flwr-in-memory:" if state == "memory" else str((d / "superlink.db").resolve())]
    write_connection(d, f"{host}:{port}", ca)
    proc = start_process(d, "superlink", cmd)
    wait_port(host, port)
    return proc


def start_supernode(d: Path, superlink: str, partition: int, num_partitions: int, port: int, *, key: Path | None = None,
                    name: str | None = None, tls: bool = True, poll: float | None = NODE_POLL_S) -> subprocess.Popen:
    """Start a SuperNode told its shard by node config (``partition-id``, ``num-partitions``): Flower's
    ``flower-supernode``, its waits shortened (:mod:`fedlab_app.flower_waits`: idle polls every ``poll`` seconds,
    object pulls retried sooner), or exactly as Flower starts it when ``poll`` is None."""
    if poll is None:
        cmd = [str(BIN / "flower-supernode")]
    else:
        flower_waits.ShortSleeps(poll)  # a bad value fails here, not in the node's log
        cmd = [sys.executable, "-m", "fedlab_app.flower_waits", str(poll)]
    cmd += ["--superlink", superlink, "--port", str(port),
            "--node-config", f"partition-id={partition} num-partitions={num_partitions}"]
    cmd += ["--root-certificates", str((d / "certs" / "ca.crt").resolve())] if tls else ["--insecure"]
    if key is not None:
        cmd += ["--auth-supernode-private-key", str(key)]
    return start_process(d, name or f"supernode{partition}", cmd)


class AlreadyRunning(RuntimeError):
    """The deployment directory already has live processes (refused without touching them)."""


def up(d: Path, nodes: int, host: str = "127.0.0.1", port: int = 9300, tls: bool = True, auth: bool = True,
       warm: bool = True, poll: float | None = NODE_POLL_S, superlink_state: str = "memory") -> dict:
    """A local federation: one SuperLink and ``nodes`` SuperNodes (keys made and registered when ``auth``), whose
    ClientApp processes start warm (:func:`start_prefork`) unless ``warm`` is false (Flower's cold start), and
    which ask for work every ``poll`` seconds when idle (:func:`start_supernode`; None: Flower's own). The
    SuperLink keeps its state in ``superlink_state`` (:func:`start_superlink`)."""
    if poll is not None:
        flower_waits.ShortSleeps(poll)
    check_superlink_state(superlink_state)  # before anything starts
    d.mkdir(parents=True, exist_ok=True)
    if any(_alive(p["pid"]) for p in load_state(d)["processes"]):
        raise AlreadyRunning(f"{d} already runs processes; `fedlab deploy down --dir {d}` first")
    save_state(d, {"processes": [], "nodes": nodes, "address": f"{host}:{port}", "tls": tls, "auth": auth,
                   "superlink_state": superlink_state})
    (d / PREFORK_BIN / "flwr-clientapp").unlink(missing_ok=True)  # an earlier warm `up`'s launcher
    start_superlink(d, host, port, tls, auth, superlink_state)
    if warm:
        start_prefork(d)
    for i in range(nodes):
        key = None
        if auth:
            key, pub = make_node_key(d / "keys" / f"node{i}")
            register(d, pub)
        start_supernode(d, f"{host}:{port}", i, nodes, port + 1 + i, key=key, tls=tls, poll=poll)
    return load_state(d)


def restart(d: Path, wait: float = 60.0) -> list[str]:
    """Start again every process of deployment ``d`` that is no longer running (same command, same
    logs), the SuperLink first; returns their names.

    A SuperLink with its state in SQLite keeps the registered node keys and node ids: the SuperNodes, which retry on
    their own, carry on with it. One with its state in memory forgets them: its node keys are registered again here,
    and its SuperNodes, whose node ids it no longer knows (Flower's SuperNode exits when the SuperLink refuses its
    id), are restarted with it.
    """
    state = load_state(d)
    dead = [p for p in state["processes"] if not _alive(p["pid"])]
    forgetful = any(p["name"] == "superlink" and ":flwr-in-memory:" in p["cmd"] for p in dead)
    if forgetful:  # its SuperNodes' ids are gone with it
        for p in state["processes"]:
            if p["name"].startswith("supernode") and p not in dead:
                stop_process(p["pid"])
                dead.append(p)
    state["processes"] = [p for p in state["processes"] if p not in dead]
    save_state(d, state)
    dead.sort(key=lambda p: (p["name"] != "superlink", p["name"] != "prefork", p["name"]))
    for p in dead:
        start_process(d, p["name"], p["cmd"])
        if p["name"] == "superlink":
            host, port = state["address"].rsplit(":", 1)
            wait_port(host, int(port), wait)
            if forgetful and state.get("auth"):  # register the node keys again
                for pub in sorted((d / "keys").glob("node*.pub")):
                    register(d, pub)
    return [p["name"] for p in dead]


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, exited: reaped (not left a zombie)
            return False
    except ChildProcessError:  # not our child
        pass
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _gone(pid: int, wait: float) -> bool:
    """Whether ``pid`` exits within ``wait`` seconds (reaped if it is our child)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < wait:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not our child (started by an earlier `fedlab deploy up`)
            if not _alive(pid):
                return True
        time.sleep(0.2)
    return False


def stop_process(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group of ``pid`` (its SuperExec and ClientApps included), SIGKILL after ``grace`` s."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
            os.killpg(pid, signal.SIGCONT)  # a paused group (bench/bench_deploy.py) handles its SIGTERM now
        except (ProcessLookupError, PermissionError):  # gone, or no longer ours
            return
        if _gone(pid, wait):
            return


def down(d: Path) -> list[int]:
    """Stop every process this deployment started (SuperNodes first), by PID; returns the PIDs."""
    procs = load_state(d)["processes"]
    for p in sorted(procs, key=lambda p: p["name"] == "superlink"):
        stop_process(p["pid"])
    state = load_state(d)
    state["processes"] = []
    save_state(d, state)
    return [p["pid"] for p in procs]


def superexec_alive(d: Path) -> bool | None:
    """Whether the SuperLink of local deployment ``d`` still has its SuperExec, the child process that starts each
    run's ServerApp; None where that cannot be told (no SuperLink of ours running, no Linux ``/proc``).

    Flower 1.41's SuperExec gives up for good when a TLS handshake with its SuperLink times out (its retry policy
    takes the ``_ssl.c`` in "The handshake operation timed out" for a certificate error, ``flwr/supercore/retry/
    http_retry.py``) and exits; the SuperLink goes on without it, and every run submitted after that waits for a
    ServerApp that never starts. A SuperLink stalled longer than the handshake's timeout (a paused or overloaded
    machine; ``bench/bench_deploy.py`` pausing idle federations) leaves it so: ``superlink.log`` then says "Giving
    up reconnection".
    """
    procs = [p for p in load_state(d)["processes"] if p["name"] == "superlink"]
    if not procs or not _alive(procs[0]["pid"]) or not Path("/proc/self/stat").exists():
        return None
    pid = procs[0]["pid"]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = trace._stat(entry.name)[:2]
            if int(ppid) == pid and state != "Z" and b"flower-superexec" in (entry / "cmdline").read_bytes():
                return True
        except (OSError, ValueError, IndexError):  # gone meanwhile
            continue
    return False


def superlink_report(d: Path) -> str:
    """One line for ``fedlab deploy status``: where the SuperLink keeps its state, and whether its SuperExec runs."""
    alive = superexec_alive(d)
    superexec = ("running" if alive else "cannot tell" if alive is None
                 else "EXITED: no run will start; `fedlab deploy run` restarts the SuperLink first")
    where = load_state(d).get("superlink_state", "sqlite")  # federations made before the choice had SQLite
    return f"SuperLink state: {where}; its SuperExec (starts each run's ServerApp): {superexec}"


def heal_superlink(d: Path, wait: float = 60.0) -> bool:
    """Restart the SuperLink of local deployment ``d`` if its SuperExec has exited (:func:`superexec_alive`), as
    :func:`restart` restarts a killed one (with its SuperNodes when its state is in memory). True if it was."""
    if superexec_alive(d) is not False:
        return False
    sl = next(p for p in load_state(d)["processes"] if p["name"] == "superlink")
    print(f"fedlab deploy: the SuperLink's SuperExec (which starts each run's ServerApp) has exited, see "
          f"{d / 'logs' / 'superlink.log'}; restarting the SuperLink", file=sys.stderr, flush=True)
    stop_process(sl["pid"])
    restart(d, wait)
    t0 = time.monotonic()
    while superexec_alive(d) is False and time.monotonic() - t0 < wait:
        time.sleep(0.2)
    return True


# how long `flwr run` may go on before the ServerApp has written the run's config.yaml (it does so first)
START_TIMEOUT_S = float(os.environ.get("FEDLAB_DEPLOY_START_TIMEOUT_S", "300"))
STARTER_CHECK_S = 5.0  # while a run waits for its ServerApp: how often to look whether the SuperExec still runs


def run(d: Path, run_config: dict, app_dir: Path, timeout: float = 3600.0,
        start_timeout: float | None = None) -> dict:
    """``flwr run <app> fedlab --run-config <toml> --stream`` against deployment ``d``; the run's summary.json.

    A run whose ServerApp has not written ``config.yaml`` in ``out_dir`` within ``start_timeout`` seconds
    (default ``START_TIMEOUT_S``) is stopped and reported as failed, naming the logs to read: one such run waited
    20 minutes before any round (``results/bench/deploy_overlap.log``). A run the SuperLink had accepted (``flwr
    run`` printed its id) is also stopped there (``flwr stop``), so that it does not start later, unwatched."""
    start_timeout = START_TIMEOUT_S if start_timeout is None else start_timeout
    out_dir = Path(str(run_config["out_dir"]))
    cfg_path = d / "run_config.toml"
    cfg_path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in run_config.items()))  # JSON scalars are TOML
    summary_path = out_dir / "summary.json"
    heal_superlink(d)  # else the run would wait for a ServerApp that no process will start
    t0 = time.perf_counter()
    started = time.time()
    proc = subprocess.Popen([str(BIN / "flwr"), "run", str(app_dir), CONNECTION, "--run-config", str(cfg_path),
                             "--stream"], env=flwr_env(d), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=app_dir)
    try:
        out, why = _wait_for(proc, t0, timeout, start_timeout, out_dir / "config.yaml", started, d / "logs",
                             lambda: superexec_alive(d) is False)
    except BaseException:  # Ctrl-C: flwr run does not outlive this process
        proc.kill()
        proc.wait()
        raise
    if why and (run_id := submitted_run(out)) is not None:  # it may still be queued on the SuperLink: stop it there
        why += f"; {stop_run(d, run_id, app_dir)}"
    said, rc = out + (f"\nfedlab: {why}" if why else ""), proc.returncode
    (d / "logs").mkdir(parents=True, exist_ok=True)
    (d / "logs" / "flwr_run.log").write_text(said)
    if _fresh(summary_path, started):  # not a summary of an earlier run
        summary = RunDir(out_dir).read_summary()
    else:
        summary = {"status": "failed", "error": f"the run wrote no summary.json in {out_dir} (flwr run exit code {rc}): "
                                                f"{said[-1500:]}", "out_dir": str(out_dir)}
    summary["deploy_wall_s"] = time.perf_counter() - t0
    return summary


STARTED_RUN = re.compile(r"Successfully started run (\d+)")  # flwr 1.41's `flwr run` (flwr/cli/run/run.py)


def submitted_run(output: str) -> int | None:
    """The run id that ``flwr run``'s ``output`` says the SuperLink accepted, or None."""
    found = STARTED_RUN.search(output)
    return int(found.group(1)) if found else None


def stop_run(d: Path, run_id: int, app_dir: Path) -> str:
    """``flwr stop <run_id>`` on deployment ``d``'s SuperLink (a stopped ``flwr run`` leaves its run there, queued
    or running); what happened, in words."""
    try:
        res = subprocess.run([str(BIN / "flwr"), "stop", str(run_id), CONNECTION], env=flwr_env(d), cwd=app_dir,
                             capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"could not stop run {run_id} on the SuperLink ({e}): `flwr stop {run_id} {CONNECTION}`"
    if res.returncode != 0:
        return (f"`flwr stop {run_id}` failed (exit {res.returncode}: {(res.stdout + res.stderr).strip()[-300:]}); "
                f"stop it with `flwr stop {run_id} {CONNECTION}`")
    return f"run {run_id} stopped on the SuperLink (`flwr stop`)"


def _wait_for(proc: subprocess.Popen, t0: float, timeout: float, start_timeout: float, started_file: Path,
              since: float, logs: Path, no_starter: Callable[[], bool] = lambda: False) -> tuple[str, str]:
    """Wait for ``flwr run`` to end: ``(its output, "")``, or stop it and say why: it ran past ``timeout``,
    ``started_file`` was not written within ``start_timeout`` seconds, or, before it was, ``no_starter()`` said
    (twice, ``STARTER_CHECK_S`` apart) that nothing is left to start the ServerApp."""
    looked, dead_since = 0.0, None
    while True:
        try:
            out, err = proc.communicate(timeout=0.5)  # the output read so far is kept across the retries
            return (out or "") + (err or ""), ""
        except subprocess.TimeoutExpired:
            waited = time.perf_counter() - t0
            why = ""
            if waited > timeout:
                why = f"flwr run did not end within {timeout:.0f} s"
            elif waited > start_timeout and not _fresh(started_file, since):
                why = (f"the ServerApp did not start within {start_timeout:g} s (no {started_file.name} in "
                       f"{started_file.parent}); see {logs} (superlink.log, node*.log)")
            elif waited - looked >= STARTER_CHECK_S and not _fresh(started_file, since):
                looked = waited
                dead_since = (dead_since or waited) if no_starter() else None
                if dead_since is not None and waited - dead_since >= STARTER_CHECK_S:
                    why = (f"the SuperLink's SuperExec, which starts the ServerApp, has exited (see {logs}/superlink"
                           ".log: 'Giving up reconnection'); the next `fedlab deploy run` restarts the SuperLink")
            if why:
                proc.terminate()
                try:
                    out, err = proc.communicate(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    out, err = proc.communicate()
                return (out or "") + (err or ""), why


def _fresh(path: Path, since: float) -> bool:
    """``path`` exists and was written at or after ``since`` (a time.time())."""
    try:
        return path.stat().st_mtime >= since
    except FileNotFoundError:
        return False

"""Warm ClientApp processes for deployed SuperNodes: Flower's own ``flwr-clientapp``, forked from a process
that has already imported torch and Flower.

Flower 1.41 runs every message in a fresh ``flwr-clientapp`` process: the SuperNode's SuperExec starts one
per task (``--isolation subprocess`` and ``process`` alike; its warm executors exist only for Kubernetes and
not for ClientApps), and each pays the Python start and the imports of torch and Flower's runtime (about
2.4 s of CPU, 1.95 s of it torch). A *prefork server* (:func:`serve`) imports those once and waits on a
Unix socket. ``fedlab deploy up`` puts a small ``flwr-clientapp`` launcher (:func:`write_launcher`) first
on the SuperNodes' PATH, so the SuperExec starts it where it would start Flower's. The launcher
(:func:`launch`) hands its arguments, environment, working directory and standard streams to the server,
which forks; the child runs Flower's ``flwr-clientapp`` entry point with them: the same Runtime API
handshake, FAB install, ClientApp load and reply, in a process that starts warm. The launcher waits for
the child, passes SIGINT and SIGTERM on, and exits with its status.

What the server holds when it forks: third-party modules (:data:`PRELOAD`) and, once a child has loaded a
ClientApp from an installed FAB, that app's module imported from the same installed directory
(:func:`_warm_app`; a child whose run brings another FAB forgets it and Flower loads its own, so the code that
runs is always the run's FAB's), one thread (numpy's OpenBLAS pool shuts down and
restarts around a fork), no connection and no torch computation (OpenMP's thread pool is not fork-safe).
When the server is not running, the launcher runs Flower's ``flwr-clientapp`` itself: a cold start, as
without it. The launcher imports only this module and ``fedlab_app.trace`` (standard library only).
"""

from __future__ import annotations

import importlib
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from fedlab_app import trace

# torch._dynamo: torch imports it on the first optimizer a process builds (1.3-1.5 s per deployed message,
# measured with py-spy: most of a cold ClientApp's "training")
PRELOAD = ("numpy", "torch", "torch.nn.functional", "torch.optim", "torch._dynamo", "flwr.app", "flwr.clientapp",
           "flwr.supernode.cli.flwr_clientapp")
TARGET = "flwr.supernode.cli.flwr_clientapp:flwr_clientapp"  # Flower's own `flwr-clientapp` entry point
REUSE_FAB = "FEDLAB_REUSE_FAB"  # "0" in a SuperNode's environment: its ClientApps install the FAB as Flower does
WARM_APP = "FEDLAB_WARM_APP"  # "0" in a SuperNode's environment: its ClientApps import the app themselves
WAITS = "fedlab_app.flower_waits"  # retry_object_pulls_sooner, applied before the first fork
_LEN = struct.Struct("!Q")  # the request's length, sent with the launcher's stdin, stdout and stderr
_PID = struct.Struct("!q")  # the child's pid, then its exit status, to the launcher


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("the other side closed the connection")
        buf += chunk
    return buf


def _entry(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def _run_child(conn: socket.socket, fds: list[int], request: dict, target: str, report: int | None = None) -> int:
    """In the forked child: take the launcher's streams, environment, directory and arguments; run ``target``;
    ``report``: where to write the directory of the app Flower loaded (a pipe to the server)."""
    for i, fd in enumerate(fds):
        os.dup2(fd, i)
        os.close(fd)
    conn.close()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = list(request["argv"])
    warm = target == TARGET and os.environ.get(WARM_APP, "1") != "0"
    # fedlab's own modules as the server imported them: the ClientApp's come from the FAB, as Flower loads them;
    # those of the app the server imported from an installed FAB stay only where _use_warm_app checks them
    _forget(set(_fedlab_modules()) - set(_WARM["modules"] if warm else ()))
    if not warm:
        _forget(_WARM["modules"])
        if _WARM["dir"] in sys.path:
            sys.path.remove(_WARM["dir"])
    if target == TARGET and os.environ.get(REUSE_FAB, "1") != "0":
        _reuse_installed_fab()
    if warm:
        _use_warm_app(report)
    if trace.enabled():
        trace.mark("clientapp", "started", launcher=request.get("launcher"))
        if target == TARGET:
            _trace_clientapp()
    try:
        code = _entry(target)()
    except SystemExit as e:
        code = e.code
    except BaseException:  # noqa: BLE001 - report it as Python would, then exit non-zero
        traceback.print_exc()
        code = 1
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    return code or 0


_WARM: dict = {"dir": None, "modules": ()}  # the installed app whose ClientApp module this server imported
_WARM_FAILED: set[str] = set()  # app directories whose import failed here: not tried again


def _fedlab_modules() -> list[str]:
    root = Path(__file__).resolve().parents[1]
    own = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}  # fedlab_app, clients, strategies, ...
    return [m for m in sys.modules if m.split(".")[0] in own]


def _forget(names) -> None:
    for name in names:
        sys.modules.pop(name, None)


def _warm_app(app_dir: Path) -> bool:
    """In the server: import the ClientApp module of the app installed at ``app_dir`` (its ``pyproject.toml``
    names it), from there, as Flower's loader would; children forked after it start with it imported. Replaces
    the app imported before. Only modules loaded from ``app_dir`` count as the app's (third-party modules it
    imports stay, as the preloaded ones do). False, and nothing kept, if the import fails."""
    import tomllib

    app_dir = Path(app_dir)
    try:
        conf = tomllib.loads((app_dir / "pyproject.toml").read_text())
        module = conf["tool"]["flwr"]["app"]["components"]["clientapp"].partition(":")[0]
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        print(f"prefork: no ClientApp to import in {app_dir}: {e}", file=sys.stderr, flush=True)
        _WARM_FAILED.add(str(app_dir))
        return False
    _forget([*_WARM["modules"], *_fedlab_modules()])
    if _WARM["dir"] in sys.path:
        sys.path.remove(_WARM["dir"])
    _WARM.update(dir=None, modules=())
    sys.path.insert(0, str(app_dir))
    try:
        importlib.import_module(module)
    except BaseException:  # noqa: BLE001 - even SystemExit: the server goes on; the children import it themselves
        traceback.print_exc()
        ok = False
    else:
        ok = True
    inside = [name for name, m in list(sys.modules.items())
              if str(getattr(m, "__file__", "") or "").startswith(str(app_dir) + os.sep)]
    if not ok:
        _forget(inside)
        if str(app_dir) in sys.path:
            sys.path.remove(str(app_dir))
        _WARM_FAILED.add(str(app_dir))
        return False
    _WARM.update(dir=str(app_dir), modules=tuple(sorted(inside)))
    print(f"prefork: imported {module} from {app_dir} ({len(inside)} modules)", flush=True)
    return True


def _use_warm_app(report: int | None) -> None:
    """In a child: Flower's ClientApp loader finds the app the server imported (:func:`_warm_app`) when the run's
    FAB is that app's (the same installed directory, named by the FAB's hash); otherwise those modules are
    forgotten first and Flower imports the app itself. The directory loaded goes to ``report``, so the server
    imports that app for the children after this one."""
    from flwr.common.config import get_project_dir
    from flwr.supernode.runtime import run_clientapp as rc

    make = rc.get_load_client_app_fn

    def make_loader(*a, **k):
        load = make(*a, **k)

        def loader(fab_id: str, fab_version: str, fab_hash: str):
            app_dir = str(get_project_dir(fab_id, fab_version, fab_hash))
            if _WARM["dir"] is not None and _WARM["dir"] != app_dir:
                _forget(_WARM["modules"])
                if _WARM["dir"] in sys.path:
                    sys.path.remove(_WARM["dir"])
            app = load(fab_id, fab_version, fab_hash)
            if report is not None:
                try:
                    os.write(report, app_dir.encode())
                except OSError:
                    pass
            return app
        return loader

    rc.get_load_client_app_fn = make_loader


def _reuse_installed_fab() -> None:
    """In this child, Flower's per-message FAB install returns the app directory that an earlier message of
    the same FAB installed, without unpacking and hashing every file again (0.09 s a message in
    ``results/bench/deploy_trace.json``).

    Flower's own ``install_from_fab`` unpacks the FAB into a temporary directory, checks each file's hash, and
    then, finding ``<FLWR_HOME>/apps/<publisher>.<name>.<version>.<hash>`` already there, returns that
    directory unchanged. Here the SHA-256 of the FAB's bytes is computed as Flower computes it and compared
    with the hash the run names; the directory named by both is returned when it holds the app's
    ``pyproject.toml``. Anything else (a first message, another FAB) goes to Flower's install."""
    import hashlib

    from flwr.common.config import get_project_dir
    from flwr.supernode.runtime import run_clientapp as rc

    pull, install = rc.pull_task_input, rc.install_from_fab
    seen: dict = {}

    def pull_noted(*a, **k):
        out = pull(*a, **k)
        seen["run"] = out[2]
        return out

    def install_or_reuse(fab_file, *a, **k):
        run = seen.get("run")
        if isinstance(fab_file, bytes) and run is not None and not a and set(k) <= {"skip_prompt"}:
            digest = hashlib.sha256(fab_file).hexdigest()
            if digest == run.fab_hash:
                path = get_project_dir(run.fab_id, run.fab_version, digest)
                if (path / "pyproject.toml").is_file():
                    return path
        return install(fab_file, *a, **k)

    rc.pull_task_input, rc.install_from_fab = pull_noted, install_or_reuse


def _trace_clientapp() -> None:
    """Mark (``fedlab_app/trace.py``) the steps of Flower's ``run_clientapp`` in this child: task pulled, FAB
    installed, app loaded, reply pushed."""
    from flwr.supernode.runtime import run_clientapp as rc

    about: dict = {}
    pull, install, loader, push = rc.pull_task_input, rc.install_from_fab, rc.get_load_client_app_fn, rc.push_message

    def after(f, what, learn=False):
        def g(*a, **k):
            out = f(*a, **k)
            if learn:
                about.update(trace.about(out[0]))
            trace.mark("clientapp", what, **about)
            return out
        return g

    rc.pull_task_input = after(pull, "task pulled", learn=True)
    rc.install_from_fab = after(install, "fab installed")
    rc.get_load_client_app_fn = lambda *a, **k: after(loader(*a, **k), "app loaded")
    rc.push_message = after(push, "reply pushed")


def serve(sock_path: Path, preload: tuple[str, ...] = PRELOAD, target: str = TARGET) -> None:
    """Import ``preload``, then fork a child per launcher that connects to ``sock_path``; runs until SIGTERM."""
    for name in preload:
        importlib.import_module(name)
    # the launcher runs this file without site-packages, so Flower-facing code is imported here, by name
    if target == TARGET and len(importlib.import_module(WAITS).retry_object_pulls_sooner()) < 2:
        # a SuperNode creates a message's task before it has pulled the message's objects, so a ClientApp that
        # starts warm asks for them early and met Flower's 1 s first retry (py-spy: 1.2 s of a warm 1.65 s start)
        print("prefork: Flower's object pulls keep their own retry waits (settings not found)",
              file=sys.stderr, flush=True)
    sock_path = Path(sock_path)
    sock_path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(64)
    stop = False

    def _stop(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    children: dict[int, socket.socket] = {}  # child pid -> its launcher's connection
    reports: dict[int, bytes] = {}  # a child's report pipe -> what it wrote so far (see _use_warm_app)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    print(f"prefork: ready on {sock_path} (pid {os.getpid()}, preloaded {', '.join(preload) or 'nothing'})",
          flush=True)
    try:
        while not stop:
            for key, _ in sel.select(timeout=0.05):
                if key.fileobj is not server:  # a child's report: the app it loaded, whole once the child is done
                    fd = key.fileobj
                    data = os.read(fd, 4096)
                    if data:
                        reports[fd] += data
                        continue
                    sel.unregister(fd)
                    os.close(fd)
                    app_dir = reports.pop(fd).decode(errors="replace")
                    if app_dir and app_dir != _WARM["dir"] and app_dir not in _WARM_FAILED:
                        try:
                            _warm_app(Path(app_dir))
                        except Exception:  # noqa: BLE001 - a warm import is an optimization: serve on without it
                            traceback.print_exc()
                    continue
                conn, _ = server.accept()
                try:
                    head, fds, _, _ = socket.recv_fds(conn, _LEN.size, 3)
                    head += _recv_exact(conn, _LEN.size - len(head))
                    request = json.loads(_recv_exact(conn, _LEN.unpack(head)[0]))
                except (OSError, ValueError, struct.error) as e:
                    print(f"prefork: bad request: {e}", file=sys.stderr, flush=True)
                    conn.close()
                    continue
                sys.stdout.flush()
                sys.stderr.flush()
                report_r, report_w = os.pipe() if target == TARGET else (None, None)
                pid = os.fork()
                if pid == 0:  # the child never returns into this loop
                    sel.close()
                    server.close()
                    for c in children.values():
                        c.close()
                    for fd in [*reports, report_r]:
                        if fd is not None:
                            os.close(fd)
                    code = 1
                    try:
                        code = _run_child(conn, fds, request, target, report_w)
                    finally:
                        for stream in (sys.stdout, sys.stderr):
                            try:
                                stream.flush()
                            except (OSError, ValueError):
                                pass
                        os._exit(code)
                for fd in fds:
                    os.close(fd)
                if report_r is not None:
                    os.close(report_w)
                    reports[report_r] = b""
                    sel.register(report_r, selectors.EVENT_READ)
                conn.sendall(_PID.pack(pid))
                children[pid] = conn
            _reap(children)
    finally:
        server.close()
        sock_path.unlink(missing_ok=True)
        for pid in children:  # stopping: the ClientApps it started stop too
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


def _reap(children: dict[int, socket.socket]) -> None:
    """Tell each finished child's launcher its exit status."""
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        conn = children.pop(pid, None)
        if conn is not None:
            try:
                conn.sendall(_PID.pack(os.waitstatus_to_exitcode(status)))
            except OSError:
                pass
            conn.close()


def launch(argv: list[str], sock_path: str, fallback: str) -> int:
    """The ``flwr-clientapp`` launcher: run ``argv`` in a child of the prefork server at ``sock_path`` and return
    its exit status; without a server, exec ``fallback`` (Flower's ``flwr-clientapp``) with ``argv``."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(sock_path)
    except OSError:
        conn.close()
        os.execv(fallback, [fallback, *argv])
    if trace.enabled():  # started by the node's SuperExec, a child of the SuperNode
        trace.mark("launcher", "launched", t=trace.process_start(), node=trace.parent(os.getppid()))
    request = json.dumps({"argv": [fallback, *argv], "env": dict(os.environ), "cwd": os.getcwd(),
                          "launcher": os.getpid()}).encode()
    child: list[int] = []  # the child's pid, once the server has said it
    early: list[int] = []  # signals that came before: passed on as soon as the child is known

    def relay(sig, _frame):
        if not child:
            early.append(sig)
            return
        try:
            os.kill(child[0], sig)
        except ProcessLookupError:
            pass

    # before the request: the child may run (and be signalled through this launcher) before its pid arrives here
    signal.signal(signal.SIGINT, relay)
    signal.signal(signal.SIGTERM, relay)
    socket.send_fds(conn, [_LEN.pack(len(request))], [0, 1, 2])
    conn.sendall(request)
    try:
        (pid,) = _PID.unpack(_recv_exact(conn, _PID.size))
    except ConnectionError:
        print("flwr-clientapp launcher: the prefork server closed the connection", file=sys.stderr)
        return 1
    child.append(pid)
    for sig in early:
        relay(sig, None)
    try:
        (code,) = _PID.unpack(_recv_exact(conn, _PID.size))
    except ConnectionError:  # the server stopped: wait for the child itself
        while _alive(pid):
            time.sleep(0.2)
        return 1
    return code if code >= 0 else 128 - code


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def write_launcher(bin_dir: Path, sock_path: Path, fallback: Path) -> Path:
    """Write ``bin_dir/flwr-clientapp``: the launcher, run by this Python without site-packages (``-S``: it
    needs the standard library only, and starts in milliseconds)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "flwr-clientapp"
    root = Path(__file__).resolve().parents[1]
    path.write_text(f"#!{sys.executable} -S\n"
                    "# fedlab's flwr-clientapp launcher (fedlab_app/prefork.py): Flower's, forked warm\n"
                    f"import sys\nsys.path.insert(0, {str(root)!r})\nfrom fedlab_app.prefork import launch\n"
                    f"sys.exit(launch(sys.argv[1:], {str(sock_path)!r}, {str(fallback)!r}))\n")
    path.chmod(0o755)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "serve":
        print("usage: python -m fedlab_app.prefork serve SOCKET", file=sys.stderr)
        return 2
    serve(Path(args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())

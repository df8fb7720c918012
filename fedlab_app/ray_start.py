"""Starting the private Ray instance of a simulated run first, so that its workers load while the CLI does.

``fedlab run`` spent its first 2 s importing torch, Flower and the strategies; ``ray.init`` then took 3 s,
most of it waiting for Ray's own processes (GCS, raylet, API server, monitors), and only then did Ray's
worker processes start and import torch and Flower for 2-3 s more. One after the other: 8 s before round 1.

``start_early`` (the ``fedlab`` script, ``fedlab_app/launch.py``, calls it before it imports the CLI) runs
``ray.init`` in a thread when the command line is one plain simulated run (``fedlab run key=value ...``: no
sweep, no Hydra flag, no Ray cluster named), with the arguments a private instance gets
(``private_init_args``). The thread lives as long as the process: Ray's processes die with the thread that
started them. Ray's workers import the ClientApp as soon as they start (``WORKER_PRELOAD``), beside the
CLI's imports. ``start`` (``fedlab_app/simulate.py``) takes the instance over when the run asks for exactly
these arguments; otherwise (``verbose=true`` or ``sim.ray_address`` in a config file) it shuts it down and
starts its own, and a run that needs no Ray (``strategy=centralized`` from a config file) shuts it down
(``discard``). At exit an instance
nobody took over is shut down, or dies with the process while it is still starting, so that a configuration
error leaves no Ray process behind.

This module imports only the standard library at its top: it runs before torch is imported.
"""

from __future__ import annotations

import atexit
import copy
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading

# what every worker of a private instance imports as soon as it starts, before Flower asks for an actor
# (Ray's ``preload_python_modules``; Flower's app loader then finds the ClientApp in ``sys.modules``), first
# Flower's simulation package without the server's engine (``fedlab_app/actor_package.py``)
WORKER_PRELOAD = ("fedlab_app.actor_package", "flwr.simulation.ray_transport.ray_actor", "fedlab_app.client_app")

_early: dict = {}  # "ready" (an Event), "args", "error" of the instance start_early started; emptied when taken


def common_init_args(verbose: bool) -> dict:
    """``ray.init`` arguments of every simulated run, on a private instance or a cluster."""
    return {"include_dashboard": False, "logging_level": logging.INFO if verbose else logging.ERROR}


def private_init_args(verbose: bool) -> dict:
    """``ray.init`` arguments of a private instance with this machine's cores.

    ``address="local"``: always a new instance, even where ``ray start`` left a cluster (or its address
    file, /tmp/ray/ray_current_cluster) behind; ``ray.init()`` would otherwise try to join it and refuse
    ``num_cpus``.
    """
    return {**common_init_args(verbose), "address": "local", "num_cpus": os.cpu_count() or 1,
            "_system_config": {"preload_python_modules": list(WORKER_PRELOAD)}}


def actors_at_once(cpus_per_client: float) -> int:
    """How many simulated nodes the private Ray instance (:func:`private_init_args`: this machine's cores) runs at
    once, each asking ``cpus_per_client`` CPUs."""
    return max(1, int((os.cpu_count() or 1) // cpus_per_client))


def lean(init_args: dict) -> bool:
    """Whether a Ray instance started with ``init_args`` does without Ray's services that a quiet private
    instance never uses: a private instance (``address="local"``) of a run that is not verbose, unless the
    environment says ``FEDLAB_RAY_LEAN=0`` (Ray's full set, e.g. should a Ray release change what this skips)."""
    return (os.environ.get("FEDLAB_RAY_LEAN", "1") != "0" and init_args.get("address") == "local"
            and init_args.get("logging_level") == logging.ERROR)


def init(init_args: dict) -> None:
    """``ray.init(**init_args)``; a :func:`lean` instance starts without three of Ray's Python services, and
    with stubs in place of two more (:func:`stub_agents`).

    ``ray.init`` starts, whatever its arguments, the autoscaler monitor, the log monitor and the API server
    (the dashboard head, with ``include_dashboard=False`` in its minimal form). A private instance with a
    fixed set of cores never autoscales, nobody asks its API server, and the log monitor only copies the
    workers' stdout and stderr to this terminal, which a run that is not verbose does not want (errors of
    the ClientApp still come back in Flower's replies; ``verbose=true`` keeps all three). Together they
    held 170 MB of the default run's 1.5 GB PSS and started three more Python interpreters during the
    launch (``results/bench/memory.json``). Ray's own switches for the first two (``RayParams.no_monitor``,
    ``include_log_monitor``) are not arguments of ``ray.init``, so they are set on the parameters it
    builds, and the head's ``start_api_server`` is skipped while ``ray.init`` runs
    (``tests/test_ray_start.py`` checks which processes a lean instance has and that a run completes).
    """
    import ray  # heavy: imported only when simulating

    args = copy.deepcopy(init_args)  # ray.init adds its own keys to _system_config
    if not lean(init_args):
        ray.init(**args)
        return
    from ray._private import node, parameter, services

    params, start_api, start_process = parameter.RayParams, node.Node.start_api_server, services.start_ray_process

    class LeanParams(params):
        def __init__(self, *a, **kw) -> None:
            kw.setdefault("no_monitor", True)
            kw.setdefault("include_log_monitor", False)
            super().__init__(*a, **kw)

    def start_ray_process(command, *a, **kw):
        return start_process(stub_agents(command), *a, **kw)

    parameter.RayParams, node.Node.start_api_server = LeanParams, lambda self, **kw: None
    services.start_ray_process = start_ray_process
    try:
        ray.init(**args)
    finally:
        parameter.RayParams, node.Node.start_api_server = params, start_api
        services.start_ray_process = start_process


# the raylet's options that hold its two agents' command lines, and the port files each agent writes
# (Ray's METRICS_AGENT_PORT_NAME, METRICS_EXPORT_PORT_NAME, DASHBOARD_AGENT_LISTEN_PORT_NAME and
# RUNTIME_ENV_AGENT_PORT_NAME; tests/test_ray_start.py checks them against ray._raylet's)
AGENT_PORT_FILES = {
    "--dashboard_agent_command=": ("metrics_agent_port", "metrics_export_port", "dashboard_agent_listen_port"),
    "--runtime_env_agent_command=": ("runtime_env_agent_port",),
}
AGENT_STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_agent_stub.sh")


def stub_agents(command: list[str]) -> list[str]:
    """A raylet's ``command`` with its dashboard agent and runtime-env agent replaced by
    ``ray_agent_stub.sh`` (any other process's command is returned as it is).

    The raylet starts both agents itself, waits for the port files they write, and exits when either
    exits. In a private instance they serve nothing fedlab uses: the dashboard agent (already in Ray's
    ``--minimal`` form here: no metrics, no HTTP server; it writes -1 to its port files) answers the state
    API and job submission, the runtime-env agent builds runtime environments, and fedlab's workers take
    their environment from this process's (``start``: no runtime environment is ever asked for). Two Python
    interpreters that held 126 MB of the default run's PSS and took a core during Ray's start. The stub, a
    ``/bin/sh`` script, writes -1 ("not in use") to the same files and waits for the raylet to end.
    """
    if not command or os.path.basename(command[0]) != "raylet":
        return command
    out = []
    for arg in command:
        for option, names in AGENT_PORT_FILES.items():
            if arg.startswith(option):
                keep = [a for a in shlex.split(arg[len(option):]) if a.startswith(("--node-id=", "--session-dir="))]
                arg = option + subprocess.list2cmdline(["/bin/sh", AGENT_STUB, ",".join(names), *keep])
        out.append(arg)
    return out


def set_worker_env() -> None:
    """The environment Ray's processes inherit: this process's ``sys.path`` as ``PYTHONPATH`` (no runtime
    environment is given, see ``start``) and Flower's and Ray's switches."""
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (*sys.path, os.environ.get("PYTHONPATH", "")) if p)
    os.environ.setdefault("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# strategies whose mode runs in the server process, without Flower or Ray (``uses_nodes`` False in
# ``strategies.REGISTRY``; ``tests/test_ray_start.py`` checks the two agree)
NO_RAY_STRATEGIES = frozenset({"centralized"})


def plain_simulated_run(argv: list[str]) -> bool:
    """Whether ``fedlab ARGV`` is one simulated run whose Ray arguments the command line already tells:
    ``run`` followed only by ``key=value`` overrides, none of them a Hydra flag, a sweep or a Ray cluster."""
    if not argv or argv[0] != "run":
        return False
    for arg in argv[1:]:
        key, eq, value = arg.partition("=")
        key = key.lstrip("+~")
        if not eq or arg.startswith("-") or "," in value or key.startswith("hydra") or "ray_address" in key:
            return False
        if key == "verbose" and value.lower() not in ("false", "0"):  # Ray logs at INFO then
            return False
        if key == "strategy" and value in NO_RAY_STRATEGIES:
            return False
    return True


def start_early(argv: list[str]) -> bool:
    """Start a private Ray instance in a background thread if ``argv`` is a plain simulated run."""
    if _early or not plain_simulated_run(argv):
        return False
    args = private_init_args(verbose=False)
    set_worker_env()
    _early.update(args=args, error=None)

    def start_ray() -> None:
        try:
            init(args)
        except Exception as exc:  # start() then starts Ray itself, and raises what it raises there
            _early["error"] = exc
        finally:
            ready.set()
        # Ray's processes die with the thread that started them (Linux's parent-death signal, Ray's
        # fate sharing): this thread lives as long as the process
        threading.Event().wait()

    ready = threading.Event()
    _early["ready"] = ready
    # what ray.init does in the main thread, and cannot do in this one: SIGTERM exits through atexit
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
    threading.Thread(target=start_ray, name="fedlab-ray-start", daemon=True).start()
    atexit.register(_at_exit)
    return True


def wait_until_up() -> None:
    """Wait until the early start has returned (Ray up, or failed: ``start`` then tries again)."""
    if _early:
        _early["ready"].wait()


def _take() -> dict | None:
    """Wait for the early start; the arguments of the instance it left running, or None."""
    if not _early:
        return None
    _early["ready"].wait()
    args, error = _early["args"], _early["error"]
    _early.clear()
    ray = sys.modules.get("ray")
    return args if error is None and ray is not None and ray.is_initialized() else None


def discard() -> None:
    """Shut down an early instance that no run took over (a no-op once ``start`` has taken it)."""
    if _take() is not None:
        sys.modules["ray"].shutdown()


def _at_exit() -> None:
    """At exit, an instance nobody took over: shut down if it is up; if it is still starting, exit at once:
    its processes die with this one (they get Linux's parent-death signal, Ray's fate sharing), so a
    configuration error is reported without waiting for Ray."""
    if _early and _early["ready"].is_set():
        discard()


def start(init_args: dict) -> None:
    """Make a private Ray instance with ``init_args`` run, before Flower would: the early one when its
    arguments are these, else a new one.

    Flower's RayBackend starts Ray with ``runtime_env={"env_vars": {"PYTHONPATH": ...}}``, and Ray cannot give
    a job with a runtime environment the worker processes it starts ahead of time: the actors wait for new
    ones (0.95 s against 0.24 s for two actors here). Started here, with this process's ``sys.path`` as
    ``PYTHONPATH`` in the environment that Ray's processes inherit, the workers start with Ray; Flower finds
    Ray running, skips its own ``ray.init``, and its backend still shuts Ray down at the end.
    """
    early = _take()
    if early is not None and early == init_args:
        return
    if early is not None:
        sys.modules["ray"].shutdown()
    set_worker_env()
    init(init_args)

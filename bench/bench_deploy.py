"""A deployed FedAvg round against a simulated one on the same work; where a deployed round's time goes.

Same work on both sides: 3 clients of Fashion-MNIST (``dataset.limit_train=1500``), one client per
message (``sim.clients_per_worker=1``), 5 rounds, seed 0, evaluation every round. Deployed: ``fedlab
deploy up --nodes 3`` on 127.0.0.1 (TLS + SuperNode authentication), then ``fedlab deploy run``;
simulated: ``fedlab run``. The runs alternate (deployed, simulated, deployed, ...) so that a change
of machine load hits both. A round's time is the difference of consecutive ``wall_time_s`` in
``metrics.csv``; the steady rounds are 2..R (round 1 also discovers the nodes); medians over all reps. The
overhead is also taken rep by rep (median deployed round minus median simulated round of the same rep), with a 95%
Student-t interval over the reps (``overhead_by_rep``). A deployed run that fails is run once more and named in
``failed_runs_run_again``. Every
federation but the one running is paused (SIGSTOP): idle, its SuperLink answering its nodes' polls would take
CPU from the one measured. A pause can kill a federation's SuperLink SuperExec (Flower gives up after a TLS handshake
that the pause made time out), which once left a run waiting 20 minutes for its ServerApp; ``fedlab deploy run``
now restarts such a SuperLink before it submits (``deploy.heal_superlink``), and the script waits 2 s after resuming
a federation so that a dying SuperExec is seen.

The per-message timeline comes from the ClientApps themselves (``FEDLAB_TIMELINE``, see
``fedlab_app/client_app.py``): process start -> module imported (Python, Flower's runtime, the FAB
install, torch and fedlab) -> handler -> data and model loaded -> trained; ``gap`` is the time
from a node's reply in round r to the start of its process in round r+1 (Flower's transport and
polling, the server's aggregation, evaluation and checkpoint).

The default federation is ``fedlab deploy up``'s: ClientApp processes forked warm from fedlab's prefork server
(``fedlab_app/prefork.py``), SuperNodes that ask for work every 0.2 s when idle and retry object pulls sooner
(``fedlab_app/flower_waits.py``), arrays sent flat (``fedlab_app/wire.py``). Each flag adds a federation, run in
turn with the others (see ``VARIANTS``): ``--cold``, Flower's own SuperNode and wire (``flwr-clientapp`` as a
fresh Python per message, plain ``flower-supernode``, arrays one by one); ``--per-array``, the default but arrays
one by one; ``--flower-node-poll``, the default but plain ``flower-supernode``; ``--baseline``, Flower's own
polling everywhere (also its SuperExec's 1 s and a ServerApp asking for replies every 3 s); ``--before``, the
default without the four changes the trace found; ``--in-turn``, the default with each round recorded before the next
one is sent (``FEDLAB_OVERLAP_EVAL=0``).

Usage: ``.venv/bin/python bench/bench_deploy.py [--reps 2] [--rounds 5] [--cold] [--per-array] [--flower-node-poll]
[--baseline] [--before] [--in-turn] [--trace] [--out results/bench/deploy.json]``
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fedlab_app import deploy, stats, trace

FEDLAB = str(Path(sys.executable).parent / "fedlab")
TIMELINE = "FEDLAB_TIMELINE"  # fedlab_app.client_app.TIMELINE (not imported here: it loads torch)
WORK = ["num_clients=3", "dataset.limit_train=1500", "sim.clients_per_worker=1", "seed=0"]


def free_port_block(n: int) -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            p = s.getsockname()[1]
        if p + n < 65000 and all(socket.socket().connect_ex(("127.0.0.1", p + i)) != 0 for i in range(n + 1)):
            return p
    raise RuntimeError("no free port block")


def round_times(out: Path) -> list[float]:
    """Seconds of rounds 2..R (differences of consecutive ``wall_time_s``)."""
    with open(out / "metrics.csv") as f:
        walls = [float(r["wall_time_s"]) for r in csv.DictReader(f)]
    return [b - a for a, b in itertools.pairwise(walls)]


def run(cmd: list[str], out: Path, env: dict | None = None) -> list[float]:
    res = subprocess.run(cmd + [f"out_dir={out}"], cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env, check=False)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    if res.returncode != 0 or summary.get("status") != "finished":
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stdout[-2000:]} {res.stderr[-2000:]}")
    return round_times(out)


def deployed_run(d: Path, rounds: int, out: Path, failures: list[str]) -> list[float]:
    """``fedlab deploy run`` on federation ``d``; a failed run (e.g. one whose ServerApp never started, stopped by
    ``fedlab deploy run``'s start timeout) is noted in ``failures`` and run once more in a fresh out_dir."""
    cmd = [FEDLAB, "deploy", "run", "--dir", str(d), *WORK, f"rounds={rounds}"]
    try:
        return run(cmd, out)
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        failures.append(f"{out.name}: {str(e)[-600:]}")
        print(f"{out.name} failed, running it again: {str(e)[-300:]}", file=sys.stderr, flush=True)
        return run(cmd, out.with_name(out.name + "_again"))


def per_rep(rounds: list[float], reps: int) -> list[float]:
    """Median of each rep's steady rounds (``rounds`` holds the reps' rounds in turn, equally many each)."""
    k = len(rounds) // reps
    return [statistics.median(rounds[i * k:(i + 1) * k]) for i in range(reps)]


def overhead(deployed: list[float], simulated: list[float], reps: int) -> dict:
    """Deployed minus simulated round, rep by rep (the two ran back to back), with a 95% Student-t interval."""
    diffs = [a - b for a, b in zip(per_rep(deployed, reps), per_rep(simulated, reps), strict=True)]
    st = stats.summarize(diffs)
    return {"per_rep_s": [round(x, 3) for x in diffs], "mean_s": round(st.mean, 3),
            "ci95_s": [round(st.low, 3), round(st.high, 3)] if st.n >= 2 else None}


def timeline(paths: list[Path]) -> dict:
    """Median seconds per phase of the steady rounds' (>= 2) training messages (see the module docstring)."""
    phases: dict[str, list[float]] = {}
    for p in paths:
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.exists() else []
        for r in rows:
            if r["round"] < 2:
                continue
            fresh = r["nth"] == 1  # a process's first message pays its start (a Ray actor: only once per run)
            for k, v in (("process start -> module imported", r["loaded"] - r["start"] if fresh else 0.0),
                         ("module imported -> handler", r["handler"] - r["loaded"] if fresh else 0.0),
                         ("data + model load", r["data"] - r["handler"]), ("training", r["trained"] - r["data"])):
                phases.setdefault(k, []).append(v)
        ends: dict[int, float] = {}
        starts: dict[int, float] = {}
        spawns: dict[int, float] = {}  # a fresh process's start (deployed: every message)
        for r in rows:
            ends[r["round"]] = max(ends.get(r["round"], 0.0), r["trained"])
            starts[r["round"]] = min(starts.get(r["round"], float("inf")), r["handler"])
            if r["nth"] == 1:
                spawns[r["round"]] = min(spawns.get(r["round"], float("inf")), r["start"])
        phases.setdefault("last reply (r) -> first handler (r+1)", []).extend(
            starts[r + 1] - ends[r] for r in sorted(ends) if r + 1 in starts)
        phases.setdefault("last reply (r) -> first process start (r+1)", []).extend(
            spawns[r + 1] - ends[r] for r in sorted(ends) if r + 1 in spawns and r >= 1)
    return {k: round(statistics.median(v), 3) for k, v in phases.items() if v}


def hold(d: Path, sig: int) -> None:
    """Pause (SIGSTOP) or resume (SIGCONT) every process of federation ``d`` (each started in its own process
    group): an idle federation's SuperLink, asked by its nodes several times a second, would take CPU from
    the one measured."""
    try:
        procs = deploy.load_state(d).get("processes", [])
    except (OSError, ValueError):
        return
    for p in procs:
        try:
            os.killpg(p["pid"], sig)
        except (ProcessLookupError, PermissionError):
            pass


def journey_medians(paths: list[Path]) -> dict:
    """Medians over the steady rounds' (>= 2) training messages of each stage's time after the server's send
    (``after_send``) and of each step from the stage before (``step``); see ``fedlab_app/trace.py``."""
    rows = [r for p in paths if p.exists() for r in trace.journeys(trace.read(p)) if r["round"] >= 2]  # int rounds
    labels = [label for label, *_ in trace.STAGES]
    after = {k: [r[k] for r in rows if r[k] is not None] for k in labels}
    steps = {f"{a} -> {b}": [r[b] - r[a] for r in rows if r[a] is not None and r[b] is not None]
             for a, b in itertools.pairwise(labels)}
    med = lambda d: {k: round(statistics.median(v), 3) for k, v in d.items() if v}  # noqa: E731
    return {"messages": len(rows), "after_send": med(after), "step": med(steps)}


FLOWER_WIRE = {"FEDLAB_FLAT_WIRE": "0"}  # the ServerApp sends arrays one by one (fedlab_app/wire.py)
BEFORE = {"FEDLAB_SUPERLINK_EXEC_POLL_S": "0.1", "FEDLAB_REUSE_FAB": "0", "FEDLAB_WARM_APP": "0",
          "FEDLAB_SERVER_PULL_RETRY": "0"}
VARIANTS = {  # name -> (flag, help, deploy.up keyword arguments, environment of its processes)
    "before": ("--before", "also the default federation as it was before the traced changes (SuperLink's SuperExec "
               "asking every 0.1 s, ClientApps unpacking the FAB and importing the app each message, the ServerApp's "
               "object pulls retrying after Flower's 1 s)", {}, BEFORE),
    "cold": ("--cold", "also Flower's own SuperNode: ClientApps start cold, plain flower-supernode (3 s idle wait, "
             "1 s first object retry), arrays one by one", {"warm": False, "poll": None}, FLOWER_WIRE),
    "per_array": ("--per-array", "also the default federation sending arrays one by one (FEDLAB_FLAT_WIRE=0)",
                  {}, FLOWER_WIRE),
    "flower_node_poll": ("--flower-node-poll", "also a warm federation of plain flower-supernode processes "
                         "(3 s idle wait, 1 s first object retry)", {"poll": None}, {}),
    "memory_state": ("--memory-state", "also the default federation with the SuperLink's state in memory (Flower's "
                     "InMemoryLinkState; the default since results/bench/deploy_memory_state.json, where this "
                     "variant was measured against SQLite)", {"superlink_state": "memory"}, {}),
    "sqlite_state": ("--sqlite-state", "also the default federation with the SuperLink's state in SQLite (fedlab's "
                     "default before results/bench/deploy_memory_state.json)", {"superlink_state": "sqlite"}, {}),
    "in_turn": ("--in-turn", "also the default federation with each round recorded before the next one is sent "
                "(FEDLAB_OVERLAP_EVAL=0; fedlab_app/overlap.py)", {}, {"FEDLAB_OVERLAP_EVAL": "0"}),
    "flower_polling": ("--baseline", "also Flower's own polling everywhere (plain flower-supernode, SuperExec 1 s, "
                       "ServerApp replies 3 s), cold ClientApps, arrays one by one", {"warm": False, "poll": None},
                       {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "1.0", "FEDLAB_REPLY_POLL_S": "3", **FLOWER_WIRE}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    for flag, help_, _, _ in VARIANTS.values():
        ap.add_argument(flag, action="store_true", help=help_ + ", interleaved")
    ap.add_argument("--trace", action="store_true", help="each deployed federation also writes FEDLAB_TRACE "
                    "(fedlab_app/trace.py): each training message's journey, stage by stage")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "deploy.json")
    a = ap.parse_args()
    chosen = [v for v, (flag, *_) in VARIANTS.items() if getattr(a, flag[2:].replace("-", "_"))]
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # killed: the federations still go down (finally)
    tmp = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    os.environ["FLWR_HOME"] = str(tmp / "flwr_home")
    os.environ[TIMELINE] = str(tmp / "timeline.jsonl")  # the SuperNodes' ClientApps append here
    dirs = {"deployed": tmp / "federation", **{v: tmp / f"federation_{v}" for v in chosen}}
    traced = {v: tmp / f"trace_{v}.jsonl" for v in dirs} if a.trace else {}  # each federation's trace file
    t0 = time.perf_counter()
    os.environ.update({trace.ENV: str(traced["deployed"])} if a.trace else {})
    deploy.up(dirs["deployed"], 3, port=free_port_block(4))
    up_s = time.perf_counter() - t0
    for v in chosen:
        kwargs, env = VARIANTS[v][2], {**VARIANTS[v][3], **({trace.ENV: str(traced[v])} if a.trace else {})}
        os.environ.update(env)  # the federation's processes keep the environment they started with
        deploy.up(dirs[v], 3, port=free_port_block(4), **kwargs)
        for k in env:
            del os.environ[k]
    os.environ.pop(trace.ENV, None)
    rounds: dict[str, list[float]] = {"deployed": [], "simulated": [], **{v: [] for v in chosen}}
    failures: list[str] = []  # deployed runs that failed and were run again (see deployed_run)
    try:
        for d in dirs.values():
            hold(d, signal.SIGSTOP)
        for rep in range(a.reps):
            for v in ["deployed", "simulated", *chosen]:
                if v == "simulated":
                    rounds[v] += run([FEDLAB, "run", *WORK, f"rounds={a.rounds}"], tmp / f"simulated{rep}",
                                     {**os.environ, TIMELINE: str(tmp / f"simulated{rep}.jsonl")})
                    continue
                hold(dirs[v], signal.SIGCONT)
                time.sleep(2.0)  # a SuperExec whose handshake the pause timed out exits now: deploy.run then heals it
                try:
                    rounds[v] += deployed_run(dirs[v], a.rounds, tmp / f"{v}{rep}", failures)
                finally:
                    hold(dirs[v], signal.SIGSTOP)
                os.replace(tmp / "timeline.jsonl", tmp / f"{v}{rep}.jsonl")
                if v in traced:
                    os.replace(traced[v], tmp / f"trace_{v}{rep}.jsonl")
            last = ", ".join(f"{v} {[round(x, 2) for x in r[-(a.rounds - 1):]]}" for v, r in rounds.items())
            print(f"rep {rep}: {last}, load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        for d in dirs.values():  # every federation running again first, then each taken down
            hold(d, signal.SIGCONT)
        for d in dirs.values():
            try:
                deploy.down(d)
            except Exception as e:  # noqa: BLE001 - take the others down too
                print(f"could not take {d} down: {e}", file=sys.stderr)
    med = {v: statistics.median(r) for v, r in rounds.items()}
    res = {"work": WORK + [f"rounds={a.rounds}"], "reps": a.reps, "steady_rounds": f"2..{a.rounds}",
           "deployed_round_s": round(med["deployed"], 3), "simulated_round_s": round(med["simulated"], 3),
           "overhead_s": round(med["deployed"] - med["simulated"], 3),
           "overhead_by_rep": overhead(rounds["deployed"], rounds["simulated"], a.reps),
           "failed_runs_run_again": failures,
           "deployed_rounds_s": [round(x, 3) for x in rounds["deployed"]],
           "simulated_rounds_s": [round(x, 3) for x in rounds["simulated"]],
           "deploy_up_s": round(up_s, 1),
           "timeline_median_s": {"deployed": timeline([tmp / f"deployed{r}.jsonl" for r in range(a.reps)]),
                                 "simulated": timeline([tmp / f"simulated{r}.jsonl" for r in range(a.reps)])},
           **{k: val for v in chosen for k, val in (
               (f"{v}_round_s", round(med[v], 3)), (f"{v}_rounds_s", [round(x, 3) for x in rounds[v]]),
               (f"{v}_overhead_by_rep", overhead(rounds[v], rounds["simulated"], a.reps)),
               (f"timeline_{v}_median_s", timeline([tmp / f"{v}{r}.jsonl" for r in range(a.reps)])))},
           **({"trace_median_s": {v: journey_medians([tmp / f"trace_{v}{r}.jsonl" for r in range(a.reps)])
                                  for v in traced}} if a.trace else {}),
           "node_poll_s": deploy.NODE_POLL_S,
           "superexec_poll_s": deploy.flwr_env(dirs["deployed"]).get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL"),
           "superlink_exec_poll_s":
               deploy.process_env(dirs["deployed"], "superlink")["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"],
           "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                       "python": platform.python_version()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

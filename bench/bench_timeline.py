"""Where a simulated round's time goes: the server's steps, timed, beside each training message's timeline.

Runs ``fedlab run rounds=R [overrides]`` in a child process whose ServerApp has timers around its steps (wall
seconds and the server thread's CPU seconds): the mode's round, the exchange with the nodes (``send`` and
``recv`` as the counting grid sends and gets the replies), the gossip maths, the evaluation, the checkpoint.
The workers write their own timeline (``FEDLAB_TIMELINE``, ``fedlab_app/client_app.py``): each training
message's handler start, data loaded and reply built, and the handler thread's CPU seconds. Per steady
round (2..R) it reports:

- ``to_first_handler``: from the server's send to the first worker's handler (Flower's and Ray's delivery);
- ``worker_phase``: from the send to the last reply back at the server;
- ``last_reply_to_server``: from the last worker's reply built to the server having it;
- ``between_exchanges``: from the replies back to the next round's send (the server's own work meanwhile), and
  ``between_exchanges_steps``: the wall seconds the timed steps spent in it, round by round;
- ``handler_cpu_s``: each training message's handler, its thread's CPU seconds (against ``handler_s``, its wall);
- each timed step's wall and CPU seconds per round.

It measures one run, so it locates time; it does not compare versions (use ``bench_code_ab.py`` for that).

    python bench/bench_timeline.py --rounds 6 strategy=dpsgd strategy.matrix=exponential num_clients=256 \\
        client.local_steps=5 strategy.node_eval_samples=0            # -> results/bench/timeline.json
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = {  # module -> (attribute path, label)
    "strategies.gossip_mode": [("GossipMode.round", "round (gossip)"), ("send_stacked", "exchange (gossip)")],
    "strategies.gossip_stacked": [("mix", "mix"), ("local_update", "local update"), ("debias", "debias")],
    "strategies.gossip": [("consensus", "consensus"), ("consensus_distance", "consensus distance")],
    "strategies.sync": [("SyncMode.round", "round (sync)"), ("send_packed", "exchange (sync)")],
    "fedlab_app.recorder": [("Recorder.end_of_round", "end of round"), ("CentralEvaluator.__call__", "evaluation"),
                            ("Recorder._complete_round", "round's record (evaluation, row, checkpoint; overlapped "
                                                         "with the next exchange unless FEDLAB_OVERLAP_EVAL=0)")],
    "fedlab_app.results": [("RunDir.save_checkpoint", "checkpoint (bytes; written in the background)")],
}


def _child(events: str, argv: list[str]) -> None:
    """In the child: put the timers in, then run the ``fedlab`` script with ``argv``."""
    import importlib

    calls: list[tuple[str, float, float, float]] = []  # (label, start (Unix time), wall, thread CPU) of every call

    def timed(owner, name: str, label: str) -> None:
        f = getattr(owner, name)

        @functools.wraps(f)
        def g(*a, **k):
            t0, t, c = time.time(), time.perf_counter(), time.thread_time()
            try:
                return f(*a, **k)
            finally:
                calls.append((label, t0, time.perf_counter() - t, time.thread_time() - c))
        setattr(owner, name, g)

    for mod_name, steps in STEPS.items():
        mod = importlib.import_module(mod_name)
        for path, label in steps:
            *owner_path, name = path.split(".")
            owner = functools.reduce(getattr, owner_path, mod)
            timed(owner, name, label)
    from fedlab_app import comm

    send = comm.CountingGrid.send_and_receive

    def send_and_receive(self, *a, **k):
        t = time.time()
        out = send(self, *a, **k)
        with open(events, "a") as f:
            f.write(json.dumps({"send": t, "recv": time.time()}) + "\n")
        return out

    comm.CountingGrid.send_and_receive = send_and_receive
    import atexit

    atexit.register(lambda: Path(events + ".steps").write_text(json.dumps({"calls": calls})))
    from fedlab_app.launch import main

    sys.argv = ["fedlab", *argv]
    main()


def _steps_within(calls: list, t0: float, t1: float) -> dict[str, float]:
    """Wall seconds per step label that the timed calls spent within [t0, t1) (a call that spans the window's
    edge, as the mode's whole round does, counts only its part inside)."""
    out: dict[str, float] = collections.defaultdict(float)
    for label, start, wall, _ in calls:
        inside = min(start + wall, t1) - max(start, t0)
        if inside > 0:
            out[label] += inside
    return {k: round(v, 4) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "timeline.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="fedlab run overrides")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, ["run", *args.overrides])
    tmp = Path(tempfile.mkdtemp(prefix="bench-timeline-"))
    events, workers = str(tmp / "server.jsonl"), str(tmp / "workers.jsonl")
    env = {**os.environ, "FEDLAB_TIMELINE": workers, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--child", events, "--", f"rounds={args.rounds}", f"out_dir={tmp / 'run'}",
           *args.overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not Path(events).exists():
        raise SystemExit(f"fedlab run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    ex = [json.loads(line) for line in Path(events).read_text().splitlines()]
    msgs = [json.loads(line) for line in Path(workers).read_text().splitlines()] if Path(workers).exists() else []
    steps = json.loads(Path(events + ".steps").read_text())
    train = [e for e in ex if e["recv"] - e["send"] > 0]  # one exchange per round (the query at the start aside)
    train = train[-args.rounds:]
    per_round = []
    for r, e in enumerate(train, start=1):
        mine = [m for m in msgs if m["round"] == r]
        nxt = train[r]["send"] if r < len(train) else None
        per_round.append({
            "round": r, "worker_phase": e["recv"] - e["send"],
            "to_first_handler": min((m["handler"] for m in mine), default=e["send"]) - e["send"],
            "last_reply_to_server": e["recv"] - max((m["trained"] for m in mine), default=e["recv"]),
            "between_exchanges": None if nxt is None else nxt - e["recv"],
            # the server's timed steps between this round's replies and the next send (wall seconds)
            "between_exchanges_steps": None if nxt is None else _steps_within(steps["calls"], e["recv"], nxt),
            "messages": len(mine), "handler_s": [m["trained"] - m["handler"] for m in mine],
            "handler_cpu_s": [m.get("cpu") for m in mine]})
    steady = per_round[1:]

    def med(key: str) -> float | None:
        vals = [p[key] for p in steady if p[key] is not None]
        return statistics.median(vals) if vals else None

    n = len(train)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])  # label -> wall, CPU of its calls
    for label, _, wall, cpu in steps["calls"]:
        totals[label][0] += wall
        totals[label][1] += cpu
    res = {"what": "one `fedlab run`: the server's timed steps (seconds per round, wall and server-thread CPU) and "
                   "each round's exchange with the workers (their own timeline)",
           "command": "python bench/bench_timeline.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "steady_medians_s": {k: med(k) for k in ("to_first_handler", "worker_phase", "last_reply_to_server",
                                                    "between_exchanges")},
           "steps_per_round_s": {k: {"wall": w / n, "cpu": c / n}
                                 for k, (w, c) in sorted(totals.items(), key=lambda kv: -kv[1][0])},
           "rounds": per_round}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({"steady_medians_s": res["steady_medians_s"], "steps_per_round_s": res["steps_per_round_s"]},
                     indent=1))


if __name__ == "__main__":
    main()

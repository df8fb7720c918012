"""A deployed FedAvg round against a simulated one on the same work; where a deployed round's time goes.

Same work on both sides: 3 clients of Fashion-MNIST (``dataset.limit_train=1500``), one client per
message (``sim.clients_per_worker=1``), 5 rounds, seed 0, evaluation every round. Deployed: ``fedlab
deploy up --nodes 3`` on 127.0.0.1 (TLS + SuperNode authentication), then ``fedlab deploy run``;
simulated: ``fedlab run``. The runs alternate (deployed, simulated, deployed, ...) so that a change
of machine load hits both. A round's time is the difference of consecutive ``wall_time_s`` in
``metrics.csv``; the steady rounds are 2..R (round 1 also discovers the nodes); medians over all reps.

The per-message timeline comes from the ClientApps themselves (``FEDLAB_TIMELINE``, see
``fedlab_app/client_app.py``): process start -> module imported (Python, Flower's runtime, the FAB
install, torch and fedlab) -> handler -> data and model loaded -> trained; ``gap`` is the time
from a node's reply in round r to the start of its process in round r+1 (Flower's transport and
polling, the server's aggregation, evaluation and checkpoint).

``--cold`` adds a federation whose ClientApp processes start cold (``fedlab deploy up --cold``: Flower's
``flwr-clientapp`` as a fresh Python per message) beside the default, warm one (forked from fedlab's prefork
server, ``fedlab_app/prefork.py``), run in turn with the others. ``--baseline`` adds one with Flower's own
polling too (its SuperExec asks for tasks every 1 s, the ServerApp for replies every 3 s:
``FEDLAB_REPLY_POLL_S=3``; cold).

Usage: ``.venv/bin/python bench/bench_deploy.py [--reps 2] [--rounds 5] [--cold] [--baseline] [--out results/bench/deploy.json]``
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from fedlab_app import deploy

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", action="store_true",
                    help="also a federation with Flower's own polling (SuperExec 1 s, replies every 3 s), interleaved")
    ap.add_argument("--cold", action="store_true", help="also a federation whose ClientApps start cold, interleaved")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "deploy.json")
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_deploy_"))
    os.environ["FLWR_HOME"] = str(tmp / "flwr_home")
    os.environ[TIMELINE] = str(tmp / "timeline.jsonl")  # the SuperNodes' ClientApps append here
    d, base, cold_d = tmp / "federation", tmp / "federation_flower_polls", tmp / "federation_cold"
    t0 = time.perf_counter()
    deploy.up(d, 3, port=free_port_block(4))
    up_s = time.perf_counter() - t0
    if a.baseline:  # the same federation with Flower's own polling: SuperExec 1 s, replies every 3 s
        os.environ.update(FLWR_SUPEREXEC_TASK_POLL_INTERVAL="1.0", FEDLAB_REPLY_POLL_S="3")
        deploy.up(base, 3, port=free_port_block(4), warm=False)
        del os.environ["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"], os.environ["FEDLAB_REPLY_POLL_S"]
    if a.cold:
        deploy.up(cold_d, 3, port=free_port_block(4), warm=False)
    deployed, baseline, simulated, cold = [], [], [], []
    try:
        for rep in range(a.reps):
            deployed += run([FEDLAB, "deploy", "run", "--dir", str(d), *WORK, f"rounds={a.rounds}"], tmp / f"deploy{rep}")
            os.replace(tmp / "timeline.jsonl", tmp / f"deploy{rep}.jsonl")
            simulated += run([FEDLAB, "run", *WORK, f"rounds={a.rounds}"], tmp / f"sim{rep}",
                             {**os.environ, TIMELINE: str(tmp / f"sim{rep}.jsonl")})
            if a.cold:
                cold += run([FEDLAB, "deploy", "run", "--dir", str(cold_d), *WORK, f"rounds={a.rounds}"],
                            tmp / f"cold{rep}")
                os.replace(tmp / "timeline.jsonl", tmp / f"cold{rep}.jsonl")
            if a.baseline:
                baseline += run([FEDLAB, "deploy", "run", "--dir", str(base), *WORK, f"rounds={a.rounds}"],
                                tmp / f"base{rep}")
                os.replace(tmp / "timeline.jsonl", tmp / f"base{rep}.jsonl")
            print(f"rep {rep}: deployed {deployed[-(a.rounds - 1):]}, simulated {simulated[-(a.rounds - 1):]}, "
                  f"cold {cold[-(a.rounds - 1):]}, Flower's polling {baseline[-(a.rounds - 1):]}, "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    finally:
        deploy.down(d)
        if a.baseline:
            deploy.down(base)
        if a.cold:
            deploy.down(cold_d)
    res = {"work": WORK + [f"rounds={a.rounds}"], "reps": a.reps, "steady_rounds": f"2..{a.rounds}",
           "deployed_round_s": round(statistics.median(deployed), 3),
           "simulated_round_s": round(statistics.median(simulated), 3),
           "overhead_s": round(statistics.median(deployed) - statistics.median(simulated), 3),
           "deployed_rounds_s": [round(x, 3) for x in deployed], "simulated_rounds_s": [round(x, 3) for x in simulated],
           "deploy_up_s": round(up_s, 1), "timeline_median_s": {"deployed": timeline([tmp / f"deploy{r}.jsonl" for r in range(a.reps)]),
                                 "simulated": timeline([tmp / f"sim{r}.jsonl" for r in range(a.reps)])},
           **({"cold_round_s": round(statistics.median(cold), 3), "cold_rounds_s": [round(x, 3) for x in cold],
               "timeline_cold_median_s": timeline([tmp / f"cold{r}.jsonl" for r in range(a.reps)])} if cold else {}),
           **({"flower_polling_round_s": round(statistics.median(baseline), 3),
               "flower_polling_rounds_s": [round(x, 3) for x in baseline],
               "timeline_flower_polling_median_s": timeline([tmp / f"base{r}.jsonl" for r in range(a.reps)])}
              if baseline else {}),
           "superexec_poll_s": deploy.flwr_env(d).get("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", "1.0 (Flower's default)"),
           "machine": {"cpus": os.cpu_count(), "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                       "python": platform.python_version()}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

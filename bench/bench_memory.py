"""Peak memory (PSS) of a fedlab run's whole process tree, and which processes hold it.

Launches ``fedlab run rounds=R [overrides]`` as a user would, samples every process of its tree every
0.25 s (``/proc/<pid>/smaps_rollup``: PSS splits shared pages among the processes that map them, so the
sum is the tree's real footprint), and at the sample with the largest sum records each process's PSS,
grouped by kind: the server (``fedlab run``), the Ray workers holding the virtual clients
(``ClientAppActor``) and Ray's own services (gcs, raylet, dashboard, agents, monitors).

    python bench/bench_memory.py --repeats 2 --rounds 3        # every workload below
    python bench/bench_memory.py --only default --repeats 1    # one of them (the others kept in the file)
    # -> results/bench/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent

WORKLOADS = {  # name -> fedlab run overrides (Fashion-MNIST, LeNet-5)
    "default": [],  # 10 IID clients x 1 epoch, FedAvg
    "fedavg_1000_clients_c0.1": ["num_clients=1000", "strategy.fraction_train=0.1"],
    "fedavg_1000_clients_c1.0": ["num_clients=1000", "strategy.fraction_train=1.0"],
    "dpsgd_256_nodes": ["strategy=dpsgd", "strategy.matrix=exponential", "num_clients=256", "client.local_steps=5"],
}

KINDS = (("fedlab run", "server (fedlab run)"), ("ClientAppActor", "Ray worker (virtual clients)"),
         ("gcs_server", "Ray gcs"), ("raylet", "Ray raylet"),
         ("ray_agent_stub.sh", "Ray agent stubs (/bin/sh)"), ("sleep 1", "Ray agent stubs (/bin/sh)"),
         ("DashboardAgent", "Ray dashboard agent"),
         ("RuntimeEnvAgent", "Ray runtime-env agent"), ("dashboard", "Ray dashboard head"),
         ("monitor.py", "Ray monitors (autoscaler, log)"))  # monitor.py and log_monitor.py


def kind(cmdline: str) -> str:
    """The kind of process a command line belongs to (``other`` when none matches)."""
    for key, name in KINDS:
        if key in cmdline:
            return name
    return "other"


def walk(pid: int, read: Callable[[int], tuple]) -> dict[int, tuple]:
    """``{pid: (kind, *read(pid))}`` for ``pid`` and all its descendants (a process that ends meanwhile is left
    out)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[p] = (kind(cmd), *read(p))
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, PermissionError, StopIteration):
            continue
    return out


def _pss_mb(p: int) -> tuple[float]:
    return (next(int(line.split()[1]) for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
                 if line.startswith("Pss:")) / 1024,)


def processes(pid: int) -> dict[int, tuple[str, float]]:
    """``{pid: (kind, PSS MB)}`` for ``pid`` and all its descendants."""
    return walk(pid, _pss_mb)


def measure(rounds: int, overrides: list[str]) -> dict:
    """One run: its peak tree PSS and the per-kind PSS at that peak (MB)."""
    out = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("fedlab")), "run", f"rounds={rounds}", f"out_dir={out}",
                             *overrides], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak, at_peak = 0.0, {}
    while proc.poll() is None:
        procs = processes(proc.pid)
        total = sum(mb for _, mb in procs.values())
        if total > peak:
            peak, at_peak = total, procs
        time.sleep(0.25)
    if proc.returncode != 0:
        raise RuntimeError(f"fedlab run exited {proc.returncode}")
    by_kind: dict[str, float] = {}
    for k, mb in at_peak.values():
        by_kind[k] = round(by_kind.get(k, 0.0) + mb, 1)
    return {"peak_pss_mb": round(peak, 1), "processes": len(at_peak),
            "by_kind_mb": dict(sorted(by_kind.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "memory.json"))
    ap.add_argument("--only", default="", help="comma-separated workload names (default: all)")
    args = ap.parse_args()
    names = [n for n in WORKLOADS if not args.only or n in args.only.split(",")]
    workloads = {}
    for name in names:
        runs = []
        for i in range(args.repeats):
            runs.append(measure(args.rounds, WORKLOADS[name]))
            print(f"{name} run {i + 1}: peak PSS {runs[-1]['peak_pss_mb']:.0f} MB {runs[-1]['by_kind_mb']}", flush=True)
        workloads[name] = {"overrides": WORKLOADS[name], "peak_pss_mb_max": max(r["peak_pss_mb"] for r in runs),
                           "runs": runs, "command": "python bench/bench_memory.py " + " ".join(sys.argv[1:]),
                           "date": time.strftime("%Y-%m-%d %H:%M")}
    out = Path(args.out)
    if args.only and out.exists():  # the other workloads keep their last measurement
        workloads = {**json.loads(out.read_text())["workloads"], **workloads}
    result = {"what": "peak PSS of the whole process tree of `fedlab run rounds=R <overrides>`, and its split "
                      "by process kind at the peak",
              "command": "python bench/bench_memory.py " + " ".join(sys.argv[1:]),
              "rounds": args.rounds, "cpus": os.cpu_count(), "workloads": workloads}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()

"""Where a steady round's CPU goes: the machine's busy and idle CPU seconds, and each process kind's user and
system seconds, between the ends of two rounds of one `fedlab run`.

A round of fedlab on this 2-core machine is either waiting (idle CPU: a gap a faster schedule could fill) or
working (busy CPU: work a leaner server or worker would not do). The counts come from ``/proc/stat`` (the whole
machine) and ``/proc/<pid>/stat`` (the run's process tree, by kind as in ``bench_memory.py``), read when the
run's metrics row of round ``--first`` and then of round ``--last`` appears on disk; divided by the rounds
between. With ``--var NAME``, interleaved runs with NAME=1 and NAME=0 (``--pairs`` of them), as
``bench_env_ab.py`` does.

    python bench/bench_round_cpu.py --var FEDLAB_HEAP_KEEP --pairs 2 --out results/bench/round_cpu_dpsgd_256.json \\
        strategy=dpsgd strategy.matrix=exponential num_clients=256 client.local_steps=5 strategy.node_eval_samples=0
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_memory import walk  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")


def machine() -> tuple[float, float]:
    """The machine's busy and idle CPU seconds since boot (idle includes I/O wait)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = v[3] + v[4]
    return (sum(v) - idle) / HZ, idle / HZ


def _cpu_s(p: int) -> tuple[float, float]:
    f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
    return int(f[11]) / HZ, int(f[12]) / HZ  # utime, stime


def tree(pid: int) -> dict[int, tuple[str, float, float]]:
    """``{pid: (kind, user s, system s)}`` for ``pid`` and all its descendants."""
    return walk(pid, _cpu_s)


def rows_on_disk(metrics: Path) -> int:
    try:
        return max(0, len(metrics.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def measure(first: int, last: int, overrides: list[str], env: dict[str, str]) -> dict:
    """One run of ``last`` + 1 rounds; the CPU seconds per round between the ends of rounds ``first`` and
    ``last``."""
    out = Path(tempfile.mkdtemp(prefix="bench-cpu-"))
    env = {**os.environ, "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", **env}
    proc = subprocess.Popen([str(Path(sys.executable).with_name("fedlab")), "run", f"rounds={last + 1}",
                             f"out_dir={out}", *overrides], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    snaps: dict[int, tuple[float, tuple[float, float], dict]] = {}
    while proc.poll() is None and len(snaps) < 2:
        n = rows_on_disk(out / "metrics.csv")  # with the record overlapped, round r's row lands during round r+1
        for r in (first, last):
            if n >= r and r not in snaps:
                snaps[r] = (time.perf_counter(), machine(), tree(proc.pid))
        time.sleep(0.02)
    proc.wait()
    if proc.returncode != 0 or len(snaps) < 2:
        raise RuntimeError(f"fedlab run {' '.join(overrides)} exited {proc.returncode} before round {last}")
    (t0, m0, p0), (t1, m1, p1) = snaps[first], snaps[last]
    n = last - first
    kinds: dict[str, list[float]] = {}
    for pid, (k, u, s) in p1.items():
        _, u0, s0 = p0.get(pid, (k, 0.0, 0.0))
        acc = kinds.setdefault(k, [0.0, 0.0])
        acc[0] += (u - u0) / n
        acc[1] += (s - s0) / n
    res = {"env": env_shown(env), "wall_s_per_round": (t1 - t0) / n, "busy_cpu_s_per_round": (m1[0] - m0[0]) / n,
           "idle_cpu_s_per_round": (m1[1] - m0[1]) / n,
           "user_system_s_per_round_by_kind": {k: [round(u, 3), round(s, 3)] for k, (u, s) in
                                               sorted(kinds.items(), key=lambda kv: -sum(kv[1]))}}
    print(json.dumps(res), flush=True)
    return res


def env_shown(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("FEDLAB_")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--first", type=int, default=4, help="the round whose end starts the count")
    ap.add_argument("--last", type=int, default=9, help="the round whose end ends it (the run has one more)")
    ap.add_argument("--var", default="", help="an environment variable to set to 1 and 0 in interleaved runs")
    ap.add_argument("--pairs", type=int, default=1)
    ap.add_argument("--out", default="")
    args, overrides = ap.parse_known_args()
    if not 1 <= args.first < args.last:
        ap.error(f"--first {args.first} and --last {args.last}: need 1 <= first < last")
    runs = []
    for i in range(args.pairs):
        order = ["1", "0"] if i % 2 == 0 else ["0", "1"]
        for v in order if args.var else [None]:
            runs.append(measure(args.first, args.last, overrides, {args.var: v} if v else {}))
    res = {"what": "CPU seconds per steady round: the whole machine (busy, idle) and the run's processes by kind "
                   "(user, system), between the ends of two rounds",
           "command": "python bench/bench_round_cpu.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "first": args.first,
           "last": args.last, "runs": runs}
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()

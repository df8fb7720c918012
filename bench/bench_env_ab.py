"""One of fedlab's switches on and off: interleaved pairs of `fedlab run` with an environment variable 1 and 0.

- ``FEDLAB_RAY_LEAN``: a quiet simulated run starts its private Ray without the autoscaler monitor, the log
  monitor and the API server (``fedlab_app/ray_start.py``, ``init``); 0 gives Ray's full set.
- ``FEDLAB_FLAT_WIRE``: every ArrayRecord of several arrays crosses Flower as one array (``fedlab_app/wire.py``);
  0 sends the arrays one by one.
- ``FEDLAB_SIM_SHORT_POLL``: the simulation engine's message poll and the grid's reply poll every 5 ms
  (``fedlab_app/sim_waits.py``); 0 keeps Flower's 0.1 s.
- ``NUMPY_MADVISE_HUGEPAGE`` (NumPy's own switch, read at import): NumPy marks its large arrays for transparent
  huge pages (``madvise``), so that their first touch may wait for the kernel to gather 2 MB pages; 0 leaves them
  4 KB pages.
- ``FEDLAB_HEAP_KEEP``: the server process keeps the memory it frees for its next allocations (one malloc arena,
  no mmap'd blocks, no trim; ``fedlab_app/heap.py``, ``keep``); 0 gives glibc's defaults and a trim after each
  evaluation.
- ``FEDLAB_EARLY_RECORD``: in a simulation, round r's record starts as soon as a core is free of the nodes'
  training in round r+1 (W - 1 replies outstanding with W nodes at once; ``fedlab_app/driver.py``,
  ``free_core_at``); 0 starts it after round r+1's last reply.
- ``FEDLAB_OVERLAP_EVAL``: round r's record (evaluation, metrics row, checkpoint) is made in a thread beside the
  server's step on round r+1's replies (``fedlab_app/overlap.py``); 0 makes it before round r+1 is sent.

Each pair launches `fedlab run rounds=R [overrides]` (a fresh process, as a user would) once each way,
alternating which goes first, and records the launch to the end of round 1 (its metrics row on disk), the
steady rounds and the process tree's peak PSS (``bench_round.fedlab_run``, sampled every 0.25 s).

    python bench/bench_env_ab.py --var FEDLAB_RAY_LEAN --pairs 4 --rounds 3    # -> results/bench/ray_lean.json
    python bench/bench_env_ab.py --var FEDLAB_FLAT_WIRE --pairs 3 --rounds 4   # -> results/bench/flat_wire_sim.json
    python bench/bench_env_ab.py --var FEDLAB_FLAT_WIRE --out results/bench/flat_wire_sim_dpsgd.json \
        strategy=dpsgd strategy.matrix=exponential num_clients=256 client.local_steps=5 strategy.node_eval_samples=0
    python bench/bench_env_ab.py --var FEDLAB_SIM_SHORT_POLL --pairs 3 --rounds 6 \
        --out results/bench/sim_poll_c01.json \
        num_clients=1000 strategy.fraction_train=0.1
    python bench/bench_env_ab.py --var FEDLAB_OVERLAP_EVAL --pairs 3 --rounds 6 \
        --out results/bench/overlap_eval_dpsgd_256.json \
        strategy=dpsgd strategy.matrix=exponential num_clients=256 client.local_steps=5 strategy.node_eval_samples=0
    python bench/bench_env_ab.py --pool A.json B.json   # the pairs of several files: mean difference, 95% CI
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_round import fedlab_run  # noqa: E402


OUT = {"FEDLAB_RAY_LEAN": "ray_lean.json", "FEDLAB_FLAT_WIRE": "flat_wire_sim.json",
       "FEDLAB_SIM_SHORT_POLL": "sim_poll.json", "FEDLAB_OVERLAP_EVAL": "overlap_eval.json",
       "NUMPY_MADVISE_HUGEPAGE": "numpy_hugepage.json", "FEDLAB_HEAP_KEEP": "heap_keep.json",
       "FEDLAB_EARLY_RECORD": "early_record.json"}
WHAT = {  # var -> what its runs compare (the results file's "what")
    "FEDLAB_RAY_LEAN": "with a lean private Ray (no autoscaler monitor, log monitor or API server) and "
                       "with Ray's full set (FEDLAB_RAY_LEAN=0)",
    "FEDLAB_FLAT_WIRE": "with arrays crossing Flower flat (FEDLAB_FLAT_WIRE=1) and one by one (=0)",
    "FEDLAB_SIM_SHORT_POLL": "with the simulation engine's two polls every 5 ms (FEDLAB_SIM_SHORT_POLL=1) and "
                             "every 0.1 s, Flower's own (=0)",
    "FEDLAB_OVERLAP_EVAL": "with round r's record (evaluation, row, checkpoint) made in a thread beside the "
                           "server's step on round r+1's replies (FEDLAB_OVERLAP_EVAL=1) and before round r+1 "
                           "is sent (=0)",
    "NUMPY_MADVISE_HUGEPAGE": "with NumPy asking the kernel for huge pages for its large arrays (its default, "
                              "NUMPY_MADVISE_HUGEPAGE=1) and not (=0)",
    "FEDLAB_HEAP_KEEP": "with the server process keeping the memory it frees (FEDLAB_HEAP_KEEP=1) and with glibc's "
                        "defaults and a trim after each evaluation (=0)",
    "FEDLAB_EARLY_RECORD": "with round r's record starting as soon as a core is free of round r+1's training "
                           "(FEDLAB_EARLY_RECORD=1) and after round r+1's last reply (=0)"}


def one(var: str, on: bool, rounds: int, overrides: list[str]) -> dict:
    os.environ[var] = "1" if on else "0"
    try:
        return fedlab_run(rounds, *overrides)
    finally:
        os.environ.pop(var, None)


def pool(files: list[str]) -> dict:
    """Pair the runs of one or more result files (the i-th run with the switch on against the i-th off, which
    ran beside it) and summarize the differences of their steady-round medians (off - on): mean and 95% CI."""
    from fedlab_app.stats import summarize

    diffs, rows = [], []
    for f in files:
        runs = json.loads(Path(f).read_text())["runs"]
        on, off = (runs["lean"], runs["full"]) if "lean" in runs else (runs["on"], runs["off"])
        for a, b in zip(on, off):
            x, y = statistics.median(a["steady_rounds_s"]), statistics.median(b["steady_rounds_s"])
            diffs.append(y - x)
            rows.append({"file": f, "on_s": round(x, 3), "off_s": round(y, 3), "off_minus_on_s": round(y - x, 3)})
    s = summarize(diffs)
    return {"pairs": rows, "mean_off_minus_on_s": s.mean, "ci95_s": [s.low, s.high], "n": s.n}


def main() -> None:
    if sys.argv[1:2] == ["--pool"]:  # python bench/bench_env_ab.py --pool A.json B.json
        print(json.dumps(pool(sys.argv[2:]), indent=1))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--var", choices=sorted(OUT), default="FEDLAB_RAY_LEAN")
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="default: results/bench/ray_lean.json or flat_wire_sim.json")
    ap.add_argument("overrides", nargs="*", help="fedlab run overrides (default: the default experiment)")
    args = ap.parse_args()
    out = args.out or str(ROOT / "results" / "bench" / OUT[args.var])
    names = ("lean", "full") if args.var == "FEDLAB_RAY_LEAN" else ("on", "off")
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(args.pairs):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            runs[names[0] if on else names[1]].append(one(args.var, on, args.rounds, args.overrides))
    medians = {k: {"launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in v),
                   "steady_round_s": statistics.median(t for r in v for t in r["steady_rounds_s"]),
                   "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in v)} for k, v in runs.items()}
    what = WHAT[args.var]
    res = {"what": f"`fedlab run rounds=R {' '.join(args.overrides)}` {what}, interleaved pairs",
           "command": f"python bench/bench_env_ab.py --var {args.var} --pairs {args.pairs} --rounds {args.rounds} "
                      + (f"--out {args.out} " if args.out else "") + " ".join(args.overrides),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "medians": medians, "runs": runs}
    Path(out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in medians.items():
        print(k, {m: round(x, 2) for m, x in v.items()})


if __name__ == "__main__":
    main()

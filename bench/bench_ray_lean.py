"""A lean private Ray instance against Ray's full set of services: interleaved pairs of `fedlab run`.

A quiet simulated run starts its private Ray without the autoscaler monitor, the log monitor and the API
server (``fedlab_app/ray_start.py``, ``init``); ``FEDLAB_RAY_LEAN=0`` gives Ray's full set. Each pair launches
the default experiment (`fedlab run rounds=R`, a fresh process as a user would) once each way, alternating
which goes first, and records the launch to the end of round 1 (its metrics row on disk), the steady rounds and
the process tree's peak PSS (``bench_round.fedlab_run``, sampled every 0.25 s).

    python bench/bench_ray_lean.py --pairs 4 --rounds 3      # -> results/bench/ray_lean.json
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


def one(lean: bool, rounds: int) -> dict:
    os.environ["FEDLAB_RAY_LEAN"] = "1" if lean else "0"
    try:
        return fedlab_run(rounds)
    finally:
        os.environ.pop("FEDLAB_RAY_LEAN", None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "ray_lean.json"))
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"lean": [], "full": []}
    for i in range(args.pairs):
        for lean in ((True, False) if i % 2 == 0 else (False, True)):
            runs["lean" if lean else "full"].append(one(lean, args.rounds))
    medians = {k: {"launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in v),
                   "steady_round_s": statistics.median(t for r in v for t in r["steady_rounds_s"]),
                   "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in v)} for k, v in runs.items()}
    res = {"what": "`fedlab run rounds=R` (default experiment) with a lean private Ray (no autoscaler monitor, log "
                   "monitor or API server) and with Ray's full set (FEDLAB_RAY_LEAN=0), interleaved pairs",
           "command": f"python bench/bench_ray_lean.py --pairs {args.pairs} --rounds {args.rounds}",
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "medians": medians, "runs": runs}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in medians.items():
        print(k, {m: round(x, 2) for m, x in v.items()})


if __name__ == "__main__":
    main()

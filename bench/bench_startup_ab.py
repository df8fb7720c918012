"""Launch to the end of round 1 with and without starting Ray first: interleaved pairs of ``bench_startup.py``.

Each pair runs ``bench/bench_startup.py`` (the ``fedlab`` script's order: Ray starts in a thread, the CLI imports
once it is up, ``fedlab_app/launch.py``) and ``bench/bench_startup.py --no-early-ray`` (the order before it: the
CLI imports, then the simulation starts Ray), each a fresh process, alternating which goes first. Recorded per
run, in seconds since its process started: Ray up, the CLI imported, the nodes' answer to the server's first
question (the workers have loaded the ClientApp), and the end of round 1 (its evaluation and checkpoint).

    python bench/bench_startup_ab.py --pairs 4     # -> results/bench/startup_ab.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENTS = {"ray_up": ("Ray up", "< Ray up (taken over or started)"), "cli_imported": ("CLI imported",),
          "nodes_answered": ("< ask the nodes",), "end_of_round_1": ("end of round 1 (evaluation, checkpoint)",)}


def one(early: bool) -> dict:
    """One ``bench_startup.py`` process; the times of its events."""
    out = Path(tempfile.mkdtemp(prefix="bench-startup-ab-")) / "startup.json"
    cmd = [sys.executable, str(ROOT / "bench" / "bench_startup.py"), "--out", str(out)]
    subprocess.run(cmd + ([] if early else ["--no-early-ray"]), cwd=ROOT, check=True, timeout=300,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = json.loads(out.read_text())["server"]
    times = {}
    for key, names in EVENTS.items():  # the first occurrence of the first name that occurs
        times[key] = next(e["t"] for name in names for e in server if e["event"] == name)
    print(("early Ray " if early else "late Ray  ") + " ".join(f"{k} {v:5.2f}" for k, v in times.items()), flush=True)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "startup_ab.json"))
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"early": [], "late": []}
    for i in range(args.pairs):
        for early in ((True, False) if i % 2 == 0 else (False, True)):
            runs["early" if early else "late"].append(one(early))
    medians = {k: {e: statistics.median(r[e] for r in v) for e in EVENTS} for k, v in runs.items()}
    res = {"what": "seconds since process start of `fedlab run rounds=2` (default experiment) events, with Ray started "
                   "first (early, the fedlab script) and after the CLI's imports (late, before)",
           "command": f"python bench/bench_startup_ab.py --pairs {args.pairs}", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "load_average": os.getloadavg(), "medians": medians, "runs": runs}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in medians.items():
        print(k, v)


if __name__ == "__main__":
    main()

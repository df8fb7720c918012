"""Two sets of config overrides against each other: interleaved pairs of `fedlab run`, with a 95% interval.

Each pair launches `fedlab run rounds=R <common> <a>` and `... <b>` (fresh processes, as a user would), alternating
which goes first, and records each run's steady rounds (rounds 2..R), launch to the end of round 1 and the
process tree's peak PSS (``bench_round.fedlab_run``). The difference is taken pair by pair (median steady round of
a minus b's) and summarized with a Student-t 95% interval (``fedlab_app.stats``): an interval that holds 0 is no
difference.

    python bench/bench_overrides_ab.py --pairs 3 --rounds 6 --a sim.clients_per_worker=128 --b "" \\
        --out results/bench/packing_dpsgd_256.json \\
        strategy=dpsgd strategy.matrix=exponential num_clients=256 client.local_steps=5 strategy.node_eval_samples=0
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_round import fedlab_run  # noqa: E402

from fedlab_app import stats  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", required=True, help="overrides of side a, one string (\"\" for none)")
    ap.add_argument("--b", required=True, help="overrides of side b, one string (\"\" for none)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("common", nargs="*", help="overrides of both sides")
    args = ap.parse_args()
    if args.rounds < 3:
        ap.error(f"--rounds {args.rounds}: need >= 3 (round 1 is not steady)")
    sides = {"a": shlex.split(args.a), "b": shlex.split(args.b)}
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for p in range(args.pairs):
        for side in ("a", "b") if p % 2 == 0 else ("b", "a"):
            runs[side].append(fedlab_run(args.rounds, *args.common, *sides[side]))
    per_pair = [statistics.median(ra["steady_rounds_s"]) - statistics.median(rb["steady_rounds_s"])
                for ra, rb in zip(runs["a"], runs["b"], strict=True)]
    st = stats.summarize(per_pair)
    res = {"what": "`fedlab run rounds=R <common> <side>`, interleaved pairs; a minus b per pair, 95% Student-t CI",
           "command": "python bench/bench_overrides_ab.py " + " ".join(
               shlex.quote(x) for x in ["--pairs", str(args.pairs), "--rounds", str(args.rounds), "--a", args.a,
                                        "--b", args.b, "--out", str(args.out), *args.common]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "common": args.common, "sides": sides,
           "medians": {s: {"steady_round_s": statistics.median(t for r in v for t in r["steady_rounds_s"]),
                           "launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in v),
                           "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in v),
                           "max_peak_pss_mb": max(r["peak_pss_mb"] for r in v)} for s, v in runs.items()},
           "a_minus_b_steady_round_s": {"per_pair": [round(x, 3) for x in per_pair], "mean": round(st.mean, 3),
                                        "ci95": [round(st.low, 3), round(st.high, 3)] if st.n >= 2 else None},
           "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: res[k] for k in ("medians", "a_minus_b_steady_round_s")}, indent=1))


if __name__ == "__main__":
    main()

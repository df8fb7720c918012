"""Asynchronous SGD packed (several workers' jobs per transport message, trained fused) against one job per
message, on the same runs: seconds per round-equivalent (M applied results), interleaved.

Each run is `fedlab run` (a fresh process, Ray, 2 single-threaded workers) of asynchronous SGD on the
virtual clock with Gaussian delays; ``packed`` is the default (``sim.clients_per_worker`` auto: M / 2 per
node), ``one_per_message`` sets it to 1. Both apply the same results in the same order (tests/test_packed.py
checks the equality); only how the jobs travel and train differs. Steady round = median of the
``wall_time_s`` differences of rounds 2..R. ``jobs_per_transport`` = jobs dispatched (logical messages
down) / transport messages down (half the transport messages): how many jobs a message carried on average.

    python bench/bench_async.py --repeats 2 --rounds 5     # -> results/bench/async.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_round import fedlab_run  # noqa: E402

DELAYS = ["strategy=async_sgd", "strategy.delay=gaussian", "strategy.delay_ms=15", "strategy.delay_std_ms=10"]
WORKLOADS = {  # Fashion-MNIST, LeNet-5, B = 32; M workers, each job J = 5 plain SGD steps
    "async_16": [*DELAYS, "num_clients=16", "client.local_steps=5"],
    "async_64_dc": [*DELAYS, "num_clients=64", "client.local_steps=5", "strategy.dc=adaptive",
                    "strategy.dc_lambda=2"],
}
VARIANTS = {"packed": [], "one_per_message": ["sim.clients_per_worker=1"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "async.json"))
    args = ap.parse_args()
    runs: dict = {w: {v: [] for v in VARIANTS} for w in WORKLOADS}
    for rep in range(args.repeats):
        for w, overrides in WORKLOADS.items():
            order = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))  # alternate who goes first
            for v in order:
                r = fedlab_run(args.rounds, *overrides, *VARIANTS[v])
                runs[w][v].append(r)
    out = {"date": time.strftime("%Y-%m-%d"), "command": f"python bench/bench_async.py --repeats {args.repeats} "
           f"--rounds {args.rounds}", "workloads": {}}
    for w in WORKLOADS:
        res = {}
        for v in VARIANTS:
            rs = runs[w][v]
            steady = statistics.median(t for r in rs for t in r["steady_rounds_s"])
            res[v] = {"steady_round_s": steady, "process_s": [r["process_s"] for r in rs],
                      "peak_pss_mb": [r["peak_pss_mb"] for r in rs],
                      "final_test_acc": [r["final_test_acc"] for r in rs],
                      "jobs_per_transport": [r["comm"]["messages_down"] / (r["comm"]["transport_messages"] / 2)
                                             for r in rs]}
        res["packed_over_one_per_message"] = res["packed"]["steady_round_s"] / res["one_per_message"]["steady_round_s"]
        res["overrides"] = WORKLOADS[w]
        out["workloads"][w] = res
        print(f"{w}: packed {res['packed']['steady_round_s']:.2f} s/round, one per message "
              f"{res['one_per_message']['steady_round_s']:.2f} s/round ({res['packed_over_one_per_message']:.2f}x)",
              flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

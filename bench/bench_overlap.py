"""Round records made in turn or beside the next round's server step (``fedlab_app/overlap.py``), compared inside
one run.

On this shared 2-core machine, separate runs of a few rounds differ by more than the effect (interleaved pairs of
runs gave a gain of 0.39 s a round for one version and none for the next). So one `fedlab run` cycles through the
variants in blocks of ``--block`` rounds, and each round's time (``metrics.csv``'s ``wall_time_s``, from one
round's end to the next) is credited to the variant that recorded the round before it; only rounds whose two
predecessors are in the same block count. The variants:

- ``in_turn``: each round recorded before the next one is sent (``FEDLAB_OVERLAP_EVAL=0``);
- ``split``: the record in a thread beside the server's step on the next replies, torch's threads split between
  the two (fedlab's default);
- ``unsplit``: the same, both threads with torch's full count.

Per variant: the median round; per cycle: ``in_turn`` minus each other variant (medians of its clean rounds), then
the mean difference over the cycles with its 95% CI (``fedlab_app/stats.py``).

    python bench/bench_overlap.py --cycles 3 --block 5 --out results/bench/overlap_dpsgd_256.json \\
        strategy=dpsgd strategy.matrix=exponential num_clients=256 client.local_steps=5 strategy.node_eval_samples=0
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("in_turn", "split", "unsplit")


def variant_of(rnd: int, block: int) -> str:
    """The variant that records round ``rnd`` (1-based): blocks of ``block`` rounds, cycling."""
    return VARIANTS[((rnd - 1) // block) % len(VARIANTS)]


def _child(block: int, argv: list[str]) -> None:
    """In the child: each round's record goes the way its block says; then the ``fedlab`` script runs."""
    from fedlab_app import overlap as records
    from fedlab_app.recorder import Recorder

    end = Recorder.end_of_round

    def end_of_round(self, rnd, *a, overlap=None, **k):
        v = variant_of(rnd, block)
        if overlap is not None and v == "in_turn":
            if overlap.settle():  # the records before this one first, as the driver does
                return True
            overlap = None
        records.SPLIT_THREADS = v == "split"
        return end(self, rnd, *a, overlap=overlap, **k)

    Recorder.end_of_round = end_of_round
    from fedlab_app.launch import main

    sys.argv = ["fedlab", *argv]
    main()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=4)
    ap.add_argument("--block", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "overlap.json"))
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("overrides", nargs="*", help="fedlab run overrides")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, ["run", *args.overrides])
    from fedlab_app.stats import summarize

    rounds = args.cycles * args.block * len(VARIANTS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    cmd = [sys.executable, __file__, "--child", str(args.block), "--", f"rounds={rounds}", f"out_dir={tmp / 'run'}",
           *args.overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"fedlab run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    with open(tmp / "run" / "metrics.csv", newline="") as f:
        t = {int(r["round"]): float(r["wall_time_s"]) for r in csv.DictReader(f)}
    clean: dict[str, list[tuple[int, float]]] = {v: [] for v in VARIANTS}
    for r in range(3, rounds + 1):  # round r's time, credited to the variant that recorded round r - 1
        if variant_of(r - 2, args.block) == variant_of(r - 1, args.block) == variant_of(r, args.block):
            clean[variant_of(r - 1, args.block)].append((r, t[r] - t[r - 1]))
    cycle = args.block * len(VARIANTS)
    per_cycle = {v: [statistics.median(d for r, d in clean[v] if (r - 1) // cycle == c) for c in range(args.cycles)
                     if any((r - 1) // cycle == c for r, _ in clean[v])] for v in VARIANTS}
    gains = {}
    for v in VARIANTS[1:]:
        s = summarize([a - b for a, b in zip(per_cycle["in_turn"], per_cycle[v])])
        gains[v] = {"mean_s": s.mean, "ci95_s": [s.low, s.high], "n": s.n}
    res = {"what": "one `fedlab run`, its rounds' records made in turn, beside the next round's server step with "
                   "torch's threads split, and without the split, in cycling blocks; seconds per round",
           "command": "python bench/bench_overlap.py " + " ".join(sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "process_s": wall, "median_round_s": {v: statistics.median(d for _, d in clean[v]) for v in VARIANTS},
           "in_turn_minus": gains, "per_cycle_medians_s": per_cycle,
           "rounds_s": {v: [[r, round(d, 4)] for r, d in clean[v]] for v in VARIANTS}}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("median_round_s", "in_turn_minus")}, indent=1))


if __name__ == "__main__":
    main()

"""The server's per-round work (a 10-model average and the default test-set evaluation) under three ways of
handling glibc's heap, each in a fresh process, interleaved: ``off`` (glibc's defaults), ``trim``
(``fedlab_app.heap.trim`` after each evaluation, what the server does) and ``mmap256k`` (fixed mmap and trim
thresholds of 256 KB through ``mallopt``). Records seconds per round and resident MB after the rounds.

    python bench/bench_server_heap.py --reps 2    # -> results/bench/server_heap.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ONE = """
import ctypes, json, sys, time
import numpy as np
mode = sys.argv[1]
if mode == "mmap256k":
    libc = ctypes.CDLL(None)
    assert libc.mallopt(-3, 256 << 10) == 1 and libc.mallopt(-1, 256 << 10) == 1  # M_MMAP_/M_TRIM_THRESHOLD
from fedlab_app import heap
from fedlab_app.compose import compose
from fedlab_app.recorder import CentralEvaluator
ev = CentralEvaluator(compose([]))
arrays = {k: v.detach().numpy().copy() for k, v in ev.model.state_dict().items()}
ev(arrays)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
t = time.perf_counter()
for _ in range(8):
    avg = {k: sum(np.asarray(v, np.float64) * 0.1 for _ in range(10)).astype(v.dtype) for k, v in arrays.items()}
    ev(avg)
    if mode == "trim":
        heap.trim()
print(json.dumps({"s_per_round": (time.perf_counter() - t) / 8, "rss_after_mb": rss()}))
"""

MODES = ("off", "trim", "mmap256k")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "server_heap.json"))
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for _ in range(args.reps):
        for mode in MODES:
            out = subprocess.run([sys.executable, "-c", ONE, mode], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            runs[mode].append(json.loads(out))
            print(mode, runs[mode][-1], flush=True)
    res = {"what": "server's per-round work (10-model average + default test-set evaluation), 8 rounds per process",
           "command": f"python bench/bench_server_heap.py --reps {args.reps}",
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "runs": runs}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""The server's gossip mixing step: per receiver (``gossip.mix_all``) against stacked, in blocks
(``gossip_stacked.mix``), on 256 LeNet-5 models, exponential graph (15 senders each), interleaved.

Both must give the same models bit for bit (checked every repeat). Torch runs with 1 thread and with 2 (the
server's setting while the workers wait). Seconds per mixing step, medians over the repeats.

    python bench/bench_mix.py --reps 5          # -> results/bench/mix.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fedlab_app.models import build_model  # noqa: E402
from fedlab_base.schema import ModelCfg  # noqa: E402
from strategies import gossip, mixing  # noqa: E402
from strategies import gossip_stacked as stacked  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--nodes", type=int, default=256)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench" / "mix.json"))
    args = ap.parse_args()
    m, rng = args.nodes, np.random.default_rng(0)
    template = {k: v.detach().numpy() for k, v in build_model(ModelCfg(), (1, 28, 28), 10, seed=0).state_dict().items()}
    ys = [{k: rng.normal(0, 0.1, v.shape).astype(v.dtype) for k, v in template.items()} for _ in range(m)]
    ws = [1.0] * m
    A = mixing.build_matrix("exponential", m, 0, rng)
    Y = stacked.stack(ys)
    times: dict[str, list[float]] = {"per receiver (gossip.mix_all)": [], "stacked, torch 1 thread": [],
                                     "stacked, torch 2 threads": []}
    for _ in range(args.reps):
        t = time.perf_counter()
        want, _ = gossip.mix_all(A, ys, ws)
        times["per receiver (gossip.mix_all)"].append(time.perf_counter() - t)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            t = time.perf_counter()
            got, _ = stacked.mix(A, Y, ws)
            times[f"stacked, torch {threads} thread{'s' if threads > 1 else ''}"].append(time.perf_counter() - t)
            same = all(got[k][i].tobytes() == want[i][k].tobytes() for i in range(m) for k in template)
            assert same, "stacked.mix is not bit for bit gossip.mix_all"
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {"what": f"one gossip mixing step of {m} LeNet-5 models (exponential graph, {int((A[0] > 0).sum()) - 1} "
                   "senders each), seconds; bit for bit equal every repeat",
           "command": "python bench/bench_mix.py " + " ".join(sys.argv[1:]), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "cpus": os.cpu_count(), "median_s": med, "times_s": times}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in med.items():
        print(f"{k}: {v:.3f} s")


if __name__ == "__main__":
    main()

"""This working tree against an earlier commit on one workload: interleaved pairs of `fedlab run`.

The earlier commit is checked out in a temporary git worktree and run through the same virtual environment with
that worktree first on ``PYTHONPATH`` (the `fedlab` script, the server and, through the environment Ray's
processes inherit, the workers all import its code). Each pair launches `fedlab run rounds=R [overrides]` once
with each version, alternating which goes first, and records the steady rounds (rounds 2..R), the launch to the
end of round 1 and the process tree's peak PSS (``bench_round.fedlab_run``). Results must agree: the final test
accuracy of the two versions is printed beside the times.

    python bench/bench_code_ab.py --base c2c404b --pairs 2 --rounds 5 --out results/bench/code_ab_dpsgd_256.json \\
        strategy=dpsgd strategy.matrix=exponential num_clients=256 client.local_steps=5 strategy.node_eval_samples=0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_round import fedlab_run  # noqa: E402


def one(pythonpath: str | None, rounds: int, overrides: list[str]) -> dict:
    old = os.environ.get("PYTHONPATH")
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    else:
        os.environ.pop("PYTHONPATH", None)
    try:
        return fedlab_run(rounds, *overrides)
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the earlier commit")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", required=True)
    ap.add_argument("overrides", nargs="*", help="fedlab run overrides")
    args = ap.parse_args()
    base = subprocess.run(["git", "rev-parse", args.base], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    tree = Path(tempfile.mkdtemp(prefix="fedlab-base-")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), base], cwd=ROOT, check=True,
                   capture_output=True)
    runs: dict[str, list[dict]] = {"base": [], "this": []}
    try:
        for i in range(args.pairs):
            for name in (("base", "this") if i % 2 == 0 else ("this", "base")):
                runs[name].append(one(str(tree) if name == "base" else None, args.rounds, args.overrides))
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tree.parent, ignore_errors=True)
    medians = {k: {"steady_round_s": statistics.median(t for r in v for t in r["steady_rounds_s"]),
                   "launch_to_round1_s": statistics.median(r["launch_to_round1_s"] for r in v),
                   "peak_pss_mb": statistics.median(r["peak_pss_mb"] for r in v),
                   "final_test_acc": sorted({r["final_test_acc"] for r in v})} for k, v in runs.items()}
    res = {"what": f"`fedlab run rounds={args.rounds} {' '.join(args.overrides)}`: commit {base[:7]} (base) against "
                   f"the working tree at {head[:7]}{' with uncommitted changes' if dirty else ''} (this), "
                   "interleaved pairs",
           "command": f"python bench/bench_code_ab.py --base {args.base} --pairs {args.pairs} --rounds {args.rounds} "
                      f"--out {args.out} " + " ".join(args.overrides),
           "date": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
           "medians": medians, "runs": runs}
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    for k, v in medians.items():
        print(k, v)


if __name__ == "__main__":
    main()

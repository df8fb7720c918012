"""Where the time from launch to the end of round 1 goes: a timeline of one `fedlab run` of the default experiment.

Runs ``fedlab run rounds=2`` in this process (as the ``fedlab`` command does) with timestamps, in seconds since the
process started (``/proc``), at: the CLI imported, the simulation started, the server's own steps (recorder,
initial model, label plot, waiting for nodes, asking them for their partitions), each round, and each end of round
(evaluation, checkpoint). The workers log, per message (``FEDLAB_TIMELINE``, ``fedlab_app/client_app.py``), when
their process started, when the ClientApp module was imported, when the handler started, when its data and model
were ready and when it finished training, on the same clock.

    python bench/bench_startup.py                  # -> results/bench/startup.json
    python bench/bench_startup.py --no-early-ray   # Ray started only when the simulation starts, as before
    python bench/bench_startup_ab.py --pairs 4     # both, interleaved -> results/bench/startup_ab.json
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVENTS: list[tuple[float, str]] = []


def process_start() -> float:
    ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
    boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


T0 = process_start()


def mark(what: str) -> None:
    EVENTS.append((round(time.time() - T0, 2), what))
    print(f"{EVENTS[-1][0]:6.2f} {what}", flush=True)


mark("python up")
sys.path.insert(0, str(ROOT))
TMP = Path(tempfile.mkdtemp(prefix="bench-startup-"))
os.environ["FEDLAB_TIMELINE"] = str(TMP / "clients.jsonl")  # the Ray workers inherit it
ARGV = ["run", "rounds=2", f"out_dir={TMP / 'run'}"]
EARLY = "--no-early-ray" not in sys.argv
OUT = Path(sys.argv[sys.argv.index("--out") + 1]) if "--out" in sys.argv else ROOT / "results" / "bench" / "startup.json"
from fedlab_app import ray_start  # noqa: E402

if EARLY:
    ray_start.start_early(ARGV)  # as the fedlab script does (fedlab_app/launch.py)
    mark("Ray starting (thread)")
    ray_start.wait_until_up()
    mark("Ray up")
from fedlab_app import cli  # noqa: E402

mark("CLI imported")
import fedlab_app.driver as driver  # noqa: E402
import fedlab_app.plots as plots  # noqa: E402
import fedlab_app.simulate as simulate  # noqa: E402
import strategies.sync as sync  # noqa: E402
from fedlab_app.recorder import Recorder  # noqa: E402


def traced(mod, name: str, label: str) -> None:
    f = getattr(mod, name)

    @functools.wraps(f)
    def g(*a, **k):
        mark(f"> {label}")
        try:
            return f(*a, **k)
        finally:
            mark(f"< {label}")
    setattr(mod, name, g)


def main() -> None:
    for mod, name, label in [(simulate, "_run_flower", "simulation"), (driver, "initial_arrays", "initial model"),
                             (plots, "plot_label_distribution", "label plot"),
                             (driver, "wait_for_nodes", "wait for nodes"), (driver, "discover", "ask the nodes"),
                             (sync.SyncMode, "round", "round (train + aggregate)"),
                             (ray_start, "start", "Ray up (taken over or started)")]:
        traced(mod, name, label)
    end = Recorder._complete_round  # the round's record, whether made in turn or beside the next round

    def complete_round(self, rnd, *a, **k):
        out = end(self, rnd, *a, **k)
        mark(f"end of round {rnd} (evaluation, checkpoint)")
        return out
    Recorder._complete_round = complete_round
    tmp, clients = TMP, TMP / "clients.jsonl"
    sys.argv = ["fedlab", *ARGV]
    try:
        cli.main()
    except SystemExit:
        pass
    mark("exit")
    workers = [{k: round(v - T0, 2) if k in ("start", "loaded", "handler", "data", "trained") else v
                for k, v in json.loads(line).items()} for line in clients.read_text().splitlines()]
    shutil.rmtree(tmp, ignore_errors=True)
    res = {"what": "timeline of `fedlab run rounds=2` (default experiment), seconds since the process started",
           "command": "python bench/bench_startup.py" + ("" if EARLY else " --no-early-ray"), "early_ray": EARLY,
           "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "load_average": os.getloadavg(), "server": [{"t": t, "event": e} for t, e in EVENTS],
           "workers": workers}
    out = OUT
    out.write_text(json.dumps(res, indent=2))
    for w in workers:
        print(w)


if __name__ == "__main__":
    main()

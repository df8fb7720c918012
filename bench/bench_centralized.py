"""Benchmark: centralized training throughput (images/s) of fedlab against a bare PyTorch loop.

Same model class, batch size, optimizer (SGD, momentum 0.9) and thread count; one epoch per call,
in one process. Variants:

    fedlab    ``clients.train.train(...)`` called exactly as ``fedlab_app/centralized.py`` calls it
              (config composed by Hydra as ``fedlab run strategy=centralized ...`` composes it; the
              uint8 shard sliced with the seeded epoch permutation, normalized per batch, channels_last
              for models without BatchNorm, per-epoch reseeding, loss/accuracy accumulation, the
              per-50-step finite check, optimizer from ``clients.optim.make_optimizer``)
    bare      the straightforward loop: the whole training set converted ONCE to normalized float32,
              ``torch.randperm`` per epoch, slice, forward, cross-entropy, zero_grad, backward,
              ``torch.optim.SGD(momentum=0.9).step()``; no channels_last, no uint8, no bookkeeping
    bare_cl   the bare loop with the model and each batch in channels_last (only for the cases where
              fedlab uses channels_last, i.e. models without BatchNorm): separates the memory-format
              effect from the rest of fedlab's per-step work

With augmentation (CIFAR-10) both bare loops apply the same batched crop+flip
(``clients.augment.random_crop_flip``, pad 4) to the float batch; fedlab applies it to the uint8 batch.

Cases (``--cases``): ``fmnist32`` and ``fmnist128`` (Fashion-MNIST, LeNet-5, B=32/128, 60,000 images)
and ``cifar_bn128`` (CIFAR-10, LeNet-5 with BatchNorm + dropout 0.5, augmentation, B=128, 50,000
images; the first load decodes the offline copy, ~8 s, then it is cached).

Each case: a short warm-up of every variant, then ``--repeats`` rounds of one epoch per variant,
interleaved and with the order rotated each round (absolute speed on the shared machine drifts
15-25 %); medians and the ratio of medians fedlab/bare are reported. Other processes' CPU use during
each epoch is read from /proc/stat ("other load", in cores): two busy 2-thread processes on 2 cores
slow each other far more than 2x, so medians are taken over the clean epochs (other load < 0.25
cores) when each variant has at least 3 of them, over all epochs otherwise (the JSON says which);
before each epoch the run waits until the machine is quiet (at most ``--max-wait`` seconds in all).
The process is tuned as ``fedlab run strategy=centralized`` tunes it
(``clients.perf.tune_process``: ``--threads`` torch threads + glibc mallopt), for all variants
alike; ``--no-tune`` sets only the thread count. At the end each variant's model is evaluated on
the test set (a check that all of them trained).

``--steps N`` measures N steps per call instead of an epoch (fedlab through ``train(..., steps=N)``,
the same per-step code): the machine's speed drifts over tens of seconds (one variant's epochs vary
by up to 1.4x with nothing else running), so many short interleaved measurements give tighter
ratios than a few epochs; the JSON is then ``centralized_throughput_<N>steps.json``.

    python bench/bench_centralized.py [--repeats 5] [--cases fmnist32,fmnist128,cifar_bn128]
                                      [--steps 0] [--threads 2] [--max-wait 600] [--no-tune] [--out results/bench]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.augment import random_crop_flip  # noqa: E402
from clients.optim import make_optimizer  # noqa: E402
from clients.schedule import lr_at, scaled_lr  # noqa: E402
from clients.train import Normalizer, evaluate, train  # noqa: E402
from fedlab_app import config  # noqa: E402
from fedlab_app.config import PartitionCfg  # noqa: E402
from fedlab_app.local import fresh_model, local_data  # noqa: E402
from fedlab_app.models import build_model, use_channels_last  # noqa: E402
from clients.perf import tune_process  # noqa: E402

CASES = {  # name -> (description, Hydra overrides after strategy=centralized)
    "fmnist32": ("Fashion-MNIST, LeNet-5, B=32", ["client.batch_size=32"]),
    "fmnist128": ("Fashion-MNIST, LeNet-5, B=128", ["client.batch_size=128"]),
    "cifar_bn128": ("CIFAR-10, LeNet-5 + BN + dropout 0.5, crop+flip, B=128",
                    ["dataset=cifar10", "model=lenet5_bn", "client.batch_size=128"]),
}
WARMUP_STEPS = 30
QUIET = 0.25  # a measurement counts as clean when other processes used less than this many cores meanwhile
_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_counters() -> tuple[float, float]:
    """(seconds of busy CPU on the whole machine, seconds of CPU used by this process) so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    busy = sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)  # minus idle and iowait
    own = os.times()
    return busy / _TICK, own.user + own.system


def wait_quiet() -> float:
    """Wait until other processes use < QUIET cores over 1 s (at most ``--max-wait`` s over the whole run)."""
    waited = 0.0
    while _WAIT["left"] > 0:
        with Timer() as t:
            time.sleep(1.0)
        if t.other_load < QUIET:
            break
        waited += t.seconds
        _WAIT["left"] -= t.seconds
    return waited


_WAIT = {"left": 0.0}


class Timer:
    """Wall time of a block and the other processes' CPU load meanwhile (cores), from /proc/stat."""

    def __enter__(self) -> Timer:
        self.busy0, self.own0 = _cpu_counters()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        busy, own = _cpu_counters()
        self.other_load = max(0.0, (busy - self.busy0) - (own - self.own0)) / self.seconds


def compose(overrides: list[str]) -> config.Config:
    """The Config of ``fedlab run strategy=centralized <overrides>`` (Hydra compose + config.parse, as the CLI)."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        dcfg = hcompose(config_name="config", overrides=["strategy=centralized", *overrides])
    nested = OmegaConf.to_container(dcfg, resolve=True)
    nested.pop("hydra", None)
    return config.parse(config.flatten(nested))


class Fedlab:
    """fedlab's centralized path: the setup and per-epoch call of ``fedlab_app.centralized.run``."""

    name = "fedlab"

    def __init__(self, cfg: config.Config) -> None:
        self.cfg = cfg = dataclasses.replace(cfg, num_clients=1, partition=PartitionCfg())
        self.local = local_data(cfg, 0, 1)
        self.model = fresh_model(cfg, self.local, seed=cfg.seed)
        self.base = scaled_lr(cfg.client.lr, cfg.client.batch_size, cfg.schedule)
        self.opt = make_optimizer(self.model, cfg.optimizer, self.base)
        self.epoch = 0
        self.train_result_ips: list[float] = []  # num_examples / TrainResult.seconds of the timed calls

    def warmup(self, steps: int) -> None:
        c = self.cfg
        train(self.model, self.local.x, self.local.y, self.local.norm, self.opt, batch_size=c.client.batch_size,
              seed=c.seed, stream=0, first_epoch=10_000, steps=steps, lr=self.base, augment=self.local.augment)

    def measure(self, steps: int) -> int:
        """One call of ``train``: one epoch (``steps=0``, as centralized.run) or ``steps`` steps; images done."""
        c, params = self.cfg, self.cfg.strategy.params
        lr = lr_at(self.epoch, params.epochs, self.base, c.schedule)
        res = train(self.model, self.local.x, self.local.y, self.local.norm, self.opt,
                    batch_size=c.client.batch_size, seed=c.seed, stream=0, first_epoch=self.epoch,
                    epochs=0 if steps else 1, steps=steps, lr=lr, lr_fn=None, augment=self.local.augment)
        self.epoch += 1
        self.train_result_ips.append(res.num_examples / res.seconds)
        return res.num_examples

    def test_acc(self) -> float:
        d = self.local.data
        return evaluate(self.model, torch.from_numpy(d.x_test.copy()), torch.from_numpy(d.y_test.copy()),
                        self.local.norm)[1]


class Bare:
    """The straightforward PyTorch loop on pre-normalized float32 data (optionally channels_last)."""

    def __init__(self, fed: Fedlab, channels_last: bool) -> None:
        cfg, local = fed.cfg, fed.local
        self.name = "bare_cl" if channels_last else "bare"
        self.cl = channels_last
        self.batch_size = cfg.client.batch_size
        mean = torch.tensor(local.data.mean).view(1, -1, 1, 1)
        std = torch.tensor(local.data.std).view(1, -1, 1, 1)
        self.x = (local.x.float() / 255 - mean) / std  # the whole set, once
        self.y = local.y
        self.augment = local.augment is not None
        self.gen = torch.Generator().manual_seed(1)
        self.model = build_model(cfg.model, tuple(local.x.shape[1:]), local.data.num_classes, seed=cfg.seed)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=fed.base, momentum=cfg.optimizer.momentum)
        self.mean, self.std = local.data.mean, local.data.std

    def _step(self, idx: torch.Tensor) -> None:
        xb = self.x[idx]
        if self.augment:
            xb = random_crop_flip(xb, 4, self.gen)
        if self.cl:
            xb = xb.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(self.model(xb), self.y[idx])
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()

    def warmup(self, steps: int) -> None:
        self.model.train()
        perm = torch.randperm(len(self.y))
        for s in range(steps):
            self._step(perm[s * self.batch_size:(s + 1) * self.batch_size])

    def measure(self, steps: int) -> int:
        """One epoch (``steps=0``) or the first ``steps`` batches of a fresh permutation; images done."""
        self.model.train()
        n, b = len(self.y), self.batch_size
        perm = torch.randperm(n)
        stop = min(n, steps * b) if steps else n
        for i in range(0, stop, b):
            self._step(perm[i:i + b])
        return stop

    def test_acc(self, data) -> float:
        norm = Normalizer.from_stats(self.mean, self.std, self.cl)
        return evaluate(self.model, torch.from_numpy(data.x_test.copy()), torch.from_numpy(data.y_test.copy()),
                        norm)[1]


def run_case(name: str, repeats: int, steps: int) -> dict:
    desc, overrides = CASES[name]
    cfg = compose(overrides)
    t0 = time.perf_counter()
    fed = Fedlab(cfg)
    load_s = time.perf_counter() - t0
    variants = [fed, Bare(fed, channels_last=False)]
    if use_channels_last(cfg.model):  # fedlab trains this model in channels_last
        variants.append(Bare(fed, channels_last=True))
    for v in variants:
        v.warmup(WARMUP_STEPS)
    raw: dict[str, list[float]] = {v.name: [] for v in variants}
    load: dict[str, list[float]] = {v.name: [] for v in variants}
    for r in range(repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:  # rotate the order each repeat
            waited = wait_quiet()
            if waited:
                print(f"  (waited {waited:.0f} s for other processes to go quiet)", flush=True)
            with Timer() as t:
                n = v.measure(steps)
            raw[v.name].append(n / t.seconds)
            load[v.name].append(t.other_load)
        print(f"  [{name}] repeat {r + 1}/{repeats}: "
              + ", ".join(f"{k} {vals[-1]:,.0f} (other load {load[k][-1]:.2f})" for k, vals in raw.items())
              + " images/s", flush=True)
    # Medians over the clean repeats (other processes quiet) when every variant has at least 3 of them.
    clean = {k: [x for x, o in zip(vals, load[k]) if o < QUIET] for k, vals in raw.items()}
    use_clean = all(len(c) >= 3 for c in clean.values())
    med = {k: statistics.median(clean[k] if use_clean else vals) for k, vals in raw.items()}
    # Paired: fedlab's throughput over a bare loop's in the same repeat (a few seconds apart), median.
    paired = {b: statistics.median([f / x for f, x, lf, lx in zip(raw["fedlab"], raw[b], load["fedlab"], load[b])
                                    if not use_clean or max(lf, lx) < QUIET] or [math.nan])
              for b in raw if b != "fedlab"}
    # Best (fastest) measurement: the speed each loop reaches when the machine is in its fast state;
    # slow-downs from outside only add time (cf. timeit's advice to take the minimum).
    best = {k: max(vals) for k, vals in raw.items()}
    n_train = len(fed.local.y)
    res = {
        "description": desc,
        "overrides": ["strategy=centralized", *overrides],
        "train_images": n_train, "batch_size": fed.cfg.client.batch_size,
        "fedlab_channels_last": use_channels_last(cfg.model), "augment": fed.local.augment is not None,
        "data_load_s": load_s,
        "median_images_per_s": med,
        "ratio_fedlab_over_bare": med["fedlab"] / med["bare"],
        "paired_ratio_fedlab_over_bare": paired["bare"],
        "best_images_per_s": best,
        "ratio_of_best_fedlab_over_bare": best["fedlab"] / best["bare"],
        "raw_images_per_s": raw,
        "raw_other_load_cores": load,
        "medians_over": f"repeats with other load < {QUIET} cores" if use_clean else "all repeats (too few clean ones)",
        "fedlab_images_per_s_from_TrainResult_seconds": fed.train_result_ips,
        "test_acc_after": {v.name: (v.test_acc() if v is fed else v.test_acc(fed.local.data)) for v in variants},
        "measurements_each": repeats,
        "unit": f"{steps} steps" if steps else "one epoch",
    }
    if "bare_cl" in med:
        res["ratio_fedlab_over_bare_cl"] = med["fedlab"] / med["bare_cl"]
        res["ratio_bare_cl_over_bare"] = med["bare_cl"] / med["bare"]
        res["paired_ratio_fedlab_over_bare_cl"] = paired["bare_cl"]
        res["ratio_of_best_fedlab_over_bare_cl"] = best["fedlab"] / best["bare_cl"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="measurements per variant and case (interleaved)")
    ap.add_argument("--steps", type=int, default=0,
                    help="0: whole epochs per measurement (as centralized training calls train); N > 0: N steps")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-tune", action="store_true", help="set only the thread count, leave glibc malloc default")
    ap.add_argument("--max-wait", type=float, default=600.0,
                    help="seconds in all that the run may wait, before an epoch, for other processes to go quiet")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    if args.no_tune:
        torch.set_num_threads(args.threads)
    else:
        tune_process(args.threads)
    _WAIT["left"] = args.max_wait
    t_start = time.perf_counter()
    cases = {}
    for name in args.cases.split(","):
        print(f"{name}: {CASES[name][0]}", flush=True)
        cases[name] = run_case(name, args.repeats, args.steps)
    res = {
        "what": "centralized training throughput (images/s) of fedlab's "
                "clients.train.train against a bare PyTorch loop (same model, batch size, SGD momentum 0.9, threads)",
        "command": "python bench/bench_centralized.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "tuned": not args.no_tune},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_s": time.perf_counter() - t_start,
        "waited_for_quiet_s": args.max_wait - _WAIT["left"],
        "cases": cases,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fname = f"centralized_throughput_{args.steps}steps.json" if args.steps else "centralized_throughput.json"
    path = out / fname
    path.write_text(json.dumps(res, indent=2))
    print()
    print("| case | fedlab img/s | bare img/s | bare channels_last img/s | fedlab / bare "
          "| fedlab / bare_cl |")
    print("|---|---|---|---|---|---|")
    for c in cases.values():
        m = c["median_images_per_s"]
        cl, rcl = "n/a (BN: fedlab uses NCHW)", "-"
        if "bare_cl" in m:
            cl = f"{m['bare_cl']:,.0f}"
            rcl = (f"{c['ratio_fedlab_over_bare_cl']:.2f} / {c['paired_ratio_fedlab_over_bare_cl']:.2f} / "
                   f"{c['ratio_of_best_fedlab_over_bare_cl']:.2f}")
        print(f"| {c['description']} | {m['fedlab']:,.0f} | {m['bare']:,.0f} | {cl} | "
              f"{c['ratio_fedlab_over_bare']:.2f} / {c['paired_ratio_fedlab_over_bare']:.2f} / "
              f"{c['ratio_of_best_fedlab_over_bare']:.2f} | {rcl} |")
    unit = f"{args.steps}-step measurements" if args.steps else "one-epoch measurements"
    print(f"\nmedians of {args.repeats} interleaved {unit} per variant; ratios: of the medians / "
          f"median of per-repeat ratios / of the best measurements; {torch.get_num_threads()} threads; "
          f"{res['total_s']:.0f} s in all; written to {path}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()

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
15-25 %); medians and the ratio of medians fedlab/bare are reported. The process is tuned as
``fedlab run strategy=centralized`` tunes it (``fedlab_app.perf.tune_process``: ``--threads`` torch
threads + glibc mallopt), for all variants alike; ``--no-tune`` sets only the thread count.
At the end each variant's model is evaluated on the test set (a check that all of them trained).

    python bench/bench_centralized.py [--repeats 5] [--cases fmnist32,fmnist128,cifar_bn128] [--threads 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from fedlab_app.perf import tune_process  # noqa: E402

CASES = {  # name -> (description, Hydra overrides after strategy=centralized)
    "fmnist32": ("Fashion-MNIST, LeNet-5, B=32", ["client.batch_size=32"]),
    "fmnist128": ("Fashion-MNIST, LeNet-5, B=128", ["client.batch_size=128"]),
    "cifar_bn128": ("CIFAR-10, LeNet-5 + BN + dropout 0.5, crop+flip, B=128",
                    ["dataset=cifar10", "model=lenet5_bn", "client.batch_size=128"]),
}
WARMUP_STEPS = 30


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
        self.train_seconds: list[float] = []  # TrainResult.seconds of the timed epochs

    def warmup(self, steps: int) -> None:
        c = self.cfg
        train(self.model, self.local.x, self.local.y, self.local.norm, self.opt, batch_size=c.client.batch_size,
              seed=c.seed, stream=0, first_epoch=10_000, steps=steps, lr=self.base, augment=self.local.augment)

    def epoch_images(self) -> int:
        c, params = self.cfg, self.cfg.strategy.params
        lr = lr_at(self.epoch, params.epochs, self.base, c.schedule)
        res = train(self.model, self.local.x, self.local.y, self.local.norm, self.opt,
                    batch_size=c.client.batch_size, seed=c.seed, stream=0, first_epoch=self.epoch, epochs=1,
                    lr=lr, lr_fn=None, augment=self.local.augment)
        self.epoch += 1
        self.train_seconds.append(res.seconds)
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

    def epoch_images(self) -> int:
        self.model.train()
        n, b = len(self.y), self.batch_size
        perm = torch.randperm(n)
        for i in range(0, n, b):
            self._step(perm[i:i + b])
        return n

    def test_acc(self, data) -> float:
        norm = Normalizer.from_stats(self.mean, self.std, self.cl)
        return evaluate(self.model, torch.from_numpy(data.x_test.copy()), torch.from_numpy(data.y_test.copy()),
                        norm)[1]


def run_case(name: str, repeats: int) -> dict:
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
    for r in range(repeats):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:  # rotate the order each repeat
            t = time.perf_counter()
            n = v.epoch_images()
            raw[v.name].append(n / (time.perf_counter() - t))
        print(f"  [{name}] repeat {r + 1}/{repeats}: "
              + ", ".join(f"{k} {vals[-1]:,.0f}" for k, vals in raw.items()) + " images/s", flush=True)
    med = {k: statistics.median(vals) for k, vals in raw.items()}
    n_train = len(fed.local.y)
    res = {
        "description": desc,
        "overrides": ["strategy=centralized", *overrides],
        "train_images": n_train, "batch_size": fed.cfg.client.batch_size,
        "fedlab_channels_last": use_channels_last(cfg.model), "augment": fed.local.augment is not None,
        "data_load_s": load_s,
        "median_images_per_s": med,
        "ratio_fedlab_over_bare": med["fedlab"] / med["bare"],
        "raw_images_per_s": raw,
        "fedlab_images_per_s_from_TrainResult_seconds": [n_train / s for s in fed.train_seconds],
        "test_acc_after": {v.name: (v.test_acc() if v is fed else v.test_acc(fed.local.data)) for v in variants},
        "epochs_each": repeats,
    }
    if "bare_cl" in med:
        res["ratio_fedlab_over_bare_cl"] = med["fedlab"] / med["bare_cl"]
        res["ratio_bare_cl_over_bare"] = med["bare_cl"] / med["bare"]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="epochs per variant and case (interleaved)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--no-tune", action="store_true", help="set only the thread count, leave glibc malloc default")
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    if args.no_tune:
        torch.set_num_threads(args.threads)
    else:
        tune_process(args.threads)
    t_start = time.perf_counter()
    cases = {}
    for name in args.cases.split(","):
        print(f"{name}: {CASES[name][0]}", flush=True)
        cases[name] = run_case(name, args.repeats)
    res = {
        "what": "centralized training throughput (images/s, one epoch per measurement) of fedlab's "
                "clients.train.train against a bare PyTorch loop (same model, batch size, SGD momentum 0.9, threads)",
        "command": "python bench/bench_centralized.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "python": platform.python_version(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(), "tuned": not args.no_tune},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "total_s": time.perf_counter() - t_start,
        "cases": cases,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "centralized_throughput.json").write_text(json.dumps(res, indent=2))
    print()
    print("| case | fedlab img/s | bare img/s | bare channels_last img/s | fedlab / bare | fedlab / bare_cl |")
    print("|---|---|---|---|---|---|")
    for name, c in cases.items():
        m = c["median_images_per_s"]
        cl = f"{m['bare_cl']:,.0f}" if "bare_cl" in m else "n/a (BN: fedlab uses NCHW)"
        rcl = f"{c['ratio_fedlab_over_bare_cl']:.2f}" if "bare_cl" in m else "-"
        print(f"| {c['description']} | {m['fedlab']:,.0f} | {m['bare']:,.0f} | {cl} | "
              f"{c['ratio_fedlab_over_bare']:.2f} | {rcl} |")
    print(f"\nmedians of {args.repeats} interleaved epochs per variant; {torch.get_num_threads()} threads; "
          f"{res['total_s']:.0f} s in all; written to {out / 'centralized_throughput.json'}")


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

"""Benchmark: batched random crop + flip (clients/augment.py) against plain slicing and a per-sample loop.

Data: random uint8 CIFAR-size images (N, 3, 32, 32), mini-batches of 128 sliced in order from an
in-memory tensor (as the trainer does with a pre-shuffled shard). Three input pipelines per batch:

    plain    xb = data[i:i+B].float() / 255
    batched  xb = random_crop_flip(data[i:i+B], pad=4, g).float() / 255        (one gather)
    loop     per sample: F.pad, torch.randint offsets, slice, coin flip, torch.flip; torch.stack;
             then .float() / 255  (what a per-sample tensor transform does, without DataLoader)

Part 1 times the pipelines alone (one pass over ``--n`` images). Part 2 (skip with ``--no-train``)
adds a LeNet-5 forward + backward + SGD-momentum step per batch, which is what the augmentation has
to hide behind in training (PERF-NOTES: batched keeps 0.91-0.92 of plain speed, per-sample 0.71-0.78).
Variants are interleaved within each repeat and medians reported; ratios are throughput relative
to ``plain`` (plain time / variant time), comparable within one run only (the machine drifts).

The process is tuned as training processes are (``clients.perf.tune_process``: 1 thread, glibc
mallopt so that freed batch buffers are not returned to the OS); ``--no-tune`` leaves glibc default.

    python bench/bench_augment.py [--n 20000] [--train-n 3200] [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clients.augment import random_crop_flip  # noqa: E402
from clients.perf import tune_process  # noqa: E402

B, PAD = 128, 4


def plain(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return xb.float().mul_(1 / 255)


def batched(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return random_crop_flip(xb, PAD, g).float().mul_(1 / 255)


def loop(xb: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    h, w = xb.shape[-2:]
    out = []
    for img in xb:  # (C, H, W)
        p = F.pad(img, (PAD, PAD, PAD, PAD))
        oy, ox = torch.randint(0, 2 * PAD + 1, (2,), generator=g).tolist()
        crop = p[:, oy:oy + h, ox:ox + w]
        if torch.rand((), generator=g).item() < 0.5:
            crop = torch.flip(crop, dims=[-1])
        out.append(crop)
    return torch.stack(out).float().mul_(1 / 255)


VARIANTS = {"plain": plain, "batched": batched, "loop": loop}


def lenet() -> nn.Module:
    """LeNet-5 for 3x32x32 inputs (as in PERF-NOTES)."""
    return nn.Sequential(nn.Conv2d(3, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(6, 16, 5), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84),
                         nn.ReLU(), nn.Linear(84, 10))


def one_pass(data: torch.Tensor, labels: torch.Tensor, fn, train: bool) -> float:
    """Seconds for one pass over ``data`` in batches of B with pipeline ``fn`` (+ a training step)."""
    g = torch.Generator().manual_seed(0)
    if train:
        torch.manual_seed(0)
        model = lenet()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    t0 = time.perf_counter()
    for i in range(0, data.shape[0], B):
        xb = fn(data[i:i + B], g)  # (B, 3, 32, 32) float32
        if train:
            loss = F.cross_entropy(model(xb), labels[i:i + B])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return time.perf_counter() - t0


def bench(data, labels, repeats: int, train: bool) -> dict:
    """Interleaved repeats of every variant; medians of the pass times and throughput ratios."""
    for fn in VARIANTS.values():  # warm-up
        one_pass(data[:4 * B], labels[:4 * B], fn, train)
    times = {k: [] for k in VARIANTS}
    for _ in range(repeats):
        for k, fn in VARIANTS.items():
            times[k].append(one_pass(data, labels, fn, train))
    n_batches = -(-data.shape[0] // B)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "images": data.shape[0], "repeats": repeats,
        "median_s": med,
        "images_per_s": {k: data.shape[0] / t for k, t in med.items()},
        "us_per_batch": {k: 1e6 * t / n_batches for k, t in med.items()},
        "ratio_vs_plain": {k: med["plain"] / t for k, t in med.items()},
    }


def show(title: str, r: dict) -> None:
    print(f"\n{title}: {r['images']} images, batch {B}, median of {r['repeats']} interleaved repeats")
    print(f"  {'variant':8s} {'median s':>9s} {'images/s':>11s} {'us/batch':>9s} {'vs plain':>9s}")
    for k in VARIANTS:
        print(f"  {k:8s} {r['median_s'][k]:9.4f} {r['images_per_s'][k]:11.0f} "
              f"{r['us_per_batch'][k]:9.1f} {r['ratio_vs_plain'][k]:9.3f}")
    print(f"  batched / loop throughput: {r['median_s']['loop'] / r['median_s']['batched']:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="images for the pipeline-only pass")
    ap.add_argument("--train-n", type=int, default=3200, help="images for the pass with training")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (simulation actors use 1)")
    ap.add_argument("--no-tune", action="store_true", help="keep glibc malloc defaults")
    ap.add_argument("--no-train", action="store_true", help="skip the pass with a LeNet-5 step")
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    args = ap.parse_args()

    if args.no_tune:
        torch.set_num_threads(args.threads)
    else:
        tune_process(args.threads)
    gen = torch.Generator().manual_seed(0)
    data = torch.randint(0, 256, (args.n, 3, 32, 32), generator=gen, dtype=torch.uint8)  # (N, 3, 32, 32)
    labels = torch.randint(0, 10, (args.n,), generator=gen)  # (N,)
    print(f"torch {torch.__version__}, {args.threads} thread(s), mallopt tuned: {not args.no_tune}")
    res = {"torch": torch.__version__, "threads": args.threads, "tuned": not args.no_tune,
           "batch": B, "pad": PAD}
    res["pipeline"] = bench(data, labels, args.repeats, train=False)
    show("Input pipeline only", res["pipeline"])
    if not args.no_train:
        m = min(args.train_n, args.n)
        res["with_training"] = bench(data[:m], labels[:m], args.repeats, train=True)
        show("Input pipeline + LeNet-5 training step", res["with_training"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

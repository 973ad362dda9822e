"""Integer EOQ training step against fp32 and the simulator, batch 128, 2 threads.

For ResNet-20 (CIFAR layout, 16-64 channels) and the ImageNet-layout ResNet-18 on 32x32 inputs
(64-512 channels), all Fixup: median step time (``--repeats`` steps after ``--warmup``, the three
kinds interleaved) of fp32, simulated EOQ and integer EOQ on real CIFAR-10 test images, and the
ratios. All three get channels-last input batches (fp32 and the simulator are faster that way too,
and the integer engine needs no layout copies). ``--profile`` adds a per-operator table for the
integer step. The last two lines are ``int_eoq/fp32 resnet20 = <ratio>`` and ``int_eoq/fp32 resnet18 = <ratio>``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import setup, test_images

from eoq.training.loop import train_step
from eoq.training.setup import setup as eoq_setup

KINDS = {"fp32": ("fp32", "sim"), "sim_eoq": ("eoq", "sim"), "int_eoq": ("eoq", "int")}


def make(model: str, preset: str, engine: str):
    s = eoq_setup(model, "fixup", preset, seed=0, rounding_seed=1, engine=engine, lr=0.05, momentum=0.875)
    return s.model, s.optimizer


def measure(model: str, batch: int, repeats: int, warmup: int, profile: bool) -> dict:
    x, y = test_images(batch)
    x = x.contiguous(memory_format=torch.channels_last)   # all three steps: each one's faster layout
    runs = {k: make(model, *v) for k, v in KINDS.items()}
    times = {k: [] for k in runs}
    for i in range(warmup + repeats):
        for k, (net, opt) in runs.items():
            t = time.perf_counter()
            train_step(net, opt, x, y)
            if i >= warmup:
                times[k].append(time.perf_counter() - t)
    if profile:
        from torch.profiler import profile as prof
        net, opt = runs["int_eoq"]
        with prof() as p:
            for _ in range(3):
                train_step(net, opt, x, y)
        print(p.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return {k: statistics.median(t) * 1000 for k, t in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    setup(args.threads)
    ratios = {}
    for model in ("resnet20", "resnet18"):
        med = measure(model, args.batch_size, args.repeats, args.warmup, args.profile)
        ratios[model] = med["int_eoq"] / med["fp32"]
        print(f"{model} batch {args.batch_size}: fp32 {med['fp32']:.1f} ms, sim eoq {med['sim_eoq']:.1f} ms, "
              f"int eoq {med['int_eoq']:.1f} ms; sim/fp32 {med['sim_eoq'] / med['fp32']:.3f}, "
              f"int/sim {med['int_eoq'] / med['sim_eoq']:.3f}")
    for model, r in ratios.items():
        print(f"int_eoq/fp32 {model} = {r:.3f}")


if __name__ == "__main__":
    main()

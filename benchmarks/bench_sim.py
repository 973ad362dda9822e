"""Simulated EOQ training step against fp32, ResNet-20 Fixup, batch 128 and batch 8, 2 threads.

One process, real CIFAR-10 test images, the fp32 and EOQ steps interleaved (so that drift of the
shared machine hits both), medians of ``--repeats`` steps after ``--warmup`` steps. The fp32
baseline is the same model and training step with the ``fp32`` preset (PyTorch's own conv path
and SGD), in the same memory layout. Prints the kernel status, both medians and their ratio per
batch size; the last line is ``sim_eoq/fp32 = <ratio at batch 128>``.

The glibc allocator returns large blocks to the OS and page-faults them back each step; the
benchmarks apply the allocator settings `eoq train` uses (eoq/engine/allocator.py) to both steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import setup, test_images

from eoq import kernels
from eoq.engine import allocator
from eoq.training.loop import train_step
from eoq.training.setup import setup as eoq_setup


def make(preset: str, channels_last: bool):
    s = eoq_setup("resnet20", "fixup", preset, seed=0, rounding_seed=1, lr=0.05, momentum=0.875,
                  channels_last=channels_last)
    return s.model, s.optimizer


def measure(batch: int, repeats: int, warmup: int, channels_last: bool) -> dict:
    x, y = test_images(batch)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    runs = {p: make(p, channels_last) for p in ("fp32", "eoq")}
    times = {p: [] for p in runs}
    for i in range(warmup + repeats):
        for p, (model, opt) in runs.items():
            t = time.perf_counter()
            train_step(model, opt, x, y)
            if i >= warmup:
                times[p].append(time.perf_counter() - t)
    return {p: statistics.median(t) * 1000 for p, t in times.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--channels-last", action="store_true", help="both models in NHWC layout")
    args = ap.parse_args()
    setup(args.threads)
    print(f"fused kernels: {'on' if kernels.load() is not None else 'off (torch reference)'}; "
          f"threads {args.threads}; layout {'channels_last' if args.channels_last else 'NCHW'}; "
          f"allocator tuned: {allocator.tune()}")
    ratios = {}
    for batch in (8, 128):
        med = measure(batch, args.repeats, args.warmup, args.channels_last)
        ratios[batch] = med["eoq"] / med["fp32"]
        print(f"batch {batch:3d}: fp32 {med['fp32']:.1f} ms, sim eoq {med['eoq']:.1f} ms, "
              f"sim_eoq/fp32 = {ratios[batch]:.3f}")
    print(f"sim_eoq/fp32 batch 8 = {ratios[8]:.3f}")
    print(f"sim_eoq/fp32 = {ratios[128]:.3f}")


if __name__ == "__main__":
    main()

"""Shared helpers for benchmarks: thread setup, CIFAR-10 test images, medians of repeated timings."""
from __future__ import annotations

import statistics
import time

import torch

from eoq.engine import allocator
from eoq.training.batches import to_float
from eoq.training.data import load_cifar10


def setup(threads: int = 2) -> None:
    """Threads, and the allocator settings ``eoq train`` uses (eoq/engine/allocator.py)."""
    allocator.tune()
    torch.set_num_threads(threads)


def test_images(n: int = 64):
    """The first ``n`` CIFAR-10 test images (full JPEG copy if present, else the embedded subset)."""
    try:
        ds = load_cifar10()
    except Exception:
        ds = load_cifar10("embedded")
    idx = torch.randperm(len(ds.test_y), generator=torch.Generator().manual_seed(0))[:n].numpy()
    return to_float(torch.from_numpy(ds.test_x[idx])), torch.from_numpy(ds.test_y[idx])


def median_time(fn, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)

"""Overhead of quantization statistics collected every 50 steps (EOQ ResNet-20, batch 128, 2 threads).

Medians (one run, same process, the three kinds of step interleaved) of: a plain training step; a
step with the collector attached but not sampling; a sampled step. With sampling every N = 50
steps the overhead per step is
    ((idle - plain) + (sampled - plain) / N) / plain.
Last line: ``qstats overhead = <fraction>``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import setup

from analysis.qstats.stats import QStatsCollector
from eoq.quant.observe import observing
from eoq.training.loop import train_step
from eoq.training.setup import setup as eoq_setup


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup(args.threads)
    s = eoq_setup("resnet20", "fixup", "eoq", seed=0, rounding_seed=0, lr=0.05)
    model, opt = s.model, s.optimizer
    x, y = torch.randn(128, 3, 32, 32), torch.randint(0, 10, (128,))

    def step():
        train_step(model, opt, x, y)

    collector = QStatsCollector(args.every)

    def attached(sample: bool):
        def run():
            with observing(collector):
                collector.step_begin(0 if sample else 1)
                step()
        return run

    for _ in range(2):
        step()                          # warm-up
    kinds = {"plain": step, "idle": attached(False), "sampled": attached(True)}
    times = {k: [] for k in kinds}
    for _ in range(args.repeats):      # interleaved, so that drift of the shared machine hits all three
        for k, fn in kinds.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    plain, idle, sampled = (statistics.median(times[k]) for k in kinds)
    overhead = ((idle - plain) + (sampled - plain) / args.every) / plain
    print(f"plain step {plain * 1e3:.1f} ms, collector idle {idle * 1e3:.1f} ms, sampled step {sampled * 1e3:.1f} ms "
          f"({len(collector.rows)} rows recorded)")
    print(f"qstats overhead = {max(overhead, 0.0):.4f}")


if __name__ == "__main__":
    main()

"""What the allocator settings of ``eoq train`` (eoq/engine/allocator.py) save on activation-sized tensors.

Times a ReLU backward plus one multiply over an 8 M-float tensor (a ResNet-18 activation at
batch 128 on 32x32: 32 MiB), each step allocating fresh outputs, as a training step does. Runs
the same loop in two fresh processes, glibc defaults (EOQ_MALLOC_TUNE=0) and tuned, and prints
the medians and their ratio; the last line is ``tuned/default = <ratio>``.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

LOOP = r"""
import statistics, sys, time, torch
sys.path.insert(0, sys.argv[3])
from eoq.engine import allocator
allocator.tune()
torch.set_num_threads(int(sys.argv[2]))
x, g = torch.randn(128, 64, 32, 32), torch.randn(128, 64, 32, 32)
times = []
for _ in range(int(sys.argv[1])):
    t = time.perf_counter()
    y = torch.ops.aten.threshold_backward(g, x, 0.0)
    z = y * 2.0
    times.append(time.perf_counter() - t)
    del y, z
print(statistics.median(times[2:]) * 1000)
"""


def run(tuned: bool, repeats: int, threads: int) -> float:
    env = dict(os.environ, EOQ_MALLOC_TUNE="1" if tuned else "0")
    out = subprocess.run([sys.executable, "-c", LOOP, str(repeats), str(threads)], env=env,
                         capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=22)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    default, tuned = run(False, args.repeats, args.threads), run(True, args.repeats, args.threads)
    print(f"relu backward + multiply, 8 M floats, {args.threads} threads: "
          f"glibc defaults {default:.1f} ms, tuned {tuned:.1f} ms")
    print(f"tuned/default = {tuned / default:.3f}")


if __name__ == "__main__":
    main()

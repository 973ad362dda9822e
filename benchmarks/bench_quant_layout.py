"""SQ quantizer kernel, NCHW against channels-last memory, batch 128, 2 threads.

For ResNet-20's three stage shapes, the median milliseconds of ``quantizers.sq_integer`` (8-bit,
the kernel path) with stochastic rounding (E) and nearest rounding (A), on an NCHW-contiguous and
on a channels-last tensor holding the same values. The random bits depend only on the logical
index, so both layouts give the same codes; this prints what the layout costs.
"""
from __future__ import annotations

import argparse

import torch
from common import median_time, setup

from eoq.quant import quantizers as Q

SHAPES = [(128, 16, 32, 32), (128, 32, 16, 16), (128, 64, 8, 8)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    setup(2)
    gen = torch.Generator().manual_seed(0)
    print("| shape | rounding | NCHW ms | channels-last ms |")
    print("|---|---|---:|---:|")
    for shape in SHAPES:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
        cl = x.contiguous(memory_format=torch.channels_last)
        for rounding in ("stochastic", "nearest"):
            t = [median_time(lambda v=v: Q.sq_integer(v, 8, rounding, gen), args.repeats) * 1000 for v in (x, cl)]
            print(f"| {'x'.join(map(str, shape))} | {rounding} | {t[0]:.2f} | {t[1]:.2f} |")


if __name__ == "__main__":
    main()

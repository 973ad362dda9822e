"""One 3x3 stride-1 convolution per layer width, batch 128, 2 threads: the integer engine's three
paths side by side, in one run.

For each shape (channels in = out, image size) the median milliseconds of the forward, the input
gradient and the weight gradient on integer codes:
``gemm`` (NHWC im2col + ``torch._int_mm`` a block of images at a time, the accumulator written as
float32: what the engine runs), ``vnni`` (the direct kernels of
:mod:`eoq.engine.direct` on AVX-512 VNNI instructions) and ``amx`` (the same on AMX tiles, where the
CPU and OS allow). The last column says which path the engine takes for that width here. The
shapes are ResNet-20's stages (16-64 channels) and ResNet-18's on 32x32 inputs (64-512).
"""
from __future__ import annotations

import argparse
import sys

import torch
from common import median_time, setup

from eoq import kernels
from eoq.engine import direct
from eoq.engine import intengine as IE

SHAPES = [(16, 32), (32, 16), (64, 8), (64, 32), (128, 16), (256, 8), (512, 4)]


def paths(c: int, h: int, batch: int, repeats: int):
    """{path: (forward, input grad, weight grad) ms} for c channels at h x h."""
    kern = kernels.load()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(-127, 128, (batch, h, h, c), dtype=torch.int8, generator=g)
    e = torch.randint(-127, 128, (batch, h, h, c), dtype=torch.int8, generator=g)
    w = torch.randint(-127, 128, (c, c, 3, 3), dtype=torch.int8, generator=g)
    wm, dw = IE.weight_mats(w), direct.weights(w)
    # the engine's GEMM path: blocks of images (im2col block, int32 accumulator written as float32)
    gemm_fwd = lambda: IE.conv_float(a, wm, 1, 1, -3)                          # noqa: E731
    gemm_bwd = lambda: IE.input_grad_float(e, wm, 1, 1, (h, h), -3)            # noqa: E731
    gemm_wgrad = lambda: IE.conv_weight_grad(a, e, 3, 3, 1, 1)                 # noqa: E731
    res = {"gemm": [median_time(f, repeats) for f in (gemm_fwd, gemm_bwd, gemm_wgrad)]}
    for name, amx in (("vnni", False), ("amx", True)):
        if amx and not kern.amx_available():
            continue
        xu = direct.pad_input(kern, a, 1)
        fns = (lambda: kern.direct_conv(direct.pad_input(kern, a, 1), dw.fwd, dw.fwd_corr, 3, 3, -3, amx),
               lambda: kern.direct_conv(direct.pad_input(kern, e, 1), dw.bwd, dw.bwd_corr, 3, 3, -3, amx),
               lambda: kern.direct_wgrad(xu, e, 3, 3, c, amx))
        res[name] = [median_time(f, repeats) for f in fns]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    setup(2)
    if direct.module() is None:
        sys.exit("bench_direct: the direct kernels need AVX-512 VNNI and the compiled kernels")
    print("| channels x size | path | forward ms | input grad ms | weight grad ms | sum ms | engine uses |")
    print("|---|---|---:|---:|---:|---:|---|")
    for c, h in SHAPES:
        r = direct.route(torch.nn.Conv2d(c, c, 3, padding=1), True)
        used = "gemm"
        if r.conv:
            used = "direct (amx)" if direct.use_amx(direct.module()) else "direct (vnni)"
            used += "" if r.wgrad else ", weight grad gemm"
        for name, t in paths(c, h, args.batch_size, args.repeats).items():
            ms = [x * 1000 for x in t]
            print(f"| {c} x {h}x{h} | {name} | {ms[0]:.2f} | {ms[1]:.2f} | {ms[2]:.2f} | {sum(ms):.2f} | {used} |")


if __name__ == "__main__":
    main()

"""Where the integer ResNet-20 step spends its time, by engine function (default batch 128, 2 threads).

Wraps the integer engine's entry points in timers (``eoq.quant.quantizers.sq_integer`` for the A and E
codes, the direct VNNI kernels of :mod:`eoq.engine.direct`, the blocked im2col + ``_int_mm`` paths of
:mod:`eoq.engine.intengine`, G rounding, the 16-bit stream's kernels, the Fixup scalars' sums, the
optimizer) and prints the mean milliseconds per training step of each, after ``--warmup`` steps.
The remainder of the step is autograd, layout copies, the loss, the option-A shortcut and the
pooling head. Nested entries are not double counted: the wrapped functions do not call one another.
"""
from __future__ import annotations

import argparse
import collections
import time

import torch
from bench_int import make
from common import setup, test_images

from eoq.engine import direct, intengine
from eoq.nn import fixup_tail, layers, stream
from eoq.quant import quantizers as Q
from eoq.training.loop import train_step
from eoq.training.optimizer import EOQSGD

ENTRIES = [(Q, "sq_integer", "A/E quantizers"), (direct, "conv", "direct conv (fwd + input grad)"),
           (direct, "conv_range", "direct conv (fwd + input grad)"),
           (direct, "conv_masked", "direct conv (fwd + input grad)"),
           (direct, "conv_sum", "direct conv (fwd + input grad)"),
           (direct, "weight_grad", "direct weight grad"), (direct, "grid_weights", "direct weight packing"),
           (intengine, "conv_float", "im2col + GEMM forward, dequantized"),
           (intengine, "input_grad_float", "im2col + GEMM input grad, dequantized"),
           (intengine, "conv_weight_grad", "im2col + GEMM conv weight grad"),
           (intengine, "weight_grad", "GEMM linear weight grad"),
           (intengine, "weight_mats", "GEMM weight operands"), (intengine, "_gradient", "G rounding"),
           (fixup_tail, "exact_tail", "stream: exact tail + FX16"),
           (fixup_tail, "masked_exact_sums", "stream: tail backward (mask, sums)"),
           (stream, "fx", "stream: FX16 of an error"), (stream, "fx_sum", "stream: FX16 of an error sum"),
           (stream, "_fx_sum_masked", "stream: FX16 of an error sum + tail backward"),
           (layers, "exact_sum", "Fixup scalar gradient sums"), (EOQSGD, "step", "optimizer step")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet20")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup(args.threads)
    spent = collections.defaultdict(float)
    for mod, name, label in ENTRIES:
        def timed(*a, _f=getattr(mod, name), _label=label, **k):
            t = time.perf_counter()
            try:
                return _f(*a, **k)
            finally:
                spent[_label] += time.perf_counter() - t
        setattr(mod, name, timed)
    x, y = test_images(args.batch_size)
    x = x.contiguous(memory_format=torch.channels_last)
    net, opt = make(args.model, "eoq", "int")
    for _ in range(args.warmup):
        train_step(net, opt, x, y)
    spent.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        train_step(net, opt, x, y)
    step = (time.perf_counter() - t0) / args.steps * 1000
    print(f"{args.model} integer step: {step:.1f} ms (mean of {args.steps})")
    for label, sec in sorted(spent.items(), key=lambda kv: -kv[1]):
        print(f"  {label:32s} {sec / args.steps * 1000:7.2f} ms")
    print(f"  {'everything else':32s} {step - sum(spent.values()) / args.steps * 1000:7.2f} ms")


if __name__ == "__main__":
    main()

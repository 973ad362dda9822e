"""Roofline of a training step: the machine's int8 and fp32 GEMM throughput, the step time if every
convolution ran at it, and where the measured fp32, simulated-EOQ and integer-EOQ steps stand.

    python benchmarks/bench_roofline.py                  # ResNet-20 and ResNet-18 (32x32), batch 128, 2 threads

Throughput: the median of ``--repeats`` timed products (after a warm-up) of a large GEMM,
[M, K] @ [K, N] with M = N = K = ``--size``: ``torch.mm`` in float32 and the engine's int8 x int8
-> int32 product (``torch._int_mm``, or on CPUs without int8 dot products the exact float32 route
of :mod:`eoq.engine.int_gemm`, which the engine takes there), in multiply-accumulates per second.
Also each model's own GEMMs: every conv's forward product as im2col would shape it (M = batch x
output pixels, K = Cin x kh x kw, N = Cout), timed one by one and summed, so the "layer GEMMs"
column is what the step's shapes reach, below the large product's roof.

A step's multiply-accumulates are counted from the model (forward hooks on every conv and linear:
output elements x Cin x kh x kw); a training step does three times that (forward, error to the
input, weight gradient; the stem's input error is not needed, which the count ignores). The ideal
step time is that count at the roof (and at the layer GEMMs' rate); the measured steps are
``bench_int.measure`` (median of ``--steps`` steps, the three kinds interleaved). The last lines
are ``<kind> <model>: measured / ideal = <ratio>``.
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from bench_int import measure
from common import median_time, setup

from eoq.engine import int_gemm
from eoq.engine import intengine as IE
from eoq.nn.layers import QConv2d, QLinear
from eoq.training.setup import setup as eoq_setup


def gemm_seconds(m: int, k: int, n: int, dtype, repeats: int) -> float:
    """Median seconds of one [m, k] @ [k, n] product in ``dtype`` (float32: torch.mm; int8: the
    engine's ``int_mm``, on its route: ``torch._int_mm``, or exact float32 chunks where the CPU has
    no int8 dot products, :mod:`eoq.engine.int_gemm`)."""
    g = torch.Generator().manual_seed(0)
    if dtype == torch.int8:
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=g)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=g)
        # _int_mm wants N a multiple of 8 and K > 1; pad like the engine's int_mm would need
        if n % 8:
            b = F.pad(b, (0, 8 - n % 8))
        return median_time(lambda: IE.int_mm(a, b), repeats)
    a = torch.randn(m, k, generator=g)
    b = torch.randn(k, n, generator=g)
    return median_time(lambda: torch.mm(a, b), repeats)


def layer_shapes(model_name: str, batch: int) -> tuple[list[tuple[int, int, int]], int]:
    """Every conv's forward GEMM shape (M, K, N) and the model's forward multiply-accumulates."""
    s = eoq_setup(model_name, "fixup", "fp32", seed=0)
    shapes, macs = [], [0]

    def hook(mod, inp, out):
        if isinstance(mod, QConv2d):
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            shapes.append((out.shape[0] * out.shape[2] * out.shape[3], k, mod.out_channels))
            macs[0] += out.numel() * k
        else:
            macs[0] += out.numel() * mod.in_features

    handles = [m.register_forward_hook(hook) for m in s.model.modules() if isinstance(m, (QConv2d, QLinear))]
    with torch.no_grad():
        s.model(torch.zeros(batch, 3, 32, 32))
    for h in handles:
        h.remove()
    return shapes, macs[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=2048, help="the large GEMM's M = N = K")
    ap.add_argument("--repeats", type=int, default=5, help="timed products per GEMM (median)")
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per kind (median)")
    ap.add_argument("--models", nargs="+", default=["resnet20", "resnet18"])
    args = ap.parse_args()
    setup(args.threads)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    n = args.size
    roof = {d: n ** 3 / gemm_seconds(n, n, n, d, args.repeats) for d in (torch.float32, torch.int8)}
    print(f"CPU: {cpu}; {args.threads} threads; {n}^3 GEMM: fp32 {roof[torch.float32] / 1e9:.1f} GMAC/s, "
          f"int8 {roof[torch.int8] / 1e9:.1f} GMAC/s (int8/fp32 {roof[torch.int8] / roof[torch.float32]:.2f}; "
          f"int8 GEMM route: {int_gemm.route().value})")
    lines = []
    for model in args.models:
        shapes, fwd = layer_shapes(model, args.batch_size)
        step_macs = 3 * fwd
        layer = {d: sum(m * k * c for m, k, c in shapes) / sum(gemm_seconds(m, k, c, d, args.repeats) for m, k, c in shapes)
                 for d in (torch.float32, torch.int8)}
        med = measure(model, args.batch_size, args.steps, 2, False)            # ms
        ideal = {"fp32": step_macs / roof[torch.float32] * 1000, "sim_eoq": step_macs / roof[torch.float32] * 1000,
                 "int_eoq": step_macs / roof[torch.int8] * 1000}
        at_layers = {"fp32": step_macs / layer[torch.float32] * 1000, "sim_eoq": step_macs / layer[torch.float32] * 1000,
                     "int_eoq": step_macs / layer[torch.int8] * 1000}
        print(f"{model} batch {args.batch_size}: {step_macs / 1e9:.2f} GMAC per step; layer GEMMs fp32 "
              f"{layer[torch.float32] / 1e9:.1f} GMAC/s, int8 {layer[torch.int8] / 1e9:.1f} GMAC/s")
        for kind in ("fp32", "sim_eoq", "int_eoq"):
            print(f"  {kind}: measured {med[kind]:.1f} ms, ideal at the roof {ideal[kind]:.1f} ms, "
                  f"at the layer GEMMs' rate {at_layers[kind]:.1f} ms")
            lines.append(f"{kind} {model}: measured / ideal = {med[kind] / ideal[kind]:.2f} "
                         f"(measured / layer-GEMM time {med[kind] / at_layers[kind]:.2f})")
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()

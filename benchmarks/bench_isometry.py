"""phi(JJ^T) and phi((JJ^T)^2) of all 54 blocks of ResNet-110 over 64 CIFAR-10 images, +-2% (95%).

Hutchinson with one Rademacher probe per image; a block whose 95% interval is wider than 2% of its
value is measured again with twice the probes (up to 32). Prints the time, the widest relative
interval, and last: ``resnet110 per-block phi: <seconds> s``.
Usage: python benchmarks/bench_isometry.py [--norm bn|fixup|none] [--threads 2]
"""
from __future__ import annotations

import argparse
import time

import torch
from common import setup, test_images

from analysis.isometry.blocks import chain, freeze_batchnorm
from analysis.isometry.jacobian import from_terms, hutchinson_terms
from eoq.models import build_model
from eoq.nn.prepare import prepare
from eoq.quant.presets import get_preset


def per_block_phi(model, images, target: float = 0.02, max_probes: int = 32):
    model = freeze_batchnorm(model, images)
    rows, x = [], images
    gen = torch.Generator().manual_seed(0)
    for name, kind, fn in chain(model):
        if kind == "block":
            t1, t2, dims = hutchinson_terms(fn, x, 1, gen)
            while True:           # double the probes, keeping the estimates already made
                est = from_terms(t1, t2, *dims, len(x))
                worst = max(est.phi1_ci / abs(est.phi1), est.phi2_ci / abs(est.phi2))
                if worst <= target or est.probes >= max_probes:
                    break
                more1, more2, _ = hutchinson_terms(fn, x, est.probes, gen)
                t1, t2 = torch.cat([t1, more1]), torch.cat([t2, more2])
            rows.append((name, est, est.probes, worst))
        with torch.no_grad():
            x = fn(x)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--norm", default="bn")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    setup(args.threads)
    images, _ = test_images(64)
    torch.manual_seed(0)
    model = build_model("resnet110", args.norm)
    prepare(model, get_preset("fp32"))
    t = time.perf_counter()
    rows = per_block_phi(model, images)
    seconds = time.perf_counter() - t
    worst = max(r[3] for r in rows)
    print(f"norm={args.norm}: {len(rows)} blocks, probes per image used: "
          f"{sorted({r[2] for r in rows})}, widest 95% interval {100 * worst:.2f}% of the value")
    for name, est, probes, w in rows[:: max(len(rows) // 6, 1)]:
        print(f"  {name:12s} phi1 {est.phi1:.4g} +- {est.phi1_ci:.2g}  phi2 {est.phi2:.4g} +- {est.phi2_ci:.2g}")
    print(f"resnet110 per-block phi: {seconds:.2f} s")


if __name__ == "__main__":
    main()

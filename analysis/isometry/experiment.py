"""Depth sweep of Block Dynamical Isometry: ResNet-20/32/56/110 x norm none/bn/fixup x fp32/eoq.

For every configuration, at init and after ``--steps`` training steps on CIFAR-10 (SGD, momentum
0.875, lr ``--lr``, batch ``--batch``, crop/flip augmentation), on ``--images`` CIFAR-10 test images:
per-block phi1/phi2/var of every residual block and residual unit with the theory's predictions
(analysis/isometry/blocks.py), the end-to-end gain measured directly and as the serial product, and for
trained EOQ models the gradient-norm gain of the real quantized backward against the float one.
Writes blocks.csv, summary.csv, qbackward.csv, spectra (SLQ) and figures into ``--out``.

    python -m analysis.isometry_experiment --out reports/isometry
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from eoq.models import build_model
from eoq.nn.prepare import prepare
from eoq.quant.presets import get_preset
from eoq.training.batches import to_float, train_batches
from eoq.training.csvfile import write_rows
from eoq.training.data import load_cifar10
from eoq.training.loop import TrainingDiverged, train_step
from eoq.training.progress import tqdm
from eoq.training.setup import setup

from ..style import figure, save
from . import theorems
from .blocks import (
    chain,
    chain_inputs,
    end_to_end,
    freeze_batchnorm,
    measure_blocks,
    quantized_backward_gains,
    serial_product,
)
from .jacobian import JacobianError, broadened_density, slq

NORM_COLORS = {"none": "#d62728", "bn": "#1f77b4", "fixup": "#2ca02c"}


def train_steps(model, opt, data, steps: int, batch: int, seed: int) -> bool:
    """``steps`` SGD steps on CIFAR-10; False if the loss or a quantizer met NaN/Inf."""
    model.train()
    done, epoch = 0, 0
    while done < steps:
        for _, x, y in train_batches(data.train_x, data.train_y, batch, seed, epoch):
            try:
                train_step(model, opt, x, y)
            except TrainingDiverged:
                return False
            done += 1
            if done >= steps:
                break
        epoch += 1
    return all(torch.isfinite(p).all() for p in model.parameters())


def measure_network(model, images):
    """(per-block rows, end-to-end estimate), or None for a diverged network: one whose end-to-end
    phi is zero (every activation gone) or not finite is reported as diverged, never as 0 +- 0."""
    try:
        rows = measure_blocks(model, images, kinds=("block", "residual"))
        e2e = end_to_end(model, images)
    except JacobianError:                 # the block inputs or outputs are no longer finite
        return None
    if not math.isfinite(e2e.phi1) or e2e.phi1 == 0:
        return None
    return rows, e2e


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    idx = torch.randperm(len(data.test_y), generator=torch.Generator().manual_seed(0))[:args.images].numpy()
    images, labels = to_float(torch.from_numpy(data.test_x[idx])), torch.from_numpy(data.test_y[idx])
    blocks_rows, summary, qrows = [], [], []
    configs = [(d, n, p) for d in args.depths for n in ("none", "bn", "fixup") for p in ("fp32", "eoq")]
    for depth, norm, precision in tqdm(configs, desc="isometry sweep"):
        s = setup(f"resnet{depth}", norm, precision, seed=0, rounding_seed=0, lr=args.lr)
        model, opt = s.model, s.optimizer
        for stage in ("init", "trained"):
            t0 = time.perf_counter()
            ok = True
            if stage == "trained":
                ok = train_steps(model, opt, data, args.steps, args.batch, seed=0)
            base = {"depth": depth, "norm": norm, "precision": precision, "stage": stage}
            if not ok:
                summary.append({**base, "diverged": True})
                continue
            measured = measure_network(model, images)
            if measured is None:
                summary.append({**base, "diverged": True})
                continue
            rows, e2e = measured
            for i, r in enumerate(rows):
                blocks_rows.append({**base, "index": i // 2, **r})
            summary.append({**base, "diverged": False, "end_to_end_phi1": e2e["phi1"],
                            "end_to_end_ci": e2e["phi1_ci"],
                            "serial_product": serial_product(rows),
                            "max_residual_phi1": max(r["phi1"] for r in rows if r["kind"] == "residual"),
                            "sum_omega": sum(r["omega"] for r in rows if r["kind"] == "residual"),
                            "seconds": time.perf_counter() - t0})
            if stage == "trained" and precision == "eoq":
                for r in quantized_backward_gains(model, images[:32], labels[:32]):
                    qrows.append({**base, **r})
    write_rows(out / "blocks.csv", blocks_rows)
    write_rows(out / "summary.csv", summary)
    write_rows(out / "qbackward.csv", qrows)
    spectra = spectra_rows(images)
    write_rows(out / "spectra.csv", spectra)
    checks = theorems.all_checks()
    (out / "theorems.md").write_text(theorems.table(checks) + "\n")
    plot_depth(summary, out / "isometry_depth")
    plot_blocks(blocks_rows, max(args.depths), out / "isometry_blocks")
    plot_spectra(spectra, out / "isometry_spectra")
    plot_qbackward(qrows, out / "isometry_qbackward")
    (out / "summary.md").write_text(summary_table(summary) + "\n")


def spectra_rows(images) -> list[dict]:
    """SLQ spectral densities of J J^T for the first and last residual unit of ResNet-20 at init."""
    rows = []
    for norm in ("none", "bn", "fixup"):
        torch.manual_seed(0)
        model = build_model("resnet20", norm)
        prepare(model, get_preset("fp32"))
        model = freeze_batchnorm(model, images)
        seq = chain(model)
        inputs = chain_inputs(seq, images[:1])
        blocks = model.blocks()
        for pos, label in ((1, "first block"), (len(seq) - 2, "last block")):
            unit = blocks[pos - 1].residual
            est = slq(unit, inputs[pos][0], probes=8, steps=60, generator=torch.Generator().manual_seed(0))
            nodes, weights = est.density
            for v, w in zip(nodes, weights):
                rows.append({"norm": norm, "block": label, "eigenvalue": float(v), "weight": float(w),
                             "phi1": est.phi1})
    return rows


def summary_table(summary: list[dict]) -> str:
    lines = ["| depth | norm | precision | stage | end-to-end phi1 (direct) | serial product | max unit phi1 "
             "| sum omega |",
             "|---:|---|---|---|---:|---:|---:|---:|"]
    for s in summary:
        if s.get("diverged"):
            lines.append(f"| {s['depth']} | {s['norm']} | {s['precision']} | {s['stage']} | diverged | | | |")
            continue
        lines.append(f"| {s['depth']} | {s['norm']} | {s['precision']} | {s['stage']} | {s['end_to_end_phi1']:.3g} "
                     f"± {s['end_to_end_ci']:.2g} | {s['serial_product']:.3g} | {s['max_residual_phi1']:.3g} | "
                     f"{s['sum_omega']:.3g} |")
    return "\n".join(lines)


def plot_depth(summary, stem):
    fig, axes = figure(2, width=3.8, height=3.2)
    for ax, precision in zip(axes[0], ("fp32", "eoq")):
        for norm in ("none", "bn", "fixup"):
            for stage, style in (("init", "-o"), ("trained", "--s")):
                pts = [(s["depth"], s["end_to_end_phi1"]) for s in summary
                       if s["norm"] == norm and s["precision"] == precision and s["stage"] == stage
                       and not s.get("diverged")]
                if pts:
                    ax.plot(*zip(*pts), style, color=NORM_COLORS[norm], ms=4, label=f"{norm}, {stage}")
        ax.set(xlabel="depth (layers)", ylabel="end-to-end φ(JJᵀ)", yscale="log", title=f"{precision}")
    axes[0][0].legend(fontsize=7, ncol=2)
    return save(fig, stem)


def plot_blocks(rows, depth, stem):
    fig, axes = figure(2, width=3.8, height=3.2)
    for ax, precision in zip(axes[0], ("fp32", "eoq")):
        for norm in ("none", "bn", "fixup"):
            for stage, style in (("init", "-"), ("trained", "--")):
                pts = [(r["index"], r["phi1"]) for r in rows if r["depth"] == depth and r["norm"] == norm
                       and r["precision"] == precision and r["stage"] == stage and r["kind"] == "residual"]
                if pts:
                    ax.plot(*zip(*pts), style, color=NORM_COLORS[norm], label=f"{norm}, {stage}")
        ax.set(xlabel="residual block index", ylabel="φ(JJᵀ) of the residual unit", yscale="log",
               title=f"ResNet-{depth}, {precision}")
    axes[0][0].legend(fontsize=7)
    return save(fig, stem)


def plot_spectra(rows, stem):
    """SLQ spectral densities of J J^T, each node broadened by a Gaussian of 0.05 decades on a log
    eigenvalue axis (analysis.isometry.jacobian.broadened_density); zero eigenvalues at 1e-3."""
    fig, axes = figure(2, width=3.8, height=3.2)
    for ax, label in zip(axes[0], ("first block", "last block")):
        for norm in ("none", "bn", "fixup"):
            pts = [(r["eigenvalue"], r["weight"]) for r in rows if r["norm"] == norm and r["block"] == label]
            if not pts:
                continue
            ev, w = np.array(pts).T
            lam, dens = broadened_density(ev, w / w.sum(), sigma=0.05, floor=1e-3)
            ax.plot(lam, dens, color=NORM_COLORS[norm], label=norm, linewidth=1.5)
        ax.set(xscale="log", xlabel="eigenvalue of JJᵀ (zero at 1e-3)", ylabel="density per decade (SLQ, broadened)",
               title=f"ResNet-20 {label} at init")
    axes[0][0].legend()
    return save(fig, stem)


def plot_qbackward(rows, stem):
    if not rows:
        return []
    fig, axes = figure(1, width=5.5, height=3.2)
    ax = axes[0][0]
    for depth in sorted({r["depth"] for r in rows}):
        for norm in ("bn", "fixup", "none"):
            pts = [(r["gain_float"], r["gain_quantized"]) for r in rows if r["depth"] == depth and r["norm"] == norm]
            if pts:
                ax.scatter(*zip(*pts), s=10, color=NORM_COLORS[norm], alpha=0.6,
                           label=f"{norm}" if depth == min(r["depth"] for r in rows) else None)
    gains = [g for r in rows for g in (r["gain_float"], r["gain_quantized"])]
    lim = [min(gains), max(gains)]
    ax.plot(lim, lim, "k:", linewidth=1, label="equal")
    ax.set(xscale="log", yscale="log", xlabel="per-block gradient-norm² gain, float backward",
           ylabel="same, quantized backward (8-bit E)", title="EOQ after training: quantized vs float backward")
    ax.legend(fontsize=8)
    return save(fig, stem)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m analysis.isometry_experiment", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="reports/isometry")
    ap.add_argument("--depths", type=int, nargs="+", default=[20, 32, 56, 110])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", default=None)
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()

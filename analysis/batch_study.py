"""Small-batch and online training study: accuracy against batch size and against samples seen.

Each configuration (fp32+BN, fp32+Fixup, EOQ; ResNet-20) trains on one pass over a stream of
``--samples`` CIFAR-10 training images (a fixed shuffle, no augmentation: each sample is seen
once) in batches of B, for every B in ``--batch-sizes``. Batch size 1 is true online training.
Test accuracy on ``--test`` held-out images is measured at ``--points`` positions along the stream.

Learning-rate rule (documented, switchable with ``--lr-rule``): lr(B) = lr_ref * sqrt(B / 128)
("sqrt", the default; Krizhevsky 2014), or lr_ref * B / 128 ("linear", Goyal et al. 2017), with
lr_ref = 0.1 for batch 128, constant over the stream, momentum 0.875. EOQ rounds it to a power of
two as always. BN trains on the statistics of each batch (of one sample at B = 1) and is
evaluated with its running averages.

    python -m analysis.batch_study --samples 10000 --out reports/batch_study
writes ``study.csv`` (one row per configuration, batch size and measuring point), ``study.md``
(final accuracy by batch size) and ``accuracy_vs_batch.{png,pdf}``, ``accuracy_vs_samples.{png,pdf}``.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from eoq.training.batches import to_float
from eoq.training.csvfile import write_rows
from eoq.training.data import load_cifar10
from eoq.training.loop import TrainingDiverged, evaluate, train_step
from eoq.training.setup import setup

from .style import COLORS, figure, save

CONFIGS = {"fp32+BN": ("bn", "fp32"), "fp32+Fixup": ("fixup", "fp32"), "EOQ": ("fixup", "eoq")}
LR_RULES = {"sqrt": lambda b: math.sqrt(b / 128), "linear": lambda b: b / 128}


def run_one(data, norm: str, preset: str, batch: int, samples: int, lr: float, points: int,
            seed: int = 0) -> list[dict]:
    """Train on the stream; returns [{seen, test_acc, seconds}] at ``points`` positions."""
    s = setup("resnet20", norm, preset, seed=seed, lr=lr, momentum=0.875)
    model, opt = s.model, s.optimizer
    order = np.random.default_rng(seed).permutation(len(data.train_y))[:samples]
    marks = sorted({int(round(samples * (i + 1) / points)) for i in range(points)})
    rows, seen, t0 = [], 0, time.perf_counter()
    model.train()
    for start in range(0, samples, batch):
        idx = order[start:start + batch]
        x, y = to_float(torch.from_numpy(data.train_x[idx])), torch.from_numpy(data.train_y[idx]).long()
        try:
            train_step(model, opt, x, y)
        except TrainingDiverged:
            return rows + [{"seen": seen, "test_acc": float("nan"), "seconds": time.perf_counter() - t0}]
        seen += len(idx)
        if marks and seen >= marks[0]:
            marks.pop(0)
            acc = evaluate(model, data.test_x, data.test_y)
            rows.append({"seen": seen, "test_acc": acc, "seconds": time.perf_counter() - t0})
    return rows


def plot(results: list[dict], out: Path) -> list[Path]:
    paths = []
    fig, axes = figure(1)
    ax = axes[0][0]
    for name in CONFIGS:
        pts = sorted((r["batch"], r["test_acc"]) for r in results if r["config"] == name and r["final"])
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=COLORS[name], label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (same samples seen)")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    paths += save(fig, out / "accuracy_vs_batch")
    fig, axes = figure(1)
    ax = axes[0][0]
    smallest, largest = min(r["batch"] for r in results), max(r["batch"] for r in results)
    for name in CONFIGS:
        for batch, style in ((smallest, "-"), (largest, "--")):
            pts = [(r["seen"], r["test_acc"]) for r in results if r["config"] == name and r["batch"] == batch]
            if pts:
                ax.plot(*zip(*pts), style, color=COLORS[name], label=f"{name}, batch {batch}")
    ax.set_xlabel("training samples seen")
    ax.set_ylabel("test accuracy (%)")
    ax.legend(fontsize=7)
    paths += save(fig, out / "accuracy_vs_samples")
    return paths


def table(results: list[dict], batches: list[int]) -> str:
    lines = ["| configuration | " + " | ".join(f"B={b}" for b in batches) + " |",
             "|---|" + "---|" * len(batches)]
    for name in CONFIGS:
        cells = []
        for b in batches:
            final = [r for r in results if r["config"] == name and r["batch"] == b and r["final"]]
            cells.append("diverged" if final and math.isnan(final[0]["test_acc"]) else
                         f"{final[0]['test_acc']:.2f}" if final else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 128])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--lr-ref", type=float, default=0.1)
    ap.add_argument("--lr-rule", choices=list(LR_RULES), default="sqrt")
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--test", type=int, default=1000, help="held-out test images")
    ap.add_argument("--data", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="reports/batch_study")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data).subset(None, args.test)
    if args.samples > len(data.train_y):
        raise SystemExit(f"--samples {args.samples} exceeds the {len(data.train_y)} training images")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    jobs = [(c, b) for c in args.configs for b in args.batch_sizes]
    for name, batch in tqdm(jobs, desc="study"):
        norm, preset = CONFIGS[name]
        lr = args.lr_ref * LR_RULES[args.lr_rule](batch)
        rows = run_one(data, norm, preset, batch, args.samples, lr, args.points)
        for i, r in enumerate(rows):
            results.append({"config": name, "batch": batch, "lr": lr, **r, "final": i == len(rows) - 1})
        tqdm.write(f"{name} B={batch}: lr {lr:.4g}, test {rows[-1]['test_acc']:.2f}% after "
                   f"{rows[-1]['seen']} samples, {rows[-1]['seconds']:.0f} s")
    write_rows(out / "study.csv", results, ["config", "batch", "lr", "seen", "test_acc", "seconds", "final"])
    md = [f"# Small-batch study: ResNet-20, {args.samples} CIFAR-10 samples seen once, "
          f"{args.test} test images", "",
          f"lr(B) = {args.lr_ref} x {'sqrt(B/128)' if args.lr_rule == 'sqrt' else 'B/128'}, constant, "
          "momentum 0.875, no augmentation. Final test accuracy (%):", "", table(results, args.batch_sizes)]
    (out / "study.md").write_text("\n".join(md) + "\n")
    plot(results, out)
    print("\n".join(md))


if __name__ == "__main__":
    main()

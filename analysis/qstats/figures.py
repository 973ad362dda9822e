"""Figures and a table from a run's quantization statistics (``OUT/qstats``; see qstats.py).

    python -m analysis.qstats_figures RUN_DIR --out reports/qstats [--layer NAME]
heatmap: median SQNR (dB) per conv/linear layer (rows) and tensor kind (columns) over the sampled steps
(Fixup scalars are in the summary table);
curves: median over layers of SQNR, saturation and zero fractions per kind against the step;
histograms: one layer's values of A, E and G at the last sample, with the quantization grid's
clip range (+-(M + 1/2) LSB) drawn in, and its update codes.
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..style import figure, save
from .stats import read_qstats

KINDS = ("A", "E", "G", "U", "M", "W", "S")


def _median(values):
    v = [x for x in values if np.isfinite(x)]
    return float(np.median(v)) if v else float("nan")


def summary_table(rows) -> str:
    """Median SQNR (dB), saturation and zero fractions per tensor kind over the sampled steps of
    :func:`~analysis.qstats.stats.read_qstats` rows, as markdown."""
    by = defaultdict(list)
    for r in rows:
        by[r["kind"]].append(r)
    lines = ["| kind | samples | median SQNR (dB) | median rel. error | mean saturated | mean zeroed | zero updates "
             "| update/weight |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for k in KINDS:
        rs = by.get(k, [])
        if not rs:
            continue
        zu = _median([r["zero_updates"] for r in rs])
        uw = _median([r["update_weight_ratio"] for r in rs])
        lines.append(f"| {k} | {len(rs)} | {_median([r['sqnr_db'] for r in rs]):.1f} | "
                     f"{_median([r['rel_error'] for r in rs]):.3g} | {np.mean([r['saturated'] for r in rs]):.2e} | "
                     f"{np.mean([r['zeroed'] for r in rs]):.3f} | {'' if np.isnan(zu) else f'{zu:.3f}'} | "
                     f"{'' if np.isnan(uw) else f'{uw:.2e}'} |")
    return "\n".join(lines)


def plot_heatmap(rows, stem):
    """Median SQNR per layer (rows) and tensor kind (columns); writes ``stem``.png and .pdf."""
    kinds = [k for k in ("A", "E", "G", "U", "M") if any(r["kind"] == k for r in rows)]
    layers = list(dict.fromkeys(r["layer"] for r in rows if r["kind"] == "A"))   # conv and linear layers
    grid = np.full((len(layers), len(kinds)), np.nan)
    for i, layer in enumerate(layers):
        for j, k in enumerate(kinds):
            grid[i, j] = _median([r["sqnr_db"] for r in rows if r["layer"] == layer and r["kind"] == k])
    fig, axes = figure(1, width=4.6, height=max(3.0, 0.17 * len(layers) + 1.2))
    ax = axes[0][0]
    im = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(len(layers)), [layer or "(model)" for layer in layers], fontsize=6)
    ax.set(xlabel="tensor kind", title="median SQNR, conv and linear layers")
    ax.grid(False)
    fig.colorbar(im, ax=ax, label="SQNR (dB)")
    return save(fig, stem)


def plot_curves(rows, stem):
    """SQNR, saturation and zero fractions per kind against the training step; ``stem``.png/.pdf."""
    fig, axes = figure(3, width=3.4, height=3.0)
    for k in KINDS:
        steps = sorted({r["step"] for r in rows if r["kind"] == k})
        if not steps:
            continue
        for ax, key in zip(axes[0], ("sqnr_db", "saturated", "zeroed")):
            ys = [_median([r[key] for r in rows if r["kind"] == k and r["step"] == s]) for s in steps]
            if key == "sqnr_db" and k in ("W", "S"):
                continue
            ax.plot(steps, ys, marker=".", label=k)
    axes[0][0].set(xlabel="training step", ylabel="median SQNR over layers (dB)", title="SQNR")
    axes[0][1].set(xlabel="training step", ylabel="median fraction saturated", title="saturation", yscale="symlog",
                   ylim=(0, None))
    axes[0][1].set_yscale("symlog", linthresh=1e-4)
    axes[0][2].set(xlabel="training step", ylabel="median fraction rounded to zero", title="rounded to zero")
    for ax in axes[0]:
        ax.legend(fontsize=7, ncol=2)
    return save(fig, stem)


def plot_histograms(hist_path, layer, step, stem):
    """Value histograms of A, E, G and the update codes of ``layer`` at ``step`` (from
    qstats_hist.npz), the clip range dashed; ``stem``.png/.pdf."""
    h = np.load(hist_path)
    fig, axes = figure(4, width=3.0, height=2.8)
    for ax, kind in zip(axes[0], ("A", "E", "G", "U")):
        key = f"{step}/{layer}/{kind}"
        if f"{key}/values" not in h.files:
            ax.set_axis_off()
            continue
        counts, edges = h[f"{key}/values"], h[f"{key}/value_edges"]
        ax.bar((edges[:-1] + edges[1:]) / 2, counts, width=np.diff(edges), alpha=0.7)   # empty bins: no bar
        ax.xaxis.set_major_locator(MaxNLocator(3))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        lim = (float(h[f"{key}/max_code"]) + 0.5) * float(h[f"{key}/lsb"])
        for s in (-1, 1):
            ax.axvline(s * lim, color="#d62728", linestyle="--", linewidth=1)
        lsb = float(h[f"{key}/lsb"])
        title = "U: update codes" if kind == "U" else f"{kind}: LSB 2^{int(np.log2(lsb))}"
        ax.set(yscale="log", xlabel="value" + (" (weight LSBs)" if kind == "U" else ""), ylabel="count", title=title)
    fig.suptitle(f"{layer or '(model)'} at step {step}: values, clip range (dashed)")
    return save(fig, stem)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m analysis.qstats_figures")
    ap.add_argument("run")
    ap.add_argument("--out", required=True)
    ap.add_argument("--layer", default="stages.1.0.convs.1")
    args = ap.parse_args(argv)
    qdir = Path(args.run) / "qstats"
    rows = read_qstats(qdir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    plot_heatmap(rows, out / "qstats_heatmap")
    plot_curves(rows, out / "qstats_curves")
    last = max(int(r["step"]) for r in rows if r["layer"] == args.layer)
    plot_histograms(qdir / "qstats_hist.npz", args.layer, last, out / "qstats_histograms")
    text = summary_table(rows)
    (out / "qstats_summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()

"""One paper style for every figure: readable fonts, light grid, PNG and PDF side by side."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt  # the backend is the user's: inline in a notebook, Agg with no display

STYLE = {
    "figure.dpi": 110, "savefig.dpi": 200, "font.size": 10, "axes.titlesize": 11,
    "axes.labelsize": 10, "legend.fontsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False,
    "lines.linewidth": 1.6, "savefig.bbox": "tight",
}
COLORS = {"fp32+BN": "#1f77b4", "fp32+Fixup": "#2ca02c", "EOQ": "#d62728"}


def figure(ncols: int = 1, width: float = 4.2, height: float = 3.2, nrows: int = 1):
    """A figure of ``nrows`` x ``ncols`` panels of width x height inches each; axes always 2-D."""
    plt.rcParams.update(STYLE)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False, layout="constrained")


def save(fig, path_stem) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.pdf``; returns both paths. The PDF carries no creation
    date, so the same figure gives the same bytes and a rebuilt report changes only what changed."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    for p in out:
        fig.savefig(p, metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    plt.close(fig)
    return out

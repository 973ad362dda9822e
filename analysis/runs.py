"""Compare training runs: accuracy table (markdown) and curves, from run directories' metrics.csv."""
from __future__ import annotations

import json
from pathlib import Path

from eoq.metrics import read_metrics

from .style import COLORS, figure, save


def load_run(path) -> dict:
    path = Path(path)
    cfg = json.loads((path / "config.json").read_text())["train"]
    return {"dir": str(path), "config": cfg, "rows": read_metrics(path / "metrics.csv")}


def label(cfg: dict) -> str:
    if cfg["preset"] == "fp32":
        return f"fp32+{'BN' if cfg['norm'] == 'bn' else cfg['norm'].capitalize()}"
    name = "EOQ" if cfg["preset"] == "eoq" else f"{cfg['preset']}+{cfg['norm']}"
    if cfg.get("engine") == "int":
        return name + " (integer engine)"
    return name + (" (channels-last)" if cfg.get("channels_last") else "")


def accuracy_table(runs: list[dict]) -> str:
    lines = ["| configuration | model | epochs | final test acc (%) | best test acc (%) | final train loss | minutes |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        rows, c = r["rows"], r["config"]
        last = rows[-1]
        lines.append(f"| {label(c)} | {c['model']} | {last['epoch']} | {last['test_acc']:.2f} | "
                     f"{max(x['test_acc'] for x in rows):.2f} | {last['train_loss']:.3f} | "
                     f"{sum(x['seconds'] for x in rows) / 60:.1f} |")
    return "\n".join(lines)


def plot_curves(runs: list[dict], stem) -> list[Path]:
    fig, axes = figure(2)
    for r in runs:
        name = label(r["config"])
        ep = [x["epoch"] for x in r["rows"]]
        color = COLORS.get(name)
        axes[0][0].plot(ep, [x["test_acc"] for x in r["rows"]], marker="o", ms=3, label=name, color=color)
        axes[0][1].plot(ep, [x["train_loss"] for x in r["rows"]], marker="o", ms=3, label=name, color=color)
    axes[0][0].set(xlabel="epoch", ylabel="test accuracy (%)", title="CIFAR-10 test accuracy")
    axes[0][1].set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss", yscale="log")
    axes[0][0].legend(loc="lower right")
    return save(fig, stem)


def main(argv=None) -> int:
    """python -m analysis.runs RUN_DIR... --out DIR --title T: writes DIR/accuracy.md and curves."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m analysis.runs", description=main.__doc__)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="accuracy")
    args = p.parse_args(argv)
    runs = [load_run(r) for r in args.runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.md").write_text(accuracy_table(runs) + "\n")
    plot_curves(runs, out / f"{args.name}_curves")
    print(accuracy_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The online-adaptation study: every method adapts its base network to corrupted streams, one
protocol, resumable, into one CSV per stage (claim 5 read as a device would meet it).

Protocol (``eoq adapt`` for each cell; eoq/training/adapt.py):
  - methods: fp32+BN with batch statistics, fp32+BN with frozen running statistics, fp32+Fixup,
    EOQ (integer engine, its preset's own update) and WAGEUBN (batch statistics), each from its
    30-epoch ResNet-20 base network (``--bases``: folders holding ``weights.pt`` or a checkpoint);
  - corruptions ``--corruptions`` at severities ``--severities``; batch sizes ``--batch-sizes``;
    a stream of ``--samples`` corrupted training images;
  - stage "choose": the learning rate of each method and batch size from ``--lrs`` x the method's
    reference lr, by the mean corrupted *validation* accuracy at the end of the stream over
    ``--choose-corruptions`` at severity 5, seed 0;
  - stage "final": at the chosen lr, every corruption, severity and batch size for seeds
    ``--seeds`` (stream order, noise draws and rounding), the corrupted *test* accuracy read at
    ``--points`` and the clean test accuracy at the end.

    python -m analysis.adaptation --bases reports/adaptation/base/runs --out reports/adaptation

writes ``choose.csv`` and ``final.csv`` (one row per reading; rewritten after every cell, and a cell
already in any CSV of the stage is skipped, so an interrupted study goes on where it stopped),
``study.md`` (the chosen lrs, mean +- std tables, the device cost per adapted image of
analysis/adaptation_cost.py) and the figures ``adapt_vs_images``, ``adapt_vs_batch`` and
``adapt_clean``. ``--part K/N`` runs every N-th cell from the K-th into its own CSVs (two processes
on two cores; a study begun in one process can go on in parts: the parts skip its done cells).
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

from eoq.training.adapt import POINTS, AdaptConfig, adapt
from eoq.training.atomic import atomic_write
from eoq.training.csvfile import read_rows, write_rows
from eoq.training.loop import TrainingDiverged

from .adaptation_cost import cost_table, device_costs, timed_seconds
from .style import figure, save

# method -> (base run folder name, BN mode, reference lr)
METHODS = {
    "fp32+BN (batch stats)": ("base_bn_fp32_s0", "batch", 0.01),
    "fp32+BN (frozen stats)": ("base_bn_fp32_s0", "frozen", 0.01),
    "fp32+Fixup": ("base_fixup_fp32_s0", "batch", 0.01),
    "EOQ": ("base_fixup_eoq_s0", "batch", 0.01),      # the seed-0 run of the preset the momentum study chose
    "WAGEUBN": ("base_bn_wageubn_s0", "batch", 0.01),
}
CORRUPTIONS = ("gaussian_noise", "defocus_blur", "contrast", "brightness", "jpeg_compression")
KEYS = ("stage", "method", "corruption", "severity", "batch_size", "lr", "seed")


def cells(args, stage: str, chosen: dict | None = None) -> list[dict]:
    """The cells of a stage, in a fixed order."""
    out = []
    for method, (_, _, ref) in METHODS.items():
        if args.methods and method not in args.methods:
            continue
        for b in args.batch_sizes:
            if stage == "choose":
                for f in args.lrs:
                    for c in args.choose_corruptions:
                        out.append(dict(stage=stage, method=method, corruption=c, severity=5, batch_size=b,
                                        lr=ref * f, seed=0))
            else:
                for c in args.corruptions:
                    for sev in args.severities:
                        for seed in args.seeds:
                            out.append(dict(stage=stage, method=method, corruption=c, severity=sev, batch_size=b,
                                            lr=chosen[(method, b)], seed=seed))
    return out


def _key(row: dict) -> tuple:
    return tuple(round(row[k], 12) if isinstance(row[k], float) else row[k] for k in KEYS)


def run_cell(args, cell: dict) -> list[dict]:
    folder, bn, _ = METHODS[cell["method"]]
    cfg = AdaptConfig(run_dir=str(Path(args.bases) / folder), corruption=cell["corruption"],
                      severity=cell["severity"], batch_size=cell["batch_size"], samples=args.samples,
                      lr=cell["lr"], bn=bn, seed=cell["seed"],
                      split="val" if cell["stage"] == "choose" else "test",
                      points=(args.samples,) if cell["stage"] == "choose" else tuple(args.points),
                      eval_limit=args.eval_limit, data=args.data, threads=1, progress=False)
    try:
        run = adapt(cfg)
    except TrainingDiverged as err:
        return [dict(cell, images=args.samples, acc=float("nan"), seconds=float("nan"), clean_acc=float("nan"),
                     diverged=str(err))]
    return [dict(cell, images=r["images"], acc=r["acc"], seconds=r["seconds"],
                 clean_acc=run.clean_acc if r is run.rows[-1] else float("nan"), diverged="") for r in run.rows]


def run_stage(args, stage: str, chosen=None) -> list[dict]:
    path = Path(args.out) / (f"{stage}.csv" if not args.part else f"{stage}-{args.part.replace('/', 'of')}.csv")
    rows = read_rows(path, text=("stage", "method", "corruption", "diverged")) if path.exists() else []
    done = {_key(r) for r in all_rows(Path(args.out), stage)}     # a cell another part did is done too
    todo = cells(args, stage, chosen)
    if args.part:
        k, n = (int(v) for v in args.part.split("/"))
        todo = todo[k::n]
    for cell in todo:
        if _key(cell) in done:
            continue
        rows += run_cell(args, cell)
        write_rows(path, rows, float_format=".6g")
        print(f"{stage}: {cell['method']} {cell['corruption']} {cell['severity']} b{cell['batch_size']} "
              f"lr {cell['lr']:g} seed {cell['seed']}: {rows[-1]['acc']:.2f}%", flush=True)
    return rows


def _choose_complete(args, out: Path) -> bool:
    """True once every choosing cell (of every --part) is in a CSV; a part waits up to
    ``--wait-choose`` seconds for the others, saying so, then gives up with one line."""
    want = {_key(c) for c in cells(args, "choose")}
    deadline = time.monotonic() + args.wait_choose
    while True:
        left = len(want - {_key(r) for r in all_rows(out, "choose")})
        if not left:
            return True
        if time.monotonic() >= deadline:
            print(f"the choosing stage is not complete ({left} cells of other parts missing): the final stage "
                  "needs every lr choice; rerun when they are done (or pass --wait-choose SECONDS)", file=sys.stderr)
            return False
        print(f"waiting for {left} choosing cells of other parts", flush=True)
        time.sleep(min(60.0, max(1.0, deadline - time.monotonic())))


def all_rows(out: Path, stage: str) -> list[dict]:
    rows = []
    for p in sorted(out.glob(f"{stage}*.csv")):
        rows += read_rows(p, text=("stage", "method", "corruption", "diverged"))
    return rows


def choose(rows: list[dict]) -> dict:
    """{(method, batch): lr} maximising the mean final validation accuracy over the choosing cells."""
    by: dict = {}
    for r in rows:
        by.setdefault((r["method"], int(r["batch_size"]), r["lr"]), []).append(r["acc"])
    best: dict = {}
    for (m, b, lr), accs in by.items():
        mean = statistics.fmean(a if a == a else 0.0 for a in accs)
        if (m, b) not in best or mean > best[(m, b)][1]:
            best[(m, b)] = (lr, mean)
    return {k: v[0] for k, v in best.items()}


def current_final(out: Path, chosen: dict | None = None) -> tuple[list[dict], dict]:
    """(final rows at the lr chosen for their method and batch size, the choice; ``chosen``: the
    choice already read): rows measured at an lr the choice no longer holds (an earlier, narrower
    grid) stay in the CSVs but not in tables."""
    chosen = choose(all_rows(out, "choose")) if chosen is None else chosen
    rows = [r for r in all_rows(out, "final")
            if (r["method"], int(r["batch_size"])) in chosen
            and math.isclose(r["lr"], chosen[(r["method"], int(r["batch_size"]))], rel_tol=1e-9)]
    return rows, chosen


def grid_edges(rows: list[dict]) -> dict:
    """{(method, batch): (smallest lr, largest lr)} of the choosing cells."""
    out: dict = {}
    for r in rows:
        k = (r["method"], int(r["batch_size"]))
        lo, hi = out.get(k, (r["lr"], r["lr"]))
        out[k] = (min(lo, r["lr"]), max(hi, r["lr"]))
    return out


def mean_std(values: list[float]) -> str:
    """"mean ± std" of the finite values (a diverged cell is nan: counted, not averaged); "–" when
    there is no value at all (a cell not measured)."""
    if not values:
        return "–"
    vals = [v for v in values if v == v]
    if not vals:
        return "diverged"
    text = f"{statistics.fmean(vals):.2f} ± {statistics.stdev(vals):.2f}" if len(vals) > 1 else f"{vals[0]:.2f}"
    return text if len(vals) == len(values) else f"{text} ({len(values) - len(vals)} of {len(values)} diverged)"


def table(final: list[dict], images: int, clean: bool = True) -> str:
    """Corrupted test accuracy at ``images`` seen (mean ± std over seeds): rows method x batch,
    columns corruption/severity; ``clean``: a last column with the clean test accuracy at the end
    of the stream, mean ± std over every corruption, severity and seed of the row."""
    cols = sorted({(r["corruption"], int(r["severity"])) for r in final})
    methods = list(dict.fromkeys(r["method"] for r in final))
    batches = sorted({int(r["batch_size"]) for r in final})
    extra = " clean at end (all cells) |" if clean else ""
    lines = ["| method | batch | " + " | ".join(f"{c} {s}" for c, s in cols) + " |" + extra,
             "|---|---:|" + "---:|" * (len(cols) + clean)]
    for m in methods:
        for b in batches:
            sel = [r for r in final if r["method"] == m and int(r["batch_size"]) == b]
            cells_ = [mean_std([r["acc"] for r in sel if (r["corruption"], int(r["severity"])) == c
                                and int(r["images"]) == images]) for c in cols]
            row = f"| {m} | {b} | " + " | ".join(cells_) + " |"
            if clean:        # the clean reading sits on the stream's last row (or on a diverged cell's)
                ends = [r["clean_acc"] for r in sel if r["clean_acc"] == r["clean_acc"] or r.get("diverged")]
                row += f" {mean_std(ends)} |"
            lines.append(row)
    return "\n".join(lines)


def summary(final: list[dict]) -> str:
    """Per method and batch size: the lr, the corrupted test accuracy before the stream and at its
    end, and the clean test accuracy at the end, each the mean over the row's corruption x severity
    streams, ± the std over seeds of that mean (the seed-to-seed spread of the whole row)."""
    end = max(int(r["images"]) for r in final)

    def seed_means(m, b, key, images=None) -> list[float]:
        per: dict = {}
        for r in final:
            if r["method"] == m and int(r["batch_size"]) == b and (images is None or int(r["images"]) == images) \
                    and r[key] == r[key]:
                per.setdefault(int(r["seed"]), []).append(r[key])
        return [statistics.fmean(v) for _, v in sorted(per.items())]

    lines = [f"| method | batch | lr | before (0 images) | after {end} images | gain | clean test at the end |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in dict.fromkeys(r["method"] for r in final):
        for b in sorted({int(r["batch_size"]) for r in final if r["method"] == m}):
            before, after = seed_means(m, b, "acc", 0), seed_means(m, b, "acc", end)
            lr = next(r["lr"] for r in final if r["method"] == m and int(r["batch_size"]) == b)
            div = sum(1 for r in final if r["method"] == m and int(r["batch_size"]) == b and r.get("diverged"))
            gain = f"{statistics.fmean(after) - statistics.fmean(before):+.2f}" if before and after else "–"
            lines.append(f"| {m} | {b} | {lr:g} | {mean_std(before)} | {mean_std(after)}"
                         f"{f' ({div} cells diverged)' if div else ''} | {gain} | {mean_std(seed_means(m, b, 'clean_acc'))} |")
    return "\n".join(lines)


def plot_vs_images(final: list[dict], stem, batch: int | None = None):
    """Corrupted test accuracy against images seen, per corruption and severity, at ``batch``
    (default: the smallest batch size measured), one line per method (mean over seeds)."""
    batch = min(int(r["batch_size"]) for r in final) if batch is None else batch
    corruptions = sorted({r["corruption"] for r in final})
    sevs = sorted({int(r["severity"]) for r in final})
    fig, axes = figure(len(corruptions), width=3.0, height=2.6, nrows=len(sevs))
    for ax, (s, c) in zip(axes.flat, [(s, c) for s in sevs for c in corruptions]):
        for m in dict.fromkeys(r["method"] for r in final):
            pts = {}
            for r in final:
                if (r["method"], r["corruption"], int(r["severity"]), int(r["batch_size"])) == (m, c, s, batch):
                    pts.setdefault(int(r["images"]), []).append(r["acc"])
            if pts:
                xs = sorted(pts)
                ax.plot(xs, [statistics.fmean(pts[x]) for x in xs], marker="o", label=m)
        ax.set(title=f"{c} {s}, batch {batch}", xlabel="images seen", ylabel="corrupted test acc (%)")
    axes.flat[0].legend(fontsize=6)
    return save(fig, stem)


def _method_means(final: list[dict], value, select) -> dict:
    """{method: {batch: mean of value(r) over the rows select(r) keeps}} (nan values left out)."""
    out: dict = {}
    for r in final:
        v = value(r)
        if select(r) and v == v:
            out.setdefault(r["method"], {}).setdefault(int(r["batch_size"]), []).append(v)
    return {m: {b: statistics.fmean(vs) for b, vs in sorted(by.items())} for m, by in out.items()}


def plot_vs_batch(final: list[dict], stem):
    """Corrupted test accuracy after the stream (solid) and before it (dotted) against batch size,
    one panel per severity, mean over corruptions and seeds, one colour per method."""
    end = max(int(r["images"]) for r in final)
    sevs = sorted({int(r["severity"]) for r in final})
    fig, axes = figure(len(sevs), width=3.4, height=2.8)
    axes = axes[0]
    for ax, sev in zip(axes, sevs):
        for i, (images, style) in enumerate(((end, "-"), (0, ":"))):
            means = _method_means(final, lambda r: r["acc"],
                                  lambda r: int(r["severity"]) == sev and int(r["images"]) == images)
            for j, (m, by) in enumerate(means.items()):
                ax.plot(list(by), list(by.values()), style, marker="o" if i == 0 else None, color=f"C{j}",
                        label=m if i == 0 else None)
        ax.set_xscale("log", base=2)
        ax.set(title=f"severity {sev}", xlabel="batch size", ylabel="corrupted test acc (%)")
    fig.suptitle(f"after {end} images (solid), before (dotted; the two fp32+BN share one base)", fontsize=9)
    axes[0].legend(fontsize=6)
    return save(fig, stem)


def plot_clean(final: list[dict], stem):
    """Clean test accuracy at the end of the stream against batch size (what adaptation forgets),
    mean over corruptions, severities and seeds."""
    fig, axes = figure(1, width=3.6, height=2.8)
    ax = axes[0][0]
    for m, by in _method_means(final, lambda r: r["clean_acc"], lambda r: True).items():
        ax.plot(list(by), list(by.values()), marker="o", label=m)
    ax.set_xscale("log", base=2)
    ax.set(title="clean test accuracy after adapting", xlabel="batch size", ylabel="clean test acc (%)")
    ax.legend(fontsize=6)
    return save(fig, stem)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m analysis.adaptation", description=__doc__.splitlines()[0])
    ap.add_argument("--bases", required=True, help="folder holding the base runs (METHODS names them)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stage", choices=("choose", "final", "all"), default="all")
    ap.add_argument("--methods", nargs="*", default=None, help=f"a subset of: {', '.join(METHODS)}")
    ap.add_argument("--corruptions", nargs="+", default=list(CORRUPTIONS))
    ap.add_argument("--choose-corruptions", nargs="+", default=["gaussian_noise", "defocus_blur"])
    ap.add_argument("--severities", nargs="+", type=int, default=[3, 5])
    ap.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--lrs", nargs="+", type=float, default=[0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0],
                    help="factors of the reference lr (0.01), 1e-5 to 1e-2: at batch 1 every method adapts "
                         "best at the low end")
    ap.add_argument("--wait-choose", type=float, default=0.0,
                    help="seconds the final stage waits for choosing cells of other --part processes")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--points", nargs="+", type=int, default=list(POINTS))
    ap.add_argument("--eval-limit", type=int, default=2000, help="class-interleaved images of the split read")
    ap.add_argument("--data", default=None)
    ap.add_argument("--part", default=None, help="K/N: every N-th cell from the K-th")
    ap.add_argument("--time-images", type=int, default=200,
                    help="images of each timed adaptation of the device-cost table (0: no timing)")
    ap.add_argument("--time-repeats", type=int, default=3, help="timed adaptations per method and batch size")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.stage in ("choose", "all"):
        run_stage(args, "choose")
    if args.stage in ("final", "all"):
        if not _choose_complete(args, out):
            return 2
        choosing = all_rows(out, "choose")
        chosen = choose(choosing)
        missing = [(m, b) for m in METHODS for b in args.batch_sizes
                   if (not args.methods or m in args.methods) and (m, b) not in chosen]
        if missing:
            print(f"no lr chosen yet for {missing[:3]}...: run --stage choose first", file=sys.stderr)
            return 2
        run_stage(args, "final", chosen)
        left = len({_key(c) for c in cells(args, "final", chosen)} - {_key(r) for r in all_rows(out, "final")})
        if left:
            print(f"final stage: {left} cells of other parts still to run; the part that finishes last writes "
                  "study.md and the figures", flush=True)
            return 0
        final, _ = current_final(out, chosen)
        edges = grid_edges(choosing)
        md = ["# Online adaptation study", "",
              "Chosen learning rates (mean corrupted validation accuracy at the end of the stream; "
              "\"edge\": the grid's end, where a wider grid might choose beyond it):", "",
              "| method | batch | lr |", "|---|---:|---:|"]
        md += [f"| {m} | {b} | {lr:g}{' (edge)' if lr in edges.get((m, b), ()) else ''} |"
               for (m, b), lr in sorted(chosen.items())]
        md += ["", "Summary: each method and batch size over its ten streams (mean over corruptions and severities, "
               "± std over seeds of that mean; `summary` in analysis/adaptation.py):", "", summary(final), "",
               f"Corrupted test accuracy after {args.samples} images (mean ± std over seeds):", "",
               table(final, args.samples), "", "Before adaptation (0 images):", "", table(final, 0, clean=False), ""]
        methods = {m: v for m, v in METHODS.items() if not args.methods or m in args.methods}
        timed = {}
        if args.time_images > 0:         # after every cell: the two parts' processes are done
            print(f"timing {args.time_repeats} adaptations of {args.time_images} images per method and batch size",
                  flush=True)
            timed = {(m, b): timed_seconds(Path(args.bases), folder, bn, b, chosen[(m, b)], args.time_images,
                                           args.time_repeats, args.data)
                     for m, (folder, bn, _) in methods.items() for b in args.batch_sizes}
        costs = device_costs(Path(args.bases), methods, args.batch_sizes, final, timed=timed)
        how = (f"timed alone: median of {args.time_repeats} adaptations of {args.time_images} images, "
               "gaussian_noise 5, at the chosen lr" if timed else "not timed alone (--time-images 0)")
        md += [f"Device cost of one adapted image (analysis/adaptation_cost.py; {how}):", "", cost_table(costs), ""]
        with atomic_write(out / "study.md", "w") as fh:
            fh.write("\n".join(md))
        plot_vs_images(final, out / "adapt_vs_images")
        plot_vs_batch(final, out / "adapt_vs_batch")
        plot_clean(final, out / "adapt_clean")
    return 0


if __name__ == "__main__":
    sys.exit(main())

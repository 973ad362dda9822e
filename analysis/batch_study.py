"""Small-batch and online training study: accuracy against batch size and along the stream.

Claim 5 of the paper: EOQ (no BN, 8 bits) is more advantageous in small-batch online training,
where batch statistics are not available. The comparison is BN-free 8-bit training against
BN-based training at the same precision (``wageubn``: 8-bit with quantized BN) and in float
(fp32+BN), with fp32+Fixup as the float bound.

Protocol, for each configuration and batch size B (ResNet-20):
  - a stream of ``--samples`` training images (default 20,000), each seen once, in a fixed order
    per seed, drawn from the training images left after the validation split (``--val``, the
    same split as ``eoq train``); no augmentation; batch 1 is true online training;
  - the learning rate chosen on validation (stage "choose", seed 0) from a grid around the
    square-root rule, lr_ref * sqrt(B / 128) * {0.5, 1, 2} (``--lr-factors``), with a linear
    warm-up over the first ``--warmup`` of the stream and then constant; momentum 0.875. When the
    best value lies on an edge of the grid, the grid grows by a factor of 2 beyond that edge, at
    most ``--extend`` times (a best value on the edge says only that the optimum lies further out);
  - at the chosen lr, seeds ``--seeds`` (stage "final"); validation accuracy at ``--points``
    positions along the stream (the curves), test accuracy once, at its end (the table: mean +- std
    over the seeds). A choosing run measures validation at the end only: the choice reads nothing
    else, and evaluation would otherwise cost as much as training at the larger batch sizes.

    python -m analysis.batch_study --out reports/batch_study          (hours on the full data)
writes ``runs.csv`` (one row per configuration, batch size, lr, seed, stage and measuring point;
rewritten after every run, and read back with ``--resume`` so that an interrupted study goes on
where it stopped), ``study.md`` (the grid, the chosen lr, the final table) and the figures
``accuracy_vs_batch`` (error bars over seeds), ``accuracy_vs_samples`` and ``updates_vs_batch`` (the
8-bit trainings' integer updates). Processes that share the work (``--part NAME`` with their own
``--configs``; reports/batch_study/run.sh) each write ``runs-NAME.csv`` in the same folder; the table
and figures are made from every ``runs*.csv`` there. A lever (a changed spec) is tried with
``--add-config "NAME=fixup:spec.json" --configs NAME --choose-only``: validation only, in a folder
of its own (reports/batch_study/levers/).
"""
from __future__ import annotations

import argparse
import math
import re
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from eoq.engine import Engine
from eoq.engine.intengine import check_spec
from eoq.quant.presets import load_spec
from eoq.quant.spec import SpecError
from eoq.training.atomic import atomic_write
from eoq.training.batches import to_float
from eoq.training.csvfile import read_rows, write_rows
from eoq.training.data import default_val, load_cifar10
from eoq.training.loop import TrainingDiverged, evaluate, train_step
from eoq.training.progress import tqdm
from eoq.training.setup import setup

from .style import COLORS, figure, save
from .update_trace import UpdateTrace

CONFIGS = {"fp32+BN": ("bn", "fp32"), "fp32+Fixup": ("fixup", "fp32"), "EOQ": ("fixup", "eoq"),
           "WAGEUBN": ("bn", "wageubn")}
COLUMNS = ["config", "batch", "lr", "seed", "stage", "seen", "val_acc", "test_acc", "seconds", "final",
           "zero_updates", "update_lsb", "exponent_moves"]      # the last three: integer updates (UpdateTrace)
_COLORS = {**COLORS, "WAGEUBN": "#9467bd"}


def add_config(text: str) -> str:
    """Registers ``NAME=NORM:SPEC`` (SPEC a preset or a JSON spec file, as ``eoq train --preset``
    takes it) as a further configuration, a lever tried on validation; returns NAME. It runs on
    ``--engine`` when the integer engine takes the spec (on_engine), else on the simulator."""
    name, sep, rest = text.partition("=")
    norm, sep2, spec = rest.partition(":")
    if not (sep and sep2 and name and spec) or norm not in ("bn", "fixup", "none"):
        raise SystemExit(f"--add-config {text!r}: expected NAME=NORM:SPEC with NORM bn, fixup or none")
    if name in CONFIGS and CONFIGS[name] != (norm, spec):
        raise SystemExit(f"--add-config {text!r}: {name!r} is already {CONFIGS[name]}")
    try:
        load_spec(spec)
    except (OSError, ValueError) as err:
        raise SystemExit(f"--add-config {text!r}: {err}") from None
    CONFIGS[name] = (norm, spec)
    return name


def runs_on_int(spec) -> bool:
    """Whether the integer engine takes ``spec``: 8-bit stored weights, and 8-bit SQ W/A/G/E on every
    quantized layer (the default and each layer override)."""
    if spec.store_bits != 8:
        return False
    try:
        for name in ("", *(pattern for pattern, _ in spec.layers)):
            quant = spec.layer(name)
            if quant.any:
                check_spec(quant, name or "every layer")
    except SpecError:
        return False
    return True


def on_engine(name: str) -> bool:
    """Whether --engine applies to configuration ``name`` (EOQ; others run on the simulator)."""
    return runs_on_int(load_spec(CONFIGS[name][1]))


def read_csv(path: Path) -> list[dict]:
    return read_rows(path, ints=("batch", "seed", "seen"), text=("config", "stage"))


def run_one(data, norm: str, preset: str, batch: int, samples: int, lr: float, points: int,
            seed: int = 0, warmup: float = 0.05, test: bool = True, engine: str = "sim") -> list[dict]:
    """Train on the stream; returns [{seen, val_acc, test_acc, seconds}] at ``points`` positions,
    test accuracy (``test``) at the last one only, nan before, and the last row with the integer
    update columns (a divergence ends the list with nan accuracies). ``engine`` "int" takes NHWC
    inputs, as eoq train does (the weights stay contiguous, as the optimizer's fused kernel wants)."""
    fmt = torch.channels_last if Engine.parse(engine) is Engine.INT else torch.contiguous_format
    s = setup("resnet20", norm, preset, seed=seed, lr=lr, momentum=0.875, engine=engine)
    model, opt = s.model, s.optimizer
    n_steps = math.ceil(samples / batch)
    trace = UpdateTrace(opt, every=max(1, n_steps // 50)) if getattr(opt, "grid", None) else None
    order = np.random.default_rng(seed).permutation(len(data.train_y))[:samples]
    marks = sorted({int(round(samples * (i + 1) / points)) for i in range(points)})
    n_warm = max(1, int(round(warmup * n_steps)))
    rows, seen, t0 = [], 0, time.perf_counter()
    model.train()
    for step, start in enumerate(range(0, samples, batch)):
        idx = order[start:start + batch]
        x = to_float(torch.from_numpy(data.train_x[idx])).contiguous(memory_format=fmt)
        y = torch.from_numpy(data.train_y[idx]).long()
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / n_warm)
        try:
            train_step(model, opt, x, y)
        except TrainingDiverged:
            return rows + [{"seen": seen, "val_acc": math.nan, "test_acc": math.nan,
                            "seconds": time.perf_counter() - t0, **_updates(trace)}]
        if trace is not None:
            trace.after_step()
        seen += len(idx)
        if marks and seen >= marks[0]:
            while marks and seen >= marks[0]:     # a large batch may pass several points at once
                marks.pop(0)
            val = evaluate(model, data.val_x, data.val_y, memory_format=fmt)
            last = not marks
            tst = evaluate(model, data.test_x, data.test_y, memory_format=fmt) if test and last else math.nan
            model.train()
            rows.append({"seen": seen, "val_acc": val, "test_acc": tst, "seconds": time.perf_counter() - t0,
                         **(_updates(trace) if last else {})})
    return rows


def _updates(trace: UpdateTrace | None) -> dict:
    """The integer-update columns of a run's last row (nan for a float optimizer)."""
    if trace is None:
        return {"zero_updates": math.nan, "update_lsb": math.nan, "exponent_moves": math.nan}
    u = trace.summary()
    return {"zero_updates": u.zero_updates, "update_lsb": u.update_lsb, "exponent_moves": u.exponent_moves}


def finals(results: list[dict], name: str, batch: int, stage: str, lr: float | None = None) -> list[dict]:
    return [r for r in results if r["config"] == name and r["batch"] == batch and r["stage"] == stage
            and r["final"] and (lr is None or math.isclose(r["lr"], lr))]


def tried(results: list[dict], name: str, batch: int) -> dict[float, list[float]]:
    """The final validation accuracies of the choosing runs, by lr (one per seed that ran it)."""
    by_lr: dict[float, list[float]] = {}
    for r in sorted(finals(results, name, batch, "choose"), key=lambda r: (r["lr"], r["seed"])):
        by_lr.setdefault(r["lr"], []).append(r["val_acc"])
    return by_lr


def chosen_lr(results: list[dict], name: str, batch: int) -> float | None:
    """The grid lr with the best final validation accuracy, mean over the seeds that ran it (an lr
    with a diverged run never wins)."""
    ok = {lr: statistics.fmean(v) for lr, v in tried(results, name, batch).items() if not any(map(math.isnan, v))}
    return max(ok, key=ok.get) if ok else None


def beyond_edge(lr: float | None, base: float, factors: list[float]) -> float | None:
    """The factor to try next when the chosen ``lr`` lies on an edge of the grid ``base * factors``:
    half the smallest or twice the largest; None when it lies inside (or nothing trained)."""
    if lr is None:
        return None
    if math.isclose(lr, base * min(factors)):
        return min(factors) / 2
    if math.isclose(lr, base * max(factors)):
        return max(factors) * 2
    return None


def mean_std(values: list[float]) -> str:
    ok = [v for v in values if not math.isnan(v)]
    if not ok:
        return "diverged" if values else "-"
    text = f"{statistics.fmean(ok):.2f}" + (f" ± {statistics.stdev(ok):.2f}" if len(ok) > 1 else "")
    return text + (f" ({len(values) - len(ok)} diverged)" if len(ok) < len(values) else "")


def table(results: list[dict], batches: list[int], names, key: str = "test_acc") -> str:
    lines = ["| configuration | " + " | ".join(f"B={b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for name in names:
        cells = [mean_std([r[key] for r in finals(results, name, b, "final")]) for b in batches]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def stored_bits(name: str) -> int | None:
    """Bits of a configuration's stored integer weights (8 for EOQ, which keeps no other copy; 24 for
    WAGEUBN, which accumulates updates in 24 bits and quantizes W to 8 for the passes); None: float."""
    return load_spec(CONFIGS[name][1]).store_bits


def lsb8_per_stored_lsb(name: str) -> float:
    """2^(8 - stored bits): one stored LSB in LSBs of an 8-bit grid over the same range (about the
    unit in which an 8-bit W sees the weight move)."""
    return 2.0 ** (8 - stored_bits(name))


def traced(results: list[dict], name: str, batch: int, stage: str = "final") -> list[dict]:
    """The runs of a configuration and batch size that traced their integer updates."""
    return [r for r in finals(results, name, batch, stage) if not math.isnan(r.get("zero_updates", math.nan))]


def update_table(results: list[dict], batches: list[int], names, stage: str = "final") -> str:
    """Update statistics of the final runs; the mean update also in LSBs of an 8-bit grid over the
    same range (lsb8_per_stored_lsb)."""
    lines = ["| configuration | stored bits | B | zero update codes | mean non-zero update (stored LSB) | "
             "the same in 8-bit LSBs | exponent moves / 1k steps |", "|---|---:|---|---:|---:|---:|---:|"]
    for name in names:
        for b in batches:
            runs = traced(results, name, b, stage)
            if runs:
                z, u, e = (statistics.fmean(r[k] for r in runs)
                           for k in ("zero_updates", "update_lsb", "exponent_moves"))
                lines.append(f"| {name} | {stored_bits(name)} | {b} | {z:.4f} | {u:.4g} | "
                             f"{u * lsb8_per_stored_lsb(name):.4g} | {e:.1f} |")
    return "\n".join(lines)


def grid_table(results: list[dict], batches: list[int], names) -> str:
    lines = ["| configuration | B | lr tried: final validation accuracy (%) | chosen lr |", "|---|---|---|---|"]
    for name in names:
        for b in batches:
            cells = ", ".join(f"{lr:.4g}: {mean_std(v)}" + (f" ({len(v)} seeds)" if len(v) > 1 else "")
                              for lr, v in tried(results, name, b).items())
            lr = chosen_lr(results, name, b)
            lines.append(f"| {name} | {b} | {cells} | {'-' if lr is None else format(lr, '.4g')} |")
    return "\n".join(lines)


def plot(results: list[dict], out: Path, names) -> list[Path]:
    """The figures of the final runs (none when there are none, as after --choose-only)."""
    if not any(r["stage"] == "final" and r["config"] in names for r in results):
        return []
    paths = []
    fig, axes = figure(1)
    ax = axes[0][0]
    for name in names:
        pts = []
        for b in sorted({r["batch"] for r in results if r["config"] == name}):
            accs = [r["test_acc"] for r in finals(results, name, b, "final") if not math.isnan(r["test_acc"])]
            if accs:
                pts.append((b, statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0))
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o-", capsize=3,
                        color=_COLORS.get(name), label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size (the same samples seen once)", ylabel="test accuracy (%), mean ± std over seeds")
    ax.legend()
    paths += save(fig, out / "accuracy_vs_batch")
    fig, axes = figure(1)
    ax = axes[0][0]
    batches = sorted({r["batch"] for r in results})
    for name in names:
        for batch, style in ((batches[0], "-"), (batches[-1], "--")):
            seen = sorted({r["seen"] for r in results if r["config"] == name and r["batch"] == batch
                           and r["stage"] == "final"})
            pts = []
            for s in seen:
                accs = [r["val_acc"] for r in results if r["config"] == name and r["batch"] == batch
                        and r["stage"] == "final" and r["seen"] == s and not math.isnan(r["val_acc"])]
                if accs:
                    pts.append((s, statistics.fmean(accs), statistics.stdev(accs) if len(accs) > 1 else 0.0))
            if pts:
                ax.errorbar(*zip(*[(p[0], p[1]) for p in pts]), yerr=[p[2] for p in pts], fmt=style, capsize=2,
                            color=_COLORS.get(name), label=f"{name}, batch {batch}")
    ax.set(xlabel="training samples seen", ylabel="validation accuracy (%), mean ± std over seeds")
    ax.legend(fontsize=7)
    paths += save(fig, out / "accuracy_vs_samples")
    return paths + plot_updates(results, out, names)


def plot_updates(results: list[dict], out: Path, names) -> list[Path]:
    """``updates_vs_batch``: the integer updates of the 8-bit trainings at their chosen lr, against
    batch size (fraction of zero update codes of the stored grid; mean non-zero update in LSBs of
    an 8-bit grid over the same range), mean ± std over seeds; nothing when no run traced its updates."""
    keys = (("zero_updates", "zero update codes (fraction)"),
            ("update_lsb", "mean non-zero |update| (8-bit LSBs)"))
    series = {}
    for name in names:
        for b in sorted({r["batch"] for r in results if r["config"] == name}):
            runs = traced(results, name, b)
            if runs:
                unit = lsb8_per_stored_lsb(name)
                series.setdefault(name, []).append((b, [[r["zero_updates"] for r in runs],
                                                        [r["update_lsb"] * unit for r in runs]]))
    if not series:
        return []
    fig, axes = figure(2)
    for i, (_, label) in enumerate(keys):
        ax = axes[0][i]
        for name, pts in series.items():
            ax.errorbar([b for b, _ in pts], [statistics.fmean(v[i]) for _, v in pts],
                        yerr=[statistics.stdev(v[i]) if len(v[i]) > 1 else 0.0 for _, v in pts],
                        fmt="o-", capsize=3, color=_COLORS.get(name), label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size", ylabel=label)
        ax.legend(fontsize=7)
    axes[0][1].set_yscale("log")      # EOQ moves whole LSBs; a 24-bit accumulator moves fractions of one
    return save(fig, out / "updates_vs_batch")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m analysis.batch_study", description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20000, help="length of the stream (each image seen once)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 32, 128])
    ap.add_argument("--configs", nargs="+", default=None, help=f"of {', '.join(CONFIGS)} and --add-config's "
                    "(default: all of them)")
    ap.add_argument("--add-config", action="append", default=[], metavar="NAME=NORM:SPEC",
                    help="a further configuration (a lever tried on validation): a name, bn/fixup/none and a "
                         "preset or JSON spec; may be repeated")
    ap.add_argument("--choose-only", action="store_true",
                    help="the choosing stage only, with every seed of --seeds (validation, the mean over seeds "
                         "chooses): no final stage, no test images")
    ap.add_argument("--lr-ref", type=float, default=0.1, help="lr at batch 128 of the square-root rule")
    ap.add_argument("--lr-factors", type=float, nargs="+", default=[0.5, 1.0, 2.0],
                    help="the grid: lr_ref * sqrt(B / 128) times each factor, chosen on validation")
    ap.add_argument("--extend", type=int, default=2,
                    help="grow the grid by a factor of 2 beyond an edge value that wins, at most this many times")
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of the stream of linear warm-up")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--points", type=int, default=5)
    ap.add_argument("--val", type=int, default=None, help="validation images (default: eoq train's split)")
    ap.add_argument("--test", type=int, default=None, help="test images (default: all)")
    ap.add_argument("--data", default=None)
    ap.add_argument("--engine", default="int", choices=[e.value for e in Engine],
                    help="the engine of the configurations the integer engine takes (EOQ; bit-exact either way, "
                         "int is faster)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--resume", action="store_true", help="go on from OUT/runs.csv (OUT/runs-PART.csv)")
    ap.add_argument("--part", default=None,
                    help="share the study between processes: this one writes OUT/runs-PART.csv (give each its "
                         "own --configs); the table and figures read every OUT/runs*.csv")
    ap.add_argument("--out", default="reports/batch_study")
    args = ap.parse_args(argv)
    for text in args.add_config:
        add_config(text)
    if args.configs is None:
        args.configs = list(CONFIGS)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        raise SystemExit(f"--configs: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(CONFIGS)}")
    if args.extend < 0:
        raise SystemExit(f"--extend {args.extend}: must be >= 0")
    torch.set_num_threads(args.threads)
    data = load_cifar10(args.data)
    data = data.hold_out(args.val if args.val is not None else default_val(len(data.train_y))).subset(None, args.test)
    if args.samples > len(data.train_y):
        raise SystemExit(f"--samples {args.samples} exceeds the {len(data.train_y)} training images left "
                         "after the validation split")
    if args.part is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", args.part):
        raise SystemExit(f"--part {args.part!r}: letters, digits, '-' and '_' only (it names runs-PART.csv)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mine = out / (f"runs-{args.part}.csv" if args.part else "runs.csv")

    def others() -> list[dict]:                  # the other parts' rows, as their files stand now
        return [r for f in sorted(out.glob("runs*.csv")) if f != mine for r in read_csv(f)]

    own = read_csv(mine) if args.resume and mine.exists() else []
    results = own + others()                     # every part's rows: choices, tables
    done = {(r["config"], r["batch"], round(r["lr"], 12), r["seed"], r["stage"]) for r in results}

    def run(name, batch, lr, seed, stage):
        if (name, batch, round(lr, 12), seed, stage) in done:
            return
        norm, preset = CONFIGS[name]
        final = stage == "final"
        rows = run_one(data, norm, preset, batch, args.samples, lr, args.points if final else 1, seed, args.warmup,
                       test=final, engine=args.engine if on_engine(name) else "sim")
        for i, r in enumerate(rows):
            row = {"config": name, "batch": batch, "lr": lr, "seed": seed, "stage": stage, **r,
                   "final": i == len(rows) - 1}
            own.append(row)
            results.append(row)
        write_rows(mine, own, COLUMNS)
        tqdm.write(f"{name} B={batch} lr {lr:.4g} seed {seed} ({stage}): val {rows[-1]['val_acc']:.2f}% "
                   f"after {rows[-1]['seen']} samples, {rows[-1]['seconds']:.0f} s")

    jobs = [(c, b) for c in args.configs for b in args.batch_sizes]
    choosing = args.seeds if args.choose_only else args.seeds[:1]    # a lever is judged over every seed
    for name, batch in tqdm(jobs, desc="choose the lr"):
        base, factors = args.lr_ref * math.sqrt(batch / 128), list(args.lr_factors)
        for f in factors:
            for seed in choosing:
                run(name, batch, base * f, seed, "choose")
        for _ in range(args.extend if len(factors) > 1 else 0):      # one value: the lr is fixed, not chosen
            f = beyond_edge(chosen_lr(results, name, batch), base, factors)
            if f is None:
                break
            factors.append(f)
            for seed in choosing:
                run(name, batch, base * f, seed, "choose")
    for name, batch in tqdm(jobs if not args.choose_only else (), desc="seeds at the chosen lr"):
        lr = chosen_lr(results, name, batch)
        for seed in args.seeds if lr is not None else ():
            run(name, batch, lr, seed, "final")
    results = own + others()
    names = [c for c in CONFIGS if c in args.configs or any(r["config"] == c for r in results)]
    md = [f"# Small-batch study: ResNet-20, a stream of {args.samples} CIFAR-10 training images seen once", "",
          f"Validation {len(data.val_y)} images (the lr choice), test {len(data.test_y)} images (the table). "
          f"lr grid: {args.lr_ref} x sqrt(B/128) x {args.lr_factors}, grown by a factor of 2 beyond an edge value "
          f"that won, at most {args.extend} times; linear warm-up over {args.warmup:.0%} of "
          f"the stream then constant, momentum 0.875, no augmentation; seeds {args.seeds} at the chosen lr; "
          f"{', '.join(n for n in names if on_engine(n)) or 'no configuration'} on the {args.engine} engine.", "",
          "## Final test accuracy (%), mean ± std over seeds", "", table(results, args.batch_sizes, names), "",
          "## Final validation accuracy (%), mean ± std over seeds", "",
          table(results, args.batch_sizes, names, "val_acc"), "",
          f"## The learning-rate grid (validation; seeds {', '.join(map(str, choosing))})", "",
          grid_table(results, args.batch_sizes, names)]
    stage = "choose" if args.choose_only else "final"
    if any(not math.isnan(r.get("zero_updates", math.nan)) for r in results if r["stage"] == stage):
        md += ["", "## Integer weight updates " + ("of the choosing runs (mean over seeds)" if args.choose_only
                                                   else "at the chosen lr (mean over seeds)"), "",
               "Fraction of zero update codes of the stored weight grid, mean size of the non-zero ones in its "
               "LSBs and in LSBs of an 8-bit grid over the same range, |U| x 2^(8 - stored bits) (about the unit in "
               "which an 8-bit W sees the weight move: WAGEUBN accumulates in 24 bits, so its codes are seldom "
               "zero and each is 2^-16 of such an LSB), and "
               "exponent moves of stored tensors per 1,000 steps (analysis/update_trace.py).", "",
               update_table(results, args.batch_sizes, names, stage)]
    with atomic_write(out / "study.md", "w") as fh:       # parts may finish at the same moment
        fh.write("\n".join(md) + "\n")
    plot(results, out, names)
    print("\n".join(md))


if __name__ == "__main__":
    main()

"""Compare training runs: accuracy table (markdown) and curves, from run directories' metrics.csv."""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import fields
from pathlib import Path

from eoq.quant.presets import PRESETS
from eoq.quant.spec import QuantSpec, SpecError
from eoq.training.loop import SCHEDULE_FIELDS
from eoq.training.metrics import read_metrics

from .style import COLORS, figure, save

# settings a run made before they existed used (eoq/training/loop.py: SCHEDULE_FIELDS; no label smoothing)
_BEFORE = {**{k: v for k, v in SCHEDULE_FIELDS.items() if v is not None}, "label_smoothing": 0.0}


def not_a_run(path) -> str | None:
    """Why ``path`` is not a run directory, or None: a run has config.json and metrics.csv, or,
    when it diverged before its first epoch ended, a DIVERGED file (written by campaign.sh) instead."""
    path = Path(path)
    if not (path / "config.json").exists():
        return f"{str(path)!r} is not a run directory: no config.json"
    if not (path / "metrics.csv").exists() and not (path / "DIVERGED").exists():
        return f"{str(path)!r} is not a run directory: no metrics.csv and no DIVERGED file"
    return None


def load_run(path) -> dict:
    """A run directory's config (settings it predates filled with the values it used), spec and
    metrics. A run that diverged before its first epoch ended may have no metrics.csv: its
    DIVERGED file says where, and it loads with no rows."""
    path = Path(path)
    why = not_a_run(path)
    if why:
        raise FileNotFoundError(why)
    cfg = json.loads((path / "config.json").read_text())
    for key, before in _BEFORE.items():
        cfg["train"].setdefault(key, before)
    diverged = path / "DIVERGED"
    metrics = path / "metrics.csv"
    return {"dir": str(path), "config": cfg["train"], "spec": cfg.get("spec"), "code": cfg.get("code"),
            "rows": read_metrics(metrics) if metrics.exists() else [],
            "diverged": diverged.read_text().strip() if diverged.exists() else None}


def code_text(runs: list[dict]) -> str:
    """Which commits made the runs (config.json "code"; eoq/training/provenance.py), e.g.
    "3 runs at commit 1a2b3c4d, 1 of them with uncommitted changes; 2 runs predate the record".
    A run whose record lists its changed paths says whether they touched the code it ran
    (eoq/, csrc/, pyproject.toml) or only other files (a README, a report)."""
    from eoq.training.provenance import code_changed

    kinds = (("unknown", "with uncommitted changes"), ("code", "with uncommitted changes to the code"),
             ("other", "with uncommitted changes outside the code only"))
    counts: dict[str, dict[str, int]] = {}
    older = 0
    for r in runs:
        code = r.get("code") or {}
        if not code.get("commit"):
            older += 1
            continue
        c = counts.setdefault(code["commit"][:8], {"runs": 0, "unknown": 0, "code": 0, "other": 0})
        c["runs"] += 1
        found = [code_changed(x) for x in [code] + code.get("resumed_at", []) if x.get("dirty")]
        if found:
            c["code" if True in found else "unknown" if None in found else "other"] += 1
    parts = []
    for commit, c in counts.items():
        n = c["runs"]
        dirty = [f"{c[k]} of them {text}" for k, text in kinds if c[k]]
        parts.append(f"{n} run{'s' * (n > 1)} at commit {commit}" + "".join(", " + d for d in dirty))
    if older:
        parts.append(f"{older} run{'s' * (older > 1)} from before commits were recorded (their commit: the one "
                     "that added their files)")
    return "; ".join(parts)


def stop_text(run: dict) -> str:
    """How an unfinished run ended: 'diverged at epoch 3, step 17' (from its DIVERGED file; the
    reason itself where it names no step), else 'stopped after epoch N'."""
    why = run.get("diverged")
    if why:
        where = re.search(r"at epoch \d+, step \d+", why)
        return "diverged " + (where.group(0) if where else why.removeprefix("eoq: error: ").split(";")[0])
    return f"stopped after epoch {run['rows'][-1]['epoch'] if run['rows'] else 0}"


def same_preset(spec: dict | None) -> str | None:
    """The built-in preset whose settings ``spec`` (a run's config.json spec) has field for field,
    its name and description aside: a JSON spec that a preset later adopted (``reports/momentum/
    eoq-m8.json`` is today's ``eoq``) trained exactly what that preset trains. None if none."""
    if not spec or {f.name for f in fields(QuantSpec)} - set(spec):     # only a complete spec (to_dict)
        return None
    try:
        mine = QuantSpec.from_dict({k: v for k, v in spec.items() if k not in ("name", "description")})
    except (SpecError, TypeError, ValueError):
        return None
    for name, preset in PRESETS.items():
        if preset.with_changes(name=mine.name, description=mine.description) == mine:
            return name
    return None


def label(run: dict) -> str:
    """A run's name in tables and legends; a spec given as a JSON file is named by the spec's name,
    or by the built-in preset it equals (:func:`same_preset`)."""
    cfg, preset = run["config"], run["config"]["preset"]
    if preset == "fp32":
        return f"fp32+{'BN' if cfg['norm'] == 'bn' else cfg['norm'].capitalize()}"
    if isinstance(preset, dict):                      # a QuantSpec given to TrainConfig
        preset = preset.get("name") or "custom"
    elif preset.endswith(".json"):
        spec = run.get("spec") or {}
        preset = same_preset(spec) or spec.get("name") or Path(preset).stem
    name = "EOQ" if preset == "eoq" and cfg["norm"] == "fixup" else f"{preset}+{cfg['norm']}"   # EOQ: with Fixup
    if cfg.get("engine") == "int":
        return name + " (integer engine)"
    return name + (" (channels-last)" if cfg.get("channels_last") else "")


def _has_val(runs: list[dict]) -> bool:
    """Whether any run measured a validation split (metrics.csv val_acc not nan)."""
    return any(not math.isnan(x.get("val_acc", math.nan)) for r in runs for x in r["rows"])


def accuracy_table(runs: list[dict]) -> str:
    """One row per run: final and best test accuracy, final training loss, minutes; with a
    validation split, the final and best validation accuracy first (settings are chosen on it)."""
    val = _has_val(runs)
    head = "| configuration | model | epochs | " + ("final val acc (%) | best val acc (%) | " if val else "")
    lines = [head + "final test acc (%) | best test acc (%) | final train loss | minutes |",
             "|---|---|---|" + ("---|---|" if val else "") + "---|---|---|---|"]
    for r in runs:
        rows, c = r["rows"], r["config"]
        if not rows:                                      # ended inside its first epoch
            lines.append(f"| {label(r)} | {c['model']} | 0: {stop_text(r)} |" + " |" * (6 if val else 4))
            continue
        last = rows[-1]
        vals = (f"{last['val_acc']:.2f} | {max(x['val_acc'] for x in rows):.2f} | " if val else "")
        epochs = f"{last['epoch']}" + ("" if _finished(r) or not r.get("diverged") else f": {stop_text(r)}")
        lines.append(f"| {label(r)} | {c['model']} | {epochs} | {vals}{last['test_acc']:.2f} | "
                     f"{max(x['test_acc'] for x in rows):.2f} | {last['train_loss']:.3f} | "
                     f"{sum(x['seconds'] for x in rows) / 60:.1f} |")
    return "\n".join(lines)


# config fields that do not change what is trained (the seed is what a seed table varies)
_NOT_SETTINGS = ("seed", "out", "threads", "progress", "resume", "data", "download")


def _settings(run: dict) -> dict:
    return {k: v for k, v in run["config"].items() if k not in _NOT_SETTINGS and v is not None}


def _spec(spec):
    """A saved spec with the fields it predates filled with their defaults (which it used)."""
    try:
        return QuantSpec.from_dict(spec).to_dict() if spec else spec
    except (SpecError, TypeError):
        return spec


def seed_groups(runs: list[dict]) -> list[list[dict]]:
    """Runs grouped by identical settings (config and spec equal apart from _NOT_SETTINGS; a
    setting a run predates, null in its config or missing from its spec, counts as its default),
    in order of first appearance."""
    groups: dict[str, list[dict]] = {}
    for r in runs:
        key = json.dumps([_settings(r), _spec(r.get("spec"))], sort_keys=True)
        groups.setdefault(key, []).append(r)
    return list(groups.values())


def _finished(run: dict) -> bool:
    return bool(run["rows"]) and run["rows"][-1]["epoch"] >= run["config"]["epochs"]


def _differences(run: dict, first: dict) -> str:
    """The settings of ``run`` that differ from ``first``'s, as "key value" (the label already
    names preset and norm)."""
    mine, theirs = _settings(run), _settings(first)
    keys = [k for k in mine.keys() | theirs.keys() if k not in ("preset", "norm") and mine.get(k) != theirs.get(k)]
    return ", ".join(f"{k} {mine.get(k, 'unset')}" for k in sorted(keys))


def seed_table(runs: list[dict]) -> str:
    """Final test accuracy per group of runs that differ only in seed: each seed's value, the mean
    and the sample standard deviation (n - 1; blank for a single run) of the runs that finished.
    A run that stopped early (diverged, killed) is named with its last epoch and left out of both.
    The last column names the settings in which a group differs from the first group."""
    val = _has_val(runs)
    lines = ["| configuration | seeds | final test acc (%) per seed | mean (%) | std (points) "
             + ("| val acc (%) per seed | val mean (%) | val std " if val else "") + "| settings unlike row 1 |",
             "|---|---|---|---:|---:|" + ("---|---:|---:|" if val else "") + "---|"]
    groups = seed_groups(runs)
    for group in groups:
        cells = []
        for key in ("test_acc", "val_acc") if val else ("test_acc",):
            done = [g["rows"][-1][key] for g in group if _finished(g)]
            shown = [f"{g['rows'][-1][key]:.2f}" if _finished(g) else stop_text(g) for g in group]
            mean = f"{statistics.fmean(done):.2f}" if done else ""
            std = f"{statistics.stdev(done):.2f}" if len(done) > 1 else ""
            cells += [", ".join(shown), mean, std]
        lines.append(f"| {label(group[0])} | {', '.join(str(g['config']['seed']) for g in group)} | "
                     + " | ".join(cells) + f" | {_differences(group[0], groups[0][0])} |")
    return "\n".join(lines)


def plot_curves(runs: list[dict], stem) -> list[Path]:
    fig, axes = figure(2)
    val = _has_val(runs)
    bases = [label(r) for r in runs]
    models = {r["config"]["model"] for r in runs}          # several depths: the legend names the model
    names = [b + (f", {r['config']['model']}" if len(models) > 1 else "") for b, r in zip(bases, runs)]
    seen: dict[str, int] = {}
    others = [c for c in ("#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22")
              if c not in COLORS.values()]
    unnamed = [n for n in dict.fromkeys(bases) if n not in COLORS]   # one colour per label, in order
    for r, base, name in zip(runs, bases, names):
        if not r["rows"]:                                  # diverged inside its first epoch: nothing to draw
            continue
        ep = [x["epoch"] for x in r["rows"]]
        color = COLORS.get(base) or others[unnamed.index(base) % len(others)]
        k = seen[base] = seen.get(base, -1) + 1        # runs sharing a label: told apart by line style
        style = ("-", "--", ":", "-.")[k % 4]
        shown = f"{name}, seed {r['config']['seed']}" if names.count(name) > 1 else name
        for ax, key in ((axes[0][0], "test_acc"), (axes[0][1], "train_loss")):
            ax.plot(ep, [x[key] for x in r["rows"]], marker="o", ms=3, label=shown, color=color, ls=style)
        if val:                            # validation: the same colour, open markers, thin
            axes[0][0].plot(ep, [x["val_acc"] for x in r["rows"]], marker="o", ms=3, mfc="none", lw=0.8,
                            color=color, ls=style, alpha=0.8)
    title = "CIFAR-10 test (filled) and validation (open) accuracy" if val else "CIFAR-10 test accuracy"
    axes[0][0].set(xlabel="epoch", ylabel="accuracy (%)" if val else "test accuracy (%)", title=title)
    axes[0][1].set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss", yscale="log")
    axes[0][0].legend(loc="lower right", fontsize="x-small" if len(runs) > 4 else None)
    return save(fig, stem)


def main(argv=None) -> int:
    """python -m analysis.runs RUN_DIR... --out DIR --title T: writes DIR/accuracy.md and curves."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m analysis.runs", description=main.__doc__)
    p.add_argument("runs", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="accuracy")
    p.add_argument("--seeds", action="store_true",
                   help="also a table of the seed spread (runs with the same settings grouped)")
    args = p.parse_args(argv)
    runs = [load_run(r) for r in args.runs]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = accuracy_table(runs) + ("\n\n" + seed_table(runs) if args.seeds else "")
    (out / f"{args.name}.md").write_text(text + "\n")
    plot_curves(runs, out / f"{args.name}_curves")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

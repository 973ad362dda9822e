"""``eoq report``: turn run directories and analysis outputs into figures and a REPORT.md.

Sections: accuracy table and curves (fp32+BN, fp32+Fixup, EOQ), accuracy against batch size (when
the runs differ in batch size), isometry (from an isometry_experiment directory), quantization
error (from a run trained with --qstats-every), cost (counted now), small-batch online training
(from an analysis.batch_study directory) and the reproduction table:
each claim of the paper's abstract beside what this report measured, and how. Every number in the
report comes from the inputs given; a claim without inputs is marked "not measured here".
"""
from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import torch

from eoq.training.csvfile import read_rows
from eoq.training.loop import SCHEDULE_FIELDS

from . import verdicts
from .runs import (_finished, accuracy_table, code_text, label, load_run, plot_curves, seed_groups, seed_table,
                   stop_text)
from .style import figure, save

CLAIMS = (
    "Full 8-bit (W/A/G/E/U) training with BN removed reaches state-of-the-art integer-training accuracy",
    "8-bit weight updates; no 24-bit weight storage",
    "Fixup + quantization keeps block dynamical isometry",
    "Removing BN: >70x lower power and >18x higher speed for that part",
    "Larger advantage in small-batch online training",
)


def _copy_figures(src: Path, dst: Path, prefix: str) -> list[str]:
    names = []
    if src.resolve() == dst.resolve():
        return sorted(p.name for p in src.glob(f"{prefix}*.png"))
    for p in sorted(src.glob(f"{prefix}*")):
        if p.suffix in (".png", ".pdf"):
            shutil.copy(p, dst / p.name)
            if p.suffix == ".png":
                names.append(p.name)
    return names


def _stored_on_int8_grid(run: dict) -> tuple[str, int | None, int | None]:
    """Check the run's final checkpoint: every integer-stored tensor is codes * 2^e with |codes| <= 127;
    (text, tensors on the grid, tensors checked). Without one (checkpoints are not committed), say
    what the run's spec stores (None, None)."""
    ck = Path(run["dir"]) / "checkpoint.pt"
    if not ck.exists():
        spec = run.get("spec") or {}
        u = (spec.get("U") or {}).get("bits")
        return (f"no checkpoint kept; its spec stores {spec.get('store_bits')}-bit weight codes and {u}-bit "
                "update codes (tests/test_optimizer.py: every stored tensor stays on its int8 grid)", None, None)
    state = torch.load(ck, map_location="cpu", weights_only=True)["model"]
    total = on_grid = 0
    for key, exp in state.items():
        if not (key.endswith("weight_exp") or key.endswith("bias_exp") or key.endswith(".exp")):
            continue
        base = key[: -len("_exp")] if key.endswith("_exp") else key[: -len(".exp")] + ".value"
        w = state.get(base)
        if w is None:
            continue
        codes = w / torch.exp2(exp)
        total += 1
        on_grid += bool(torch.equal(codes, codes.round()) and codes.abs().max() <= 127)
    text = f"{on_grid}/{total} stored tensors are int8 codes x 2^e" if total else "no integer-stored tensors"
    return text, on_grid, total


def _batch_study_section(folder: Path, out_dir: Path) -> tuple[list[str], tuple[str, str, str]]:
    """The small-batch study's final table (every ``runs*.csv`` of ``folder``, analysis/batch_study.py)
    and its figures; the claim line gives the two smallest batch sizes."""
    from . import batch_study as bs

    results = [r for f in sorted(folder.glob("runs*.csv")) for r in bs.read_csv(f)]
    final = [r for r in results if r["stage"] == "final" and r["final"]]
    if not final:
        return [], ("not measured here (no finished run in the small-batch study)", "", verdicts.NOT_MEASURED)
    batches = sorted({r["batch"] for r in final})
    names = [c for c in bs.CONFIGS if any(r["config"] == c for r in final)]
    samples = max(r["seen"] for r in final)
    figs = _copy_figures(folder, out_dir, "accuracy_vs_") + _copy_figures(folder, out_dir, "updates_vs_")
    md = ["## Small-batch online training", "",
          f"From `{folder}` (analysis/batch_study.py, its README gives the protocol): one pass over a stream of "
          f"{samples} training images, the lr of each configuration and batch size chosen on validation, final "
          "test accuracy (%), mean ± std over seeds:", "", bs.table(results, batches, names), ""]
    md += [f"![{f}]({f})" for f in figs] + ([""] if figs else [])
    parts, means = [], {}
    for b in batches[:2]:
        cells, means[b] = [], {}
        for n in names:
            accs = [r["test_acc"] for r in bs.finals(results, n, b, "final")]
            cells.append(f"{n} {bs.mean_std(accs)}")
            ok = [a for a in accs if not math.isnan(a)]
            means[b][n] = statistics.fmean(ok) if ok else math.nan
        parts.append(f"batch {b}: " + ", ".join(cells))
    return md, ("; ".join(parts), f"one pass over {samples} images, lr chosen on validation per configuration and "
                                  "batch size, test accuracy, mean ± std over seeds (small-batch section)",
                verdicts.small_batch(means))


ADAPTATION_CLAIM = f"{CLAIMS[4]}: on-device adaptation of a trained network"
BN_METHODS = ("fp32+BN (batch stats)", "fp32+BN (frozen stats)", "WAGEUBN")


def _adaptation_section(folder: Path, out_dir: Path) -> tuple[list[str], tuple[str, str, str]]:
    """The online-adaptation study (analysis/adaptation.py): its final table at the end of the stream,
    its figures, and claim 5 read on a deployed network: at the two smallest batch sizes, each
    method's mean corrupted test accuracy after the stream (over corruptions, severities, seeds)."""
    from . import adaptation as ad

    final, _ = ad.current_final(folder)
    if not final:
        return (["## Online adaptation on the device", "",
                 f"Not run yet: `{folder}` holds no final rows at its chosen lrs (`python -m analysis.adaptation`, "
                 "protocol in its README).",
                 ""], ("not measured here (the online-adaptation study has not run)", "", verdicts.NOT_MEASURED))
    end = max(int(r["images"]) for r in final)
    figs = _copy_figures(folder, out_dir, "adapt_")
    md = ["## Online adaptation on the device", "",
          f"From `{folder}` (analysis/adaptation.py, its README gives the protocol): base networks adapted to "
          f"corrupted streams; corrupted test accuracy (%) after {end} images, mean ± std over seeds, and the "
          "clean test accuracy at the end:", "", ad.table(final, end), ""]
    md += [f"![{f}]({f})" for f in figs] + ([""] if figs else [])
    batches = sorted({int(r["batch_size"]) for r in final})[:2]
    means, parts = {}, []
    for b in batches:
        means[b] = {}
        for m in dict.fromkeys(r["method"] for r in final):
            accs = [r["acc"] for r in final if r["method"] == m and int(r["batch_size"]) == b
                    and int(r["images"]) == end]
            ok = [a for a in accs if a == a]
            means[b][m] = statistics.fmean(ok) if ok else math.nan
        parts.append(f"batch {b}: " + ", ".join(f"{m} {v:.2f}" for m, v in means[b].items()))
    return md, ("; ".join(parts), f"corrupted test accuracy after {end} adapted images, mean over corruptions, "
                                  "severities and seeds (online-adaptation section)",
                verdicts.small_batch(means, bn=BN_METHODS))


def _final_accs(group: list[dict]) -> list[float]:
    """Final test accuracies of a seed group's finished runs."""
    return [r["rows"][-1]["test_acc"] for r in group if _finished(r)]


def _mean(group: list[dict] | None) -> float | None:
    """Mean final test accuracy of a seed group's finished runs (nan: none finished; None: no group)."""
    if group is None:
        return None
    acc = _final_accs(group)
    return statistics.fmean(acc) if acc else math.nan


def _farthest_unit_phi(iso: Path, depth: float) -> float | None:
    """phi(JJ^T) / phi(shortcut) of the residual unit farthest from its shortcut's in the
    quantized, trained Fixup network of the given depth (the isometry sweep's blocks.csv)."""
    if not (iso / "blocks.csv").exists():
        return None
    ratios = [r["phi1"] / r["phi_shortcut"]
              for r in read_rows(iso / "blocks.csv", text=("norm", "precision", "stage", "block", "kind", "method"))
              if r["depth"] == depth and r["norm"] == "fixup" and r["precision"] == "eoq" and r["stage"] == "trained"
              and r["kind"] == "residual" and r["phi_shortcut"] > 0]
    return max(ratios, key=lambda v: abs(v - 1)) if ratios else None


def _mean_text(name: str, group: list[dict]) -> str:
    """'name 85.12%' for one finished run, 'name 85.12 ± 0.30% (3 seeds)' for several."""
    acc = _final_accs(group)
    if not acc:
        return f"{name}: " + "; ".join(stop_text(r) for r in group)
    if len(acc) == 1:
        return f"{name} {acc[0]:.2f}%"
    return f"{name} {statistics.fmean(acc):.2f} ± {statistics.stdev(acc):.2f}% ({len(acc)} seeds)"


def _state_section(loaded: list[dict], memory: str | None = None) -> tuple[list[str], dict]:
    """The training state per weight and the saved activations per image of every configuration in
    the report (one row per label, the first run's spec and momentum); {label: TrainingState}."""
    from eoq.models import build_model
    from eoq.quant.spec import QuantSpec

    from .cost.memory import saved_activations, training_state

    rows, states, seen = [], {}, set()
    for r in loaded:
        name, model = label(r), r["config"]["model"]
        if (name, model) in seen or not r.get("spec"):
            continue
        seen.add((name, model))
        spec = QuantSpec.from_dict(r["spec"])
        st = training_state(spec, r["config"].get("momentum") or 0.0, name)
        states.setdefault(name, st)
        acts = saved_activations(build_model(model, r["config"]["norm"]), spec, name)
        rows.append(f"| {model} | {name} | {st.weight_bits} | {st.momentum_bits or '-'} | {st.master_bits or '-'} | "
                    f"**{st.total_bits}** | {acts.total / 1024:.0f} KiB |")
    md = ["## What a device holds", "",
          "Training state per weight between steps (bits) and the activations a backward needs per image "
          "(analysis/cost/memory.py: conv/linear inputs in their format, BN inputs in float32, one-bit ReLU "
          "masks). Measured peak memory of the engines: reports/benchmarks.md.", "",
          "| model | configuration | weight | momentum | master copy | state per weight | saved activations / image |",
          "|---|---|---:|---:|---:|---:|---:|", *rows, ""]
    if memory and Path(memory).exists():
        md += [f"Measured peak memory of a training step (`{Path(memory).name}`, from "
               "`python benchmarks/bench_memory.py`):", "", Path(memory).read_text().strip(), ""]
    return md, states


def plot_batch_sizes(runs: list[dict], stem) -> list[Path]:
    fig, axes = figure(1)
    ax = axes[0][0]
    groups: dict[str, list] = {}
    for r in runs:
        if r["rows"]:
            groups.setdefault(label(r), []).append((r["config"]["batch_size"], r["rows"][-1]["test_acc"]))
    for name, pts in groups.items():
        ax.plot(*zip(*sorted(pts)), marker="o", label=name)
    ax.set(xscale="log", xlabel="batch size", ylabel="final test accuracy (%)", title="accuracy vs batch size")
    ax.legend()
    return save(fig, stem)


def build_report(runs: list[str], out: str, isometry: str | None = None, qstats_run: str | None = None,
                 cost_model: str = "resnet20", cost_batch: int = 128, title: str = "EOQ Workbench report",
                 command: str = "", batch_study: str | None = None, memory: str | None = None,
                 adaptation: str | None = None) -> Path:
    """``out``/REPORT.md and its figures from run directories (accuracy tables and curves, seeds),
    an isometry sweep folder, a run trained with qstats, the cost model, a batch-study folder, a
    measured-memory table (``memory``: the markdown bench_memory.py writes), an online-adaptation
    folder (``adaptation``: analysis.adaptation's output) and the reproduction table with a verdict
    per claim (claim 5 read twice: from scratch and on a deployed network); ``eoq report`` calls it. Returns REPORT.md's path."""
    from .cost.report import readings_table
    from .cost.report import report as cost_report
    from .qstats.figures import plot_curves as q_curves
    from .qstats.figures import plot_heatmap, plot_histograms, summary_table
    from .qstats.stats import read_qstats

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [load_run(r) for r in runs]
    md = [f"# {title}", "", "Generated by `eoq report` from real runs" + (f" (`{command}`)" if command else "") + ".",
          "Only the paper's abstract is public: the method here is a reconstruction (see README).", ""]
    claims = {c: ("not measured here", "", verdicts.NOT_MEASURED) for c in CLAIMS}

    if loaded:
        models = list(dict.fromkeys(r["config"]["model"] for r in loaded))
        groups = seed_groups(loaded)
        md += ["## Accuracy", "", f"Code: {code_text(loaded)}.", "", accuracy_table(loaded), ""]
        if any(len(g) > 1 for g in groups):
            md += ["Over seeds (runs that differ only in their seed; sample standard deviation):", "",
                   seed_table(loaded), ""]
        for model in models:                                  # one figure per depth
            stem = "accuracy_curves" + (f"_{model}" if len(models) > 1 else "")
            plot_curves([r for r in loaded if r["config"]["model"] == model], out_dir / stem)
            md += [f"![accuracy]({stem}.png)", "",
                   f"*{model}: test accuracy and training loss per epoch on CIFAR-10 (log-scale loss).*", ""]
        found, hows, eoq_run, per_depth = [], [], None, []
        for model in dict.fromkeys(g[0]["config"]["model"] for g in groups):     # each depth its own line
            firsts = {}                                      # label -> its first seed group of this model
            for g in groups:
                if g[0]["config"]["model"] == model:
                    firsts.setdefault(label(g[0]), g)
            eoq = next((k for k in firsts if k.startswith("EOQ")), None)
            if eoq is None:
                continue
            mine = [r for g in firsts.values() for r in g]
            epochs = sorted({r["config"]["epochs"] for r in mine})
            sched = {json.dumps({k: r["config"].get(k) for k in SCHEDULE_FIELDS}, sort_keys=True) for r in mine}
            found.append(f"{model}, {'/'.join(map(str, epochs))} epochs: "
                         + ", ".join(_mean_text(k, firsts[k]) for k in [eoq] + [k for k in firsts if k != eoq]))
            hows.append("same schedule" if len(sched) == 1 else "each its own schedule (config.json)")
            wage = firsts.get("wageubn+bn")
            per_depth.append((model, _mean(firsts[eoq]), _mean(firsts.get("fp32+Fixup")), _mean(wage),
                              len(_final_accs(wage)) if wage else None))
            eoq_run = eoq_run or next((r for r in firsts[eoq] if _finished(r)), firsts[eoq][0])
        if found:
            claims[CLAIMS[0]] = ("; ".join(found),
                                 f"{' / '.join(dict.fromkeys(hows))}, final test accuracy, mean ± std over seeds "
                                 "where several (tables above)", verdicts.accuracy(per_depth))
            text, on_grid, total = _stored_on_int8_grid(eoq_run)
            section, states = _state_section(loaded, memory)
            md += section
            eoq_state = states.get(label(eoq_run))
            others = "; ".join(f"{k}: {v.total_bits}" for k, v in states.items() if k != label(eoq_run))
            claims[CLAIMS[1]] = (f"{text}; training state per weight {eoq_state.describe() if eoq_state else '?'}"
                                 + (f" (others, bits: {others})" if others else ""),
                                 "final checkpoint of the EOQ run; state per weight from its spec and momentum "
                                 "(section 'What a device holds')",
                                 verdicts.storage(on_grid, total, (eoq_run.get("spec") or {}).get("store_bits"),
                                                  eoq_state))
        if len({r["config"]["batch_size"] for r in loaded}) > 1:
            plot_batch_sizes(loaded, out_dir / "batch_size")
            md += ["![batch size](batch_size.png)", "", "*Final test accuracy against batch size.*", ""]

    if isometry and (Path(isometry) / "summary.csv").exists():
        iso = Path(isometry)
        figs = _copy_figures(iso, out_dir, "isometry_")
        md += ["## Block dynamical isometry", "", (iso / "summary.md").read_text(), ""]
        captions = {"isometry_depth.png": "End-to-end φ(JJᵀ) of the residual stack against depth (log scale).",
                    "isometry_blocks.png": "φ(JJᵀ) of each residual unit of the deepest network.",
                    "isometry_spectra.png": "SLQ spectral densities of JJᵀ of the first and last residual unit.",
                    "isometry_qbackward.png": "Per-block gradient-norm gains of the quantized vs the float backward."}
        for f in figs:
            md += [f"![{f}]({f})", "", f"*{captions.get(f, f)}*", ""]
        if (iso / "theorems.md").exists():
            md += ["Theorem checks:", "", (iso / "theorems.md").read_text(), ""]
        summ = read_rows(iso / "summary.csv")
        fx = [s for s in summ if s["norm"] == "fixup" and not s.get("diverged")]
        if fx:
            deepest = max(s["depth"] for s in fx)
            vals = {(s["precision"], s["stage"]): s["end_to_end_phi1"] for s in fx if s["depth"] == deepest}
            none = [s for s in summ if s["norm"] == "none" and s["depth"] == deepest and s["stage"] == "init"
                    and s["precision"] == "fp32"]
            text = ", ".join(f"{p} {st}: {v:.3g}" for (p, st), v in sorted(vals.items()))
            if none:
                text += f"; plain He init ('none', fp32, init): {none[0]['end_to_end_phi1']:.3g}"
            claims[CLAIMS[2]] = (f"ResNet-{int(deepest)} end-to-end φ(JJᵀ), Fixup: {text}",
                                 "Hutchinson estimates on CIFAR-10 test images (isometry section)",
                                 verdicts.isometry(_farthest_unit_phi(iso, deepest), int(deepest)))

    if qstats_run and (Path(qstats_run) / "qstats" / "qstats.csv").exists():
        rows = read_qstats(Path(qstats_run) / "qstats")
        plot_heatmap(rows, out_dir / "qstats_heatmap")
        q_curves(rows, out_dir / "qstats_curves")
        layer = "stages.1.0.convs.1"
        steps = [int(r["step"]) for r in rows if r["layer"] == layer]
        md += ["## Quantization error", "", summary_table(rows), "", "![heatmap](qstats_heatmap.png)", "",
               "*Median SQNR per layer and tensor kind over the sampled steps.*", "",
               "![curves](qstats_curves.png)", "",
               "*SQNR, saturation and zero fractions per kind during training.*", ""]
        if steps:
            plot_histograms(Path(qstats_run) / "qstats" / "qstats_hist.npz", layer, max(steps),
                            out_dir / "qstats_histograms")
            md += ["![histograms](qstats_histograms.png)", "",
                   f"*Values of A, E, G and the update codes of {layer} at the last sample, clip range dashed.*", ""]

    text, both = cost_report(cost_model, cost_batch, out_dir=str(out_dir))
    n, s = both.training.norm, both.training.step
    md += ["## Cost", "", f"From `eoq cost --model {cost_model} --batch-size {cost_batch}` (full tables in "
           f"[cost_{cost_model}.md](cost_{cost_model}.md)).", "",
           "| part | power ratio (fp32 BN / EOQ Fixup) | speed ratio |", "|---|---:|---:|",
           f"| normalization only | {n['power_ratio']:.1f}x | {n['speed_ratio']:.1f}x |",
           f"| whole training step | {s['power_ratio']:.1f}x | {s['speed_ratio']:.1f}x |", "",
           f"![energy](cost_energy_{cost_model}.png)", "",
           "*Compute energy per phase and number format (log scale).*", "",
           f"![norm](cost_norm_{cost_model}.png)", "",
           "*Normalization part: BN (fp32) against Fixup scalars (8-bit).*", "",
           "The claim read both ways (normalization part only):", "", readings_table(both), ""]
    i, f = both.inference.norm, both.inference_folded.norm
    claims[CLAIMS[3]] = (f"training BN: {n.power_ratio:.1f}x energy, {n.speed_ratio:.1f}x cycles serial, "
                         f"{n.parallel_speed_ratio:.1f}x on the parallel datapath; inference BN as written: "
                         f"{i.power_ratio:.1f}x, {i.speed_ratio:.1f}x, {i.parallel_speed_ratio:.1f}x; folded: "
                         f"{f.power_ratio:.1f}x, {f.speed_ratio:.1f}x, {f.parallel_speed_ratio:.1f}x",
                         "op counts x Horowitz 45 nm energies / assumed cycles and datapath (cost section)",
                         verdicts.cost([(f"{name}, {how}", r.power_ratio, sp)
                                        for name, r in (("training BN", n), ("inference BN as written", i),
                                                        ("inference BN folded", f))
                                        for how, sp in (("serial", r.speed_ratio),
                                                        ("parallel datapath", r.parallel_speed_ratio))]))

    if batch_study:
        section, claim = _batch_study_section(Path(batch_study), out_dir)
        md += section
        claims[CLAIMS[4]] = claim
    if adaptation:
        section, claims[ADAPTATION_CLAIM] = _adaptation_section(Path(adaptation), out_dir)
        md += section

    md += ["## Reproduction table", "", "| claim (abstract) | verdict | measured here | how |", "|---|---|---|---|"]
    md += [f"| {c} | {v} | {m} | {h} |" for c, (m, h, v) in claims.items()]
    md += ["", "Verdict rules (analysis/verdicts.py), by claim: " + " ".join(verdicts.RULES)]
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(md) + "\n")
    return path

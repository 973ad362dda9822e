"""The BN-vs-Fixup cost comparison: tables, ratios and figures from one counted training step each.

Two configurations are counted on the same model and batch: fp32 + BN (the baseline) and 8-bit
EOQ + Fixup. The "normalization part" is BN (mean, variance, square root, division, normalize,
affine, their backward) against Fixup's scalar biases and multipliers; the "whole step" is
everything (GEMMs, normalization, elementwise ops, quantizers, loss, update).
    power ratio = energy(baseline) / energy(EOQ) for the same work (pJ per training step; equal
                  throughput assumed, so energy per step is proportional to power)
    speed ratio = cycles(baseline) / cycles(EOQ) on the serial datapath of cost_tables.py
Memory traffic is reported separately (SRAM bytes x pJ/byte) and not in the headline ratios.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from eoq.training.setup import setup
from eoq.training.table import RowView

from ..style import figure, save
from .counter import PHASES, CostTally, count_inference, count_training_step
from .tables import ASSUMPTIONS, DATAPATH_ASSUMPTIONS, DATAPATHS, FORMATS, SOURCES, load_datapath, load_tables

BASELINE = ("bn", "fp32")
EOQ = ("fixup", "eoq")


def count_config(model_name: str, norm: str, preset: str, batch: int = 128, seed: int = 0,
                 inference: str | None = None) -> CostTally:
    """The count of one training step of a prepared model (``inference`` None), or of one
    inference with BN as written ("bn") or folded into a multiply-add ("folded")."""
    s = setup(model_name, norm, preset, seed=seed, rounding_seed=seed, lr=0.1, momentum=0.875)
    model, opt, gen = s.model, s.optimizer, s.generator
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)
    if inference is not None:
        return count_inference(model, x, folded_bn=inference == "folded")
    return count_training_step(model, opt, x, y)


@dataclass(frozen=True)
class PartCost(RowView):
    """Energy (pJ) and cycles of one part of a training step for the baseline (fp32+BN) and EOQ,
    and their ratios. Energy is counted two ways: compute only (``energy_*_pj``: arithmetic, the
    paper's reading) and with the SRAM traffic added (``mem_*_pj`` on top):

        energy_ratio             = energy_base / energy_eoq                     compute only
        energy_ratio_with_memory = (energy + mem)_base / (energy + mem)_eoq     what a chip spends
        power_ratio              = energy_ratio (the same work at the same throughput: energy per
                                   step is proportional to power; the paper's word)
        speed_ratio              = cycles_base / cycles_eoq, serial datapath
        parallel_speed_ratio     = the same on the parallel datapath

    Printing one shows the ratios (memory-inclusive beside compute-only), not only raw pJ.
    """

    energy_base_pj: float
    energy_eoq_pj: float
    cycles_base: float
    cycles_eoq: float
    mem_base_pj: float
    mem_eoq_pj: float
    parallel_base: float = float("nan")   # cycles on the parallel datapath (tables.DEFAULT_DATAPATH)
    parallel_eoq: float = float("nan")

    @property
    def parallel_speed_ratio(self) -> float:
        return self.parallel_base / max(self.parallel_eoq, 1e-30)

    @property
    def energy_ratio(self) -> float:
        """Compute-only energy, baseline / EOQ."""
        return self.energy_base_pj / max(self.energy_eoq_pj, 1e-30)

    @property
    def energy_ratio_with_memory(self) -> float:
        """Energy with SRAM traffic, baseline / EOQ."""
        return (self.energy_base_pj + self.mem_base_pj) / max(self.energy_eoq_pj + self.mem_eoq_pj, 1e-30)

    @property
    def power_ratio(self) -> float:
        """The compute-only energy ratio under the paper's name (same throughput: energy ~ power)."""
        return self.energy_ratio

    def __repr__(self) -> str:
        return (f"PartCost(energy ratio {self.energy_ratio:.1f}x compute only, {self.energy_ratio_with_memory:.1f}x "
                f"with memory traffic; speed ratio {self.speed_ratio:.1f}x serial, {self.parallel_speed_ratio:.1f}x "
                f"parallel; energy {self.energy_base_pj:.4g} -> {self.energy_eoq_pj:.4g} pJ compute, "
                f"{self.mem_base_pj:.4g} -> {self.mem_eoq_pj:.4g} pJ memory)")

    @property
    def speed_ratio(self) -> float:
        return self.cycles_base / max(self.cycles_eoq, 1e-30)


@dataclass(frozen=True)
class CostRatios(RowView):
    """The normalization part (BN against Fixup's scalars) and the whole step."""

    norm: PartCost
    step: PartCost

    def __repr__(self) -> str:
        return f"CostRatios(\n  norm: {self.norm!r},\n  step: {self.step!r})"


def ratios(base: CostTally, eoq: CostTally, energy: dict, cycles: dict, datapath: dict | None = None) -> CostRatios:
    """Energy, serial cycles and parallel-datapath cycles of the normalization part and of the
    whole count, baseline against EOQ."""
    datapath = datapath or DATAPATHS["parallel"]
    parts = {}
    for part, where in (("norm", {"category": "norm"}), ("step", {})):
        parts[part] = PartCost(
            energy_base_pj=base.energy_pj(energy, **where), energy_eoq_pj=eoq.energy_pj(energy, **where),
            cycles_base=base.cycles(cycles, **where), cycles_eoq=eoq.cycles(cycles, **where),
            mem_base_pj=base.energy_pj(energy, include_memory=True, **where) - base.energy_pj(energy, **where),
            mem_eoq_pj=eoq.energy_pj(energy, include_memory=True, **where) - eoq.energy_pj(energy, **where),
            parallel_base=base.latency(cycles, datapath, **where), parallel_eoq=eoq.latency(cycles, datapath, **where))
    return CostRatios(**parts)


READINGS = (("training", "training: BN with batch statistics, forward + backward + update", None),
            ("inference", "inference: BN with running statistics, (x - mu) / sqrt(var + eps) * gamma + beta", "bn"),
            ("inference_folded", "inference: BN folded into one multiply-add per element", "folded"))


@dataclass(frozen=True)
class CostReadings(RowView):
    """The BN cost claim read both ways: the paper's >70x power and >18x speed are against fp32
    BN, in training (its first abstract) or inference (the later one), BN as written or folded."""

    training: CostRatios
    inference: CostRatios
    inference_folded: CostRatios


def readings(model_name: str = "resnet20", batch: int = 128, table_path: str | None = None,
             training: CostRatios | None = None) -> CostReadings:
    """Count every reading of READINGS (``training``, when given, is used as it is)."""
    energy, cycles = load_tables(table_path)
    datapath = load_datapath(table_path)
    out = {"training": training} if training is not None else {}
    eoq_inference = None
    for key, _, inference in READINGS:
        if key in out:
            continue
        base = count_config(model_name, *BASELINE, batch=batch, inference=inference)
        if inference is None:
            eoq = count_config(model_name, *EOQ, batch=batch)
        else:
            eoq = eoq_inference = eoq_inference or count_config(model_name, *EOQ, batch=batch, inference="bn")
        out[key] = ratios(base, eoq, energy, cycles, datapath)
    return CostReadings(**out)


def readings_table(r: CostReadings) -> str:
    lines = ["| reading | power ratio | speed ratio, serial | speed ratio, parallel datapath | paper |",
             "|---|---:|---:|---:|---|"]
    for key, label, _ in READINGS:
        n = r[key].norm
        lines.append(f"| {label} | {n.power_ratio:.1f}x | {n.speed_ratio:.1f}x | {n.parallel_speed_ratio:.1f}x "
                     "| >70x, >18x |")
    return "\n".join(lines)


def layer_table(t: CostTally, energy: dict, cycles: dict) -> str:
    lines = ["| layer | MACs fwd | MACs bwd-err | MACs wgrad | other ops | energy (nJ) | cycles (k) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for layer in t.layers():
        macs = [sum(n for _, n in t.select(layer=layer, category="gemm", phase=p, op="mult")) for p in PHASES[:3]]
        other = sum(n for (lay, cat, ph, op, f), n in t.select(layer=layer)
                    if op not in ("read", "write") and cat != "gemm")
        lines.append(f"| {layer or '(model)'} | {macs[0]:.3g} | {macs[1]:.3g} | {macs[2]:.3g} | {other:.3g} | "
                     f"{t.energy_pj(energy, layer=layer) / 1e3:.4g} | {t.cycles(cycles, layer=layer) / 1e3:.4g} |")
    return "\n".join(lines)


def totals_table(t: CostTally, energy: dict) -> str:
    """Op counts per phase (forward, backward, update) and number format, energy and SRAM bytes, as
    markdown, for one counted step (:func:`count_config`) under the ``energy`` table."""
    lines = ["| phase | " + " | ".join(f"{f} ops" for f in FORMATS) + " | energy (µJ) | SRAM bytes |",
             "|---|" + "---:|" * (len(FORMATS) + 2)]
    for phase in PHASES:
        per = {f: 0.0 for f in FORMATS}
        nbytes = 0.0
        for (_, _, _, op, fmt), n in t.select(phase=phase):
            if op in ("read", "write"):
                nbytes += n
            else:
                per[fmt] += n
        lines.append(f"| {phase} | " + " | ".join(f"{per[f]:.3g}" for f in FORMATS)
                     + f" | {t.energy_pj(energy, phase=phase) / 1e6:.4g} | {nbytes:.3g} |")
    return "\n".join(lines)


def plot_energy(base: CostTally, eoq: CostTally, energy: dict, stem) -> list[Path]:
    """Stacked bars: energy per phase, split by number format, for both configurations (log y)."""
    fig, axes = figure(1, width=6.4, height=3.4)
    ax = axes[0][0]
    colors = {"int8": "#9ecae1", "int16": "#4292c6", "int32": "#08519c", "fp16": "#fdae6b", "fp32": "#d94801"}
    labels, xs = [], []
    for i, (name, t) in enumerate((("fp32+BN", base), ("EOQ+Fixup", eoq))):
        for j, phase in enumerate(PHASES):
            x = i * (len(PHASES) + 1) + j
            bottom = 0.0
            for fmt in FORMATS:
                e = sum(n * energy[op][f] for (_, _, _, op, f), n in t.select(phase=phase)
                        if f == fmt and op not in ("read", "write")) / 1e6
                if e > 0:
                    ax.bar(x, e, bottom=bottom, color=colors[fmt], label=fmt if fmt not in labels else None,
                           edgecolor="white", linewidth=0.5)
                    labels.append(fmt)
                    bottom += e
            xs.append((x, f"{name}\n{phase.replace('_', ' ')}"))
    ax.set_xticks([x for x, _ in xs], [s for _, s in xs], rotation=60, ha="right", fontsize=7)
    ax.set(ylabel="compute energy per step (µJ)", yscale="log",
           title="Training-step compute energy by phase and number format")
    ax.legend(title="format", fontsize=8)
    return save(fig, stem)


def plot_norm(r: dict, stem) -> list[Path]:
    fig, axes = figure(2, width=3.6, height=3.2)
    n = r["norm"]
    for ax, (key_b, key_e, what) in zip(axes[0], (("energy_base_pj", "energy_eoq_pj", "energy per step (µJ)"),
                                                  ("cycles_base", "cycles_eoq", "cycles per step (millions)"))):
        values = [n[key_b] / 1e6, n[key_e] / 1e6]
        bars = ax.bar(["fp32 BN", "8-bit Fixup"], values, color=["#d94801", "#08519c"])
        ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize=9)
        ax.set(ylabel=what, yscale="log", ylim=(min(values) / 10, max(values) * 3))
    axes[0][0].set_title(f"normalization energy: {n['power_ratio']:.0f}x")
    axes[0][1].set_title(f"normalization cycles: {n['speed_ratio']:.1f}x")
    return save(fig, stem)


MEMORY_CONFIGS = (("fp32+BN", "bn", "fp32", 0.9), ("WAGEUBN (as its spec stores it)", "bn", "wageubn", 0.9),
                  ("EOQ+Fixup", "fixup", "eoq", 0.875))


def memory_table(model_name: str) -> list[str]:
    """Training state per weight and saved activations per image, per format (analysis/cost/memory.py)."""
    from eoq.models import build_model

    from .memory import saved_activations, training_state

    lines = ["## Memory: training state and saved activations", "",
             "| configuration | state per weight (bits) | bytes per weight | saved activations per image (KiB) |",
             "|---|---|---:|---:|"]
    for label, norm, preset, mu in MEMORY_CONFIGS:
        st = training_state(preset, mu, label)
        acts = saved_activations(build_model(model_name, norm), preset, label)
        lines.append(f"| {label} | {st.describe()} | {st.bytes_per_weight:g} | {acts.total / 1024:.1f} |")
    lines += ["", "Saved activations: conv/linear inputs in their format (float32 or 8-bit codes), BN inputs in "
              "float32, a one-bit ReLU mask per convolution output; the minimum a backward needs in each format. "
              "Measured peak memory of the engines: benchmarks/bench_memory.py."]
    return lines


def report(model_name: str = "resnet20", batch: int = 128, table_path: str | None = None,
           out_dir: str | None = None) -> tuple[str, CostReadings]:
    """Count both configurations; return the markdown report text and the three readings."""
    energy, cycles = load_tables(table_path)
    base = count_config(model_name, *BASELINE, batch=batch)
    eoq = count_config(model_name, *EOQ, batch=batch)
    r = ratios(base, eoq, energy, cycles, load_datapath(table_path))
    both = readings(model_name, batch, table_path, training=r)
    text = [f"# Cost of one training step: {model_name}, batch {batch}", "",
            f"Energy source: {SOURCES['energy']}.", f"Latency source: {SOURCES['cycles']}.", "",
            "## Normalization part (BN vs Fixup) and whole step", "",
            "| part | fp32+BN energy (µJ) | EOQ+Fixup energy (µJ) | power ratio | fp32+BN cycles (M) | EOQ cycles (M) "
            "| speed ratio | SRAM energy fp32+BN / EOQ (µJ) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for part, label in (("norm", "normalization only"), ("step", "whole training step")):
        p = r[part]
        text.append(f"| {label} | {p['energy_base_pj'] / 1e6:.4g} | {p['energy_eoq_pj'] / 1e6:.4g} | "
                    f"{p['power_ratio']:.1f}x | {p['cycles_base'] / 1e6:.4g} | {p['cycles_eoq'] / 1e6:.4g} | "
                    f"{p['speed_ratio']:.1f}x | {p['mem_base_pj'] / 1e6:.4g} / {p['mem_eoq_pj'] / 1e6:.4g} |")
    text += ["", "Paper's claim for the normalization part: >70x lower power, >18x higher speed than 32-bit "
             "floating-point BN (the later abstract: BN *inference*). Both readings, the normalization part only "
             "(fp32 BN layers against EOQ's 8-bit Fixup scalars), speed by the serial op count and by the "
             "parallel datapath:", "", readings_table(both), "",
             "Derivation: power ratio = (sum over ops of count x energy per op and format) for fp32+BN divided by "
             "the same sum for EOQ+Fixup, over the ops of the part (BN layers vs Fixup scalars) or of the whole "
             "step; speed ratio likewise with cycles per op. Counts come from one real training step.", "",
             "Assumptions:", ""] + [f"- {a}" for a in ASSUMPTIONS + DATAPATH_ASSUMPTIONS] + ["",
             *memory_table(model_name), "",
             "## Totals per phase and format: fp32 + BN", "", totals_table(base, energy), "",
             "## Totals per phase and format: EOQ + Fixup", "", totals_table(eoq, energy), "",
             "## Per layer: EOQ + Fixup", "", layer_table(eoq, energy, cycles), "",
             "## Per layer: fp32 + BN", "", layer_table(base, energy, cycles), ""]
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        plot_energy(base, eoq, energy, out / f"cost_energy_{model_name}")
        plot_norm(r, out / f"cost_norm_{model_name}")
        (out / f"cost_{model_name}.md").write_text("\n".join(text))
    return "\n".join(text), both

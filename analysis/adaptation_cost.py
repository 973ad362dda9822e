"""What one adapted image costs a device, per method and batch size (the online-adaptation study).

    seconds per image   measured twice: (study) the study's seconds of training steps / images
                        adapted at the end of each final cell's stream (one thread, beside the
                        study's other process and whatever else ran), median over cells; (timed)
                        :func:`timed_seconds`, the same adaptation path run alone for a short
                        stream when the study is written, median of a few repeats: the device
                        figure (the study's own spread 2-4x over cells with the machine's load)
    energy per image    counted: the op count of one training step of the base network's model,
                        norm and spec (analysis/cost) x pJ per op, / batch size; compute only and
                        with the SRAM traffic
    memory per step     the training state (weight + momentum bits per weight, analysis/cost/memory.py)
                        + the batch's saved activations: what the device holds while it adapts

The counts come from one real step of each configuration on random inputs (the count depends on
shapes and formats only, not on the values). fp32+BN with frozen statistics is counted as BN with
batch statistics (its normalization part, about 1% of the step's energy, is then an upper bound).
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from eoq.models import build_model
from eoq.training.adapt import AdaptConfig, adapt
from eoq.training.table import RowView

from .cost.memory import saved_activations, training_state
from .cost.report import count_config
from .cost.tables import load_tables


@dataclass(frozen=True)
class AdaptCost(RowView):
    """The device cost of one adapted image of one method at one batch size."""

    method: str
    batch_size: int
    seconds_per_image: float        # measured, median over the study's final cells (nan: none yet)
    timed_seconds_per_image: float  # timed_seconds (nan: not timed)
    energy_uj: float                # compute only, per image
    energy_with_memory_uj: float    # compute + SRAM traffic, per image
    memory_kib: float               # training state + the batch's saved activations, per step


def base_config(bases: Path, folder: str) -> dict:
    """The base run's training config and spec (its config.json)."""
    path = Path(bases) / folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"no config.json in {path.parent}: not a base run folder")
    cfg = json.loads(path.read_text())
    return {"model": cfg["train"]["model"], "norm": cfg["train"]["norm"], "spec": cfg["spec"],
            "momentum": cfg["train"]["momentum"]}


def measured_seconds(final: list[dict], method: str, batch: int) -> float:
    """Median seconds per adapted image over the final cells of ``method`` at ``batch``."""
    ends: dict = {}
    for r in final:
        if r["method"] == method and int(r["batch_size"]) == batch and r["seconds"] == r["seconds"]:
            key = (r["corruption"], int(r["severity"]), int(r["seed"]))
            if int(r["images"]) > 0 and int(r["images"]) >= ends.get(key, (0, 0.0))[0]:
                ends[key] = (int(r["images"]), float(r["seconds"]))
    per = [s / n for n, s in ends.values()]
    return statistics.median(per) if per else float("nan")


def timed_seconds(bases: Path, folder: str, bn: str, batch: int, lr: float, images: int = 200,
                  repeats: int = 3, data: str | None = None, corruption: str = "gaussian_noise",
                  severity: int = 5) -> float:
    """Seconds per adapted image of one method at one batch size: ``repeats`` adaptations of
    ``images`` corrupted images (``eoq adapt``'s path, one thread, seeds 0, 1, ...; training steps
    only, as the study counts them), the median. The base network is loaded and the stream
    corrupted outside the clock."""
    per = []
    for seed in range(repeats):
        cfg = AdaptConfig(run_dir=str(Path(bases) / folder), corruption=corruption, severity=severity,
                          batch_size=batch, samples=images, lr=lr, bn=bn, seed=seed, points=(images,),
                          eval_limit=10, data=data, threads=1, progress=False)
        per.append(adapt(cfg).seconds_per_image)
    return statistics.median(per)


def device_costs(bases: Path, methods: dict, batch_sizes, final: list[dict],
                 table_path: str | None = None, timed: dict | None = None) -> list[AdaptCost]:
    """:class:`AdaptCost` for every method (``{name: (base folder, ...)}``) and batch size; a
    configuration shared by two methods (fp32+BN's two BN modes) is counted once. ``timed``:
    {(method, batch): seconds per image} of :func:`timed_seconds`."""
    energy, _ = load_tables(table_path)
    counted: dict = {}
    out = []
    for method, (folder, *_rest) in methods.items():
        cfg = base_config(bases, folder)
        state = training_state(cfg["spec"], cfg["momentum"], method)
        model = build_model(cfg["model"], cfg["norm"])
        n_weights = sum(p.numel() for p in model.parameters())
        acts = saved_activations(model, cfg["spec"], method)
        for b in batch_sizes:
            key = (folder, b)
            if key not in counted:
                tally = count_config(cfg["model"], cfg["norm"], cfg["spec"], batch=b)
                counted[key] = (tally.energy_pj(energy), tally.energy_pj(energy, include_memory=True))
            compute, with_memory = counted[key]
            out.append(AdaptCost(method=method, batch_size=b, seconds_per_image=measured_seconds(final, method, b),
                                 timed_seconds_per_image=(timed or {}).get((method, b), float("nan")),
                                 energy_uj=compute / b / 1e6, energy_with_memory_uj=with_memory / b / 1e6,
                                 memory_kib=(n_weights * state.bytes_per_weight + b * acts.total) / 1024))
    return out


def cost_table(costs: list[AdaptCost]) -> str:
    """Markdown: one row per method and batch size."""
    lines = ["| method | batch | seconds per image (timed alone, 1 thread) | seconds per image (in the study, "
             "1 thread) | energy per image (µJ, compute) | energy per image (µJ, with SRAM) | memory per step (KiB) |",
             "|---|---:|---:|---:|---:|---:|---:|"]

    def ms(v: float) -> str:
        return "–" if v != v else f"{v * 1e3:.1f} ms"

    for c in costs:
        lines.append(f"| {c.method} | {c.batch_size} | {ms(c.timed_seconds_per_image)} | {ms(c.seconds_per_image)} | "
                     f"{c.energy_uj:.1f} | {c.energy_with_memory_uj:.1f} | {c.memory_kib:.0f} |")
    return "\n".join(lines)

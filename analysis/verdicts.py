"""The verdict on each of the paper's claims: reproduced, not reproduced or not measured, by a stated
rule applied to the numbers a report measured (SPEC section 7: one sentence per claim, with the
number). The rules are here, in one place, and ``RULES`` says them in words for the report.

Claim 1 (8-bit training without BN reaches state-of-the-art integer-training accuracy): at every
depth measured, EOQ's mean test accuracy is within ``ACCURACY_MARGIN`` points of fp32+Fixup's (the
float network it quantizes) and, where WAGEUBN (8-bit training with BN) ran at that depth, not
below it.
Claim 2 (full 8-bit training, 8-bit updates, no 24-bit weight storage): every integer-stored tensor
is 8-bit codes, and no tensor of the training state per weight (weight, momentum, master copy) is
wider than 8 bits (analysis/cost/memory.py); a 16-bit momentum buffer beside 8-bit weights (24 bits
of state per weight, WAGEUBN's accumulator width) does not pass.
Claim 3 (Fixup + quantization keeps block dynamical isometry): in the deepest Fixup network, every
residual unit's phi(JJ^T) of the quantized, trained network is within a fraction ``PHI_TOLERANCE``
of its shortcut's (1 for an identity shortcut; 1/2 for an option-A shortcut, which keeps a quarter
of the positions and zero-pads to twice the channels): phi_unit / phi_shortcut in 1 +- 0.05.
Claim 4 (>70x lower power, >18x faster for the normalization): both ratios reach the abstract's in
a reading; the verdict names the readings that do.
Claim 5 (larger advantage in small-batch online training): at each of the two smallest batch
sizes, EOQ's mean test accuracy is above that of every BN training measured (fp32+BN, WAGEUBN).
"""
from __future__ import annotations

import math

ACCURACY_MARGIN = 1.0     # points of test accuracy (the 30-epoch comparison's goal)
PHI_TOLERANCE = 0.05      # |phi_unit / phi_shortcut - 1| of every residual unit
POWER, SPEED = 70.0, 18.0  # the abstract's ratios

REPRODUCED, NOT_REPRODUCED, NOT_MEASURED = "reproduced", "not reproduced", "not measured"

RULES = [
    f"1: at every depth, EOQ within {ACCURACY_MARGIN:g} point of fp32+Fixup (mean test accuracy over seeds) and "
    "not below WAGEUBN where it ran;",
    "2: every integer-stored tensor holds 8-bit codes and every tensor of the training state per weight "
    "(weight, momentum, master copy) is at most 8 bits;",
    "3: every residual unit of the deepest quantized, trained Fixup network has "
    f"|φ(JJᵀ) / φ(shortcut) − 1| ≤ {PHI_TOLERANCE:g} (φ(shortcut) is 1, or 1/2 for a downsampling "
    "option-A unit);",
    f"4: a reading reaches ≥ {POWER:g}x energy and ≥ {SPEED:g}x speed (the readings that do are named);",
    "5: at the two smallest batch sizes, EOQ above every BN training measured (mean test accuracy over seeds; "
    "on-device adaptation: mean corrupted test accuracy after the stream, over corruptions, severities and "
    "seeds, against fp32+BN with batch and with frozen statistics and WAGEUBN).",
]


def _seeds(n: int | None) -> str:
    return f" ({n} seed{'s' * (n != 1)})" if n else ""


def accuracy(per_depth: list[tuple]) -> str:
    """per_depth: (model, EOQ mean, fp32+Fixup mean or None, WAGEUBN mean or None[, WAGEUBN seeds]),
    accuracies in %; the seed count, where given, is named beside a WAGEUBN comparison that fails."""
    rows = [(m, e, f, w, *n) for m, e, f, w, *n in per_depth if f is not None and not math.isnan(e)]
    if not rows:
        return NOT_MEASURED
    misses = []
    for model, eoq, fixup, wage, *n in rows:
        if eoq < fixup - ACCURACY_MARGIN:
            misses.append(f"{model}: {fixup - eoq:.2f} behind fp32+Fixup")
        if wage is not None and eoq < wage:
            misses.append(f"{model}: {wage - eoq:.2f} behind WAGEUBN{_seeds(n[0] if n else None)}")
    if misses:
        return f"{NOT_REPRODUCED} ({'; '.join(misses)})"
    return REPRODUCED + " (" + "; ".join(
        f"{m}: EOQ {e - f:+.2f} against fp32+Fixup" + (f", {e - w:+.2f} against WAGEUBN" if w is not None else "")
        for m, e, f, w, *_ in rows) + ")"


def storage(on_grid: int | None, total: int | None, spec_bits: int | None = None, state=None) -> str:
    """From a checkpoint (on_grid of total tensors are 8-bit codes) or, without one, the spec's
    stored bit width; and from ``state`` (a TrainingState: bits per weight of each state tensor)."""
    if total:
        if on_grid != total:
            return f"{NOT_REPRODUCED} ({total - on_grid} of {total} off the grid)"
        verdict = REPRODUCED
    elif spec_bits is None:
        return NOT_MEASURED
    elif spec_bits > 8:
        return f"{NOT_REPRODUCED} ({spec_bits}-bit storage)"
    else:
        verdict = REPRODUCED + " (by the spec)"
    if state is not None and state.widest_bits > 8:
        return f"{NOT_REPRODUCED} (8-bit weights, but {state.describe()} of training state per weight)"
    return verdict if state is None else f"{verdict} ({state.total_bits} bits of state per weight)"


def isometry(ratio: float | None, depth: int | None) -> str:
    """``ratio``: phi_unit / phi_shortcut of the residual unit farthest from its shortcut's."""
    if ratio is None or math.isnan(ratio):
        return NOT_MEASURED
    verdict = REPRODUCED if abs(ratio - 1) <= PHI_TOLERANCE else NOT_REPRODUCED
    return f"{verdict} (ResNet-{depth}: unit φ / shortcut φ within {abs(ratio - 1):.2g} of 1)"


def cost(readings: list[tuple[str, float, float]]) -> str:
    """readings: (name, energy ratio, speed ratio)."""
    if not readings:
        return NOT_MEASURED
    hit = [n for n, p, s in readings if p >= POWER and s >= SPEED]
    if hit:
        return f"{REPRODUCED} in: {', '.join(hit)}"
    return f"{NOT_REPRODUCED} in any reading"


def small_batch(per_batch: dict[int, dict[str, float]], bn: tuple = ("fp32+BN", "WAGEUBN")) -> str:
    """per_batch: {batch size: {configuration: mean test accuracy}} for the smallest batch sizes;
    ``bn``: the configurations that train with BN (the online-adaptation study names three)."""
    checked, misses = [], []
    for b, means in sorted(per_batch.items())[:2]:
        eoq = means.get("EOQ")
        bns = {k: v for k, v in means.items() if k in bn and not math.isnan(v)}
        if eoq is None or math.isnan(eoq) or not bns:
            continue
        checked.append(b)
        misses += [f"batch {b}: {k} {v - eoq:.2f} ahead" for k, v in bns.items() if v >= eoq]
    if not checked:
        return NOT_MEASURED
    if misses:
        return f"{NOT_REPRODUCED} ({'; '.join(misses)})"
    return f"{REPRODUCED} (batch {', '.join(map(str, checked))})"

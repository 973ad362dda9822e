"""Learning-rate and momentum schedules as functions of the global step (so a resumed run lands on
the same values).

    onecycle     : linear warm-up from lr/25 to lr over ``warmup`` of the steps, then cosine to 0
    onecycle-cos : PyTorch's OneCycleLR with its defaults (two phases, cosine annealing, same step
                   convention): cosine warm-up from lr/25 to lr until step ``warmup * total - 1``,
                   then cosine down to lr/25/1e4 at the last step
    cosine       : linear warm-up from 0 over ``warmup``, then cosine to 0
    step         : warm-up, then lr x 0.1 at 50% and 75% of the steps
    constant     : warm-up, then lr

Momentum cycling (``momentum_at`` with a lower bound, as OneCycleLR's ``cycle_momentum``): the
momentum moves opposite to the lr, from its maximum where the lr is lowest to the minimum at the
peak: mu = mu_max - (mu_max - mu_min) * f, f = (lr - lr_low) / (peak - lr_low), where lr_low is
the phase's starting lr during warm-up and its final lr afterwards.
"""
from __future__ import annotations

import math

SCHEDULES = ("onecycle", "onecycle-cos", "cosine", "step", "constant")
CYCLIC = ("onecycle", "onecycle-cos", "cosine")      # schedules that momentum cycling can follow


def _cos(start: float, end: float, frac: float) -> float:
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(max(frac, 0.0), 1.0)))


def _bounds(peak: float, kind: str) -> tuple[float, float]:
    """The lr at the first step of warm-up (before it) and at the end of the run."""
    if kind == "onecycle":
        return peak / 25, 0.0
    if kind == "onecycle-cos":
        return peak / 25, peak / 25 / 1e4
    return 0.0, (0.0 if kind == "cosine" else peak)


def lr_at(step: int, total: int, peak: float, kind: str = "onecycle", warmup: float = 0.15) -> float:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    total = max(total, 1)
    start, end = _bounds(peak, kind)
    if kind == "onecycle-cos":
        e1 = warmup * total - 1                   # OneCycleLR's end of phase 1 (a float)
        if step <= e1:
            return _cos(start, peak, step / e1 if e1 > 0 else 1.0)
        return _cos(peak, end, (step - e1) / max(total - 1 - e1, 1e-12))
    n_warm = int(round(warmup * total))
    if step < n_warm:
        return start + (peak - start) * (step + 1) / n_warm
    frac = (step - n_warm) / max(total - n_warm, 1)
    if kind in ("onecycle", "cosine"):
        return peak * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    if kind == "step":
        pos = step / total
        return peak * (0.01 if pos >= 0.75 else 0.1 if pos >= 0.5 else 1.0)
    return peak


def momentum_at(step: int, total: int, peak: float, mu_max: float, mu_min: float | None,
                kind: str = "onecycle", warmup: float = 0.15, shift: bool = False) -> float:
    """The momentum at ``step``: mu_max without cycling (mu_min None), else see the module doc.
    ``shift``: integer updates, whose momentum is 1 - 2^-s: the cycled value is rounded to the
    nearest such value in the log domain (s = round(-log2(1 - mu)), at least 1)."""
    if mu_min is None or peak <= 0:
        return mu_max
    mu = _cycled(step, total, peak, mu_max, mu_min, kind, warmup)
    if shift and 0 < mu < 1:
        mu = 1 - 2.0 ** -max(1, round(-math.log2(1 - mu)))
    return mu


def _cycled(step, total, peak, mu_max, mu_min, kind, warmup) -> float:
    lr = lr_at(step, total, peak, kind, warmup)
    start, end = _bounds(peak, kind)
    in_warmup = step <= warmup * total - 1 if kind == "onecycle-cos" else step < int(round(warmup * max(total, 1)))
    low = start if in_warmup else end
    f = 1.0 if peak == low else (lr - low) / (peak - low)
    return mu_max - (mu_max - mu_min) * min(max(f, 0.0), 1.0)

"""Learning-rate schedules as functions of the global step (so a resumed run lands on the same lr).

    onecycle : linear warm-up from lr/25 to lr over ``warmup`` of the steps, then cosine to 0
    cosine   : linear warm-up from 0 over ``warmup``, then cosine to 0
    step     : warm-up, then lr x 0.1 at 50% and 75% of the steps
    constant : warm-up, then lr
"""
from __future__ import annotations

import math

SCHEDULES = ("onecycle", "cosine", "step", "constant")


def lr_at(step: int, total: int, peak: float, kind: str = "onecycle", warmup: float = 0.15) -> float:
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}; choose one of {SCHEDULES}")
    total = max(total, 1)
    n_warm = int(round(warmup * total))
    start = peak / 25 if kind == "onecycle" else 0.0
    if step < n_warm:
        return start + (peak - start) * (step + 1) / n_warm
    frac = (step - n_warm) / max(total - n_warm, 1)
    if kind in ("onecycle", "cosine"):
        return peak * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    if kind == "step":
        pos = step / total
        return peak * (0.01 if pos >= 0.75 else 0.1 if pos >= 0.5 else 1.0)
    return peak

"""What the integer weight updates of a run look like, step by step, at no cost to the run.

For an optimizer with integer-stored tensors (``EOQSGD.grid``: value = codes * 2^e), after every
optimizer step:
    zero_updates     fraction of the update codes U that are 0 (the weight did not move), over
                     every stored element of the sampled steps
    update_lsb       mean |U| of the non-zero update codes, in LSBs of the weight
    exponent_moves   stored tensors whose exponent e changed in a step (saturation: up one bit,
                     under-use: down one), per 1,000 steps
The updates are read from the optimizer's ``state[p]["last_update"]`` (int8 codes both the fused
kernel and the reference path write), so sampling runs no unfused path and changes no result. At
batch 1 an update is a single sample's gradient times a small learning rate: most codes round to 0
and the stochastic rounding carries the signal, which is what these numbers show.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class UpdateSummary:
    zero_updates: float        # fraction of zero update codes over the sampled steps
    update_lsb: float          # mean |U| of the non-zero codes (weight LSBs)
    exponent_moves: float      # exponent changes of stored tensors per 1,000 steps
    steps: int                 # optimizer steps traced


class UpdateTrace:
    """Call :meth:`after_step` after each optimizer step; :meth:`summary` at the end. Updates are
    sampled every ``every`` steps (counts of exponent moves are taken at every step)."""

    def __init__(self, optimizer, every: int = 1):
        if every < 1:
            raise ValueError(f"update sampling interval must be >= 1, got {every}")
        self.optimizer, self.every = optimizer, every
        self.grids = list(getattr(optimizer, "grid", {}).values())
        if not self.grids:
            raise ValueError("the optimizer stores no tensor as integer codes: no integer updates to trace")
        self.last = self._exponents()
        self.steps = self.moves = self.zeros = self.seen = self.abs_sum = 0

    def _exponents(self) -> torch.Tensor:
        return torch.stack([g.exponent.detach().reshape(()) for g in self.grids])     # a copy

    def after_step(self) -> None:
        e = self._exponents()
        self.moves += int((e != self.last).sum())
        self.last = e
        if self.steps % self.every == 0:
            for g in self.grids:
                u = self.optimizer.state[g.param].get("last_update")
                if u is None:
                    continue
                self.zeros += int((u == 0).sum())
                self.seen += u.numel()
                self.abs_sum += int(u.abs().sum(dtype=torch.int64))
        self.steps += 1

    def summary(self) -> UpdateSummary:
        nonzero = self.seen - self.zeros
        return UpdateSummary(zero_updates=self.zeros / self.seen if self.seen else math.nan,
                             update_lsb=self.abs_sum / nonzero if nonzero else math.nan,
                             exponent_moves=1000.0 * self.moves / self.steps if self.steps else math.nan,
                             steps=self.steps)

"""EOQ SGD: 8-bit integer weight updates, no float master copy; plain SGD for float tensors.

For an integer-stored tensor w = codes * 2^e (see :class:`~eoq.layers.GridParam`):
    g      = G(grad) (+ weight_decay * w)            G already applied by the layer for conv/linear
    v      = M(mu * v + g),  mu = 1 - 2^-s           momentum as a shift; M quantizes the buffer
    delta  = lr * lr_scale * v                       lr rounded to a power of two if spec.lr_pow2
    U      = clamp(SR(delta / 2^e), -(2^(u-1)-1), 2^(u-1)-1)   int8 update in units of the LSB
    codes <- clamp(codes - U, -(2^(k-1)-1), 2^(k-1)-1)
then the exponent policy (:class:`~eoq.spec.WeightPolicy`) may move e by one bit. Float tensors
(fp32 presets, float-end layers, BN) take the usual momentum SGD with the same lr, momentum and
weight decay: v = mu v + g + wd w; w <- w - lr * lr_scale * v.

Fixup scalars train at lr / 10 (``scalar_lr_scale``) and, like biases and BN parameters, without
weight decay.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from .layers import GridParam, Scalar
from .observe import OBSERVERS
from .prepare import SCALAR_LR_SCALE, grid_params
from .quantizers import MIN_EXPONENT, max_code, round_
from .spec import QuantSpec, SpecError, apply_quant


def pow2_round(x: float) -> float:
    """2^round(log2 x): the nearest power of two in the log domain (0 stays 0)."""
    return 0.0 if x <= 0 else 2.0 ** round(math.log2(x))


def momentum_shift(mu: float) -> int | None:
    """s with mu = 1 - 2^-s (None for mu = 0); other values are not a shift."""
    if mu == 0:
        return None
    s = -math.log2(1 - mu) if 0 < mu < 1 else float("nan")
    if not (s == s and s == round(s) and 1 <= s <= 16):
        raise SpecError(f"integer (EOQ) updates need momentum 0 or 1 - 2^-s (0.5, 0.75, 0.875, 0.9375, ...), "
                        f"got {mu}")
    return int(s)


class EOQSGD(torch.optim.Optimizer):
    def __init__(self, model: nn.Module, spec: QuantSpec, lr: float, momentum: float = 0.875,
                 weight_decay: float = 5e-4, scalar_lr_scale: float = SCALAR_LR_SCALE,
                 generator: torch.Generator | None = None):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.spec, self.generator = spec, generator
        self.grid: dict[int, GridParam] = {id(g.param): g for g in grid_params(model)}
        if self.grid:
            momentum_shift(momentum)
        scalar_ids = {id(m.value) for m in model.modules() if isinstance(m, Scalar)}
        groups = {"grid": [], "decay": [], "no_decay": [], "scalar": []}
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if id(p) in self.grid:
                groups["grid"].append(p)
            elif id(p) in scalar_ids:
                groups["scalar"].append(p)
            elif p.dim() > 1:
                groups["decay"].append(p)
            else:
                groups["no_decay"].append(p)
        param_groups = [
            {"params": groups["grid"], "kind": "grid", "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": groups["decay"], "kind": "float", "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": groups["no_decay"], "kind": "float", "lr_scale": 1.0, "weight_decay": 0.0},
            {"params": groups["scalar"], "kind": "float", "lr_scale": scalar_lr_scale, "weight_decay": 0.0},
        ]
        for g in self.grid.values():
            if g.lr_scale != 1.0:
                g.lr_scale = scalar_lr_scale
        super().__init__([g for g in param_groups if g["params"]], {"lr": lr, "momentum": momentum})

    def effective_lr(self, group: dict, grid: GridParam | None = None) -> float:
        lr = group["lr"] * (grid.lr_scale if grid is not None else group["lr_scale"])
        return pow2_round(lr) if grid is not None and self.spec.lr_pow2 else lr

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grid = self.grid.get(id(p))
                if grid is None:
                    self._float_step(p, group)
                else:
                    self._grid_step(p, grid, group)
        return loss

    def _momentum(self, p, g, mu):
        if mu == 0:
            return g
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = g.clone()
        else:
            buf.mul_(mu).add_(g)
        return buf

    def _float_step(self, p, group):
        g = p.grad
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        v = self._momentum(p, g, group["momentum"])
        p.add_(v, alpha=-self.effective_lr(group))

    def _grid_step(self, p, grid: GridParam, group):
        gen, spec = self.generator, self.spec
        g = apply_quant(grid.grad_quant, p.grad, gen, "G", grid.owner)
        if grid.weight_decay and group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        v = self._momentum(p, g, group["momentum"])
        if spec.M.enabled and group["momentum"]:
            v.copy_(apply_quant(spec.M, v, gen, "M", grid.owner))
        inv_lsb = torch.exp2(-grid.exponent)
        u_max = max_code(grid.update.bits)
        delta = v * (self.effective_lr(group, grid) * inv_lsb)        # in units of the weight LSB
        update = round_(delta, grid.update.rounding, gen).clamp_(-u_max, u_max)
        self.state[p]["last_update"] = update.to(torch.int8 if grid.update.bits <= 8 else torch.int32)
        k_max = max_code(grid.bits)
        codes = (p * inv_lsb).round_()
        for obs in OBSERVERS:
            obs.after("U", grid.update, delta, update, grid.owner, weight_codes=codes,
                      weight=(float(grid.exponent), grid.bits))
        codes = codes.sub_(update).clamp_(-k_max, k_max)
        codes = self._rescale(codes, grid, k_max)
        p.copy_(codes.mul_(torch.exp2(grid.exponent)))

    def _rescale(self, codes: torch.Tensor, grid: GridParam, k_max: int) -> torch.Tensor:
        """The exponent policy: up one bit on saturation (SR halving), down one when under-used."""
        policy = self.spec.weight_policy
        amax = float(codes.abs().max())
        if amax >= k_max and float((codes.abs() >= k_max).float().mean()) > policy.saturate_frac:
            grid.exponent += 1
            return round_(codes * 0.5, "stochastic", self.generator).clamp_(-k_max, k_max)
        if 0 < amax < 2 ** (grid.bits - 1 - policy.shrink_bits) and float(grid.exponent) > MIN_EXPONENT:
            grid.exponent -= 1
            return codes * 2
        return codes

"""BatchNorm2d with WAGEUBN-style quantization (used by the 'wageubn' preset with norm='bn').

    mu, std = batch mean and sqrt(var + eps)        quantized to bn_stat_bits (16)
    xhat    = (x - mu_q) / std_q                    quantized to bn_value_bits (8)
    y       = gamma_q * xhat_q + beta_q             gamma, beta quantized to bn_affine_bits (8)
Quantizers are straight-through (the backward is BN's own, through the quantized values). With
all bit widths None it is exactly nn.BatchNorm2d.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..quant.quantizers import sq


def _ste(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    if bits is None:
        return x
    return x + (sq(x.detach(), bits) - x).detach()


class QBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features, **kw):
        super().__init__(num_features, **kw)
        self.stat_bits = self.value_bits = self.affine_bits = None

    @property
    def quantized(self) -> bool:
        return any(b is not None for b in (self.stat_bits, self.value_bits, self.affine_bits))

    def forward(self, x):
        if not self.quantized:
            return super().forward(x)
        if self.training:
            mean = x.mean((0, 2, 3))
            var = x.var((0, 2, 3), unbiased=False)
            with torch.no_grad():
                n = x.numel() / x.shape[1]
                self.num_batches_tracked += 1
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        mean_q = _ste(mean, self.stat_bits)
        std_q = _ste(torch.sqrt(var + self.eps), self.stat_bits)
        xhat = (x - mean_q[None, :, None, None]) / std_q[None, :, None, None]
        xhat = _ste(xhat, self.value_bits)
        gamma = _ste(self.weight, self.affine_bits)
        beta = _ste(self.bias, self.affine_bits)
        return xhat * gamma[None, :, None, None] + beta[None, :, None, None]

"""Bind a quantization spec to a model: resolve per-layer settings, put weights on their grids.

``prepare(model, spec, generator)`` is called once after init (and before loading a checkpoint).
It gives every QConv2d/QLinear its resolved :class:`~eoq.spec.LayerQuant`, every Fixup scalar the
S quantization, every QBatchNorm2d its bit widths, and, for integer-stored tensors, chooses the
LSB exponent (see :class:`~eoq.spec.WeightPolicy`) and rounds the initial values onto the grid.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .batchnorm import QBatchNorm2d
from .layers import GridParam, QConv2d, QLinear, Scalar, init_exponent
from .quantizers import fixed_grid
from .spec import QuantSpec

SCALAR_LR_SCALE = 0.1  # Fixup: scalars train at lr / 10


def _snap(param: nn.Parameter, exp_buf: torch.Tensor, bits: int, ref_max: float) -> None:
    with torch.no_grad():
        exp_buf.fill_(init_exponent(param, bits, ref_max))
        param.copy_(fixed_grid(param, exp_buf, bits))


def prepare(model: nn.Module, spec: QuantSpec, generator: torch.Generator | None = None) -> nn.Module:
    for name, m in model.named_modules():
        m.eoq_name = name
        if isinstance(m, (QConv2d, QLinear)):
            m.quant = spec.layer(name)
            m.generator = generator
            m.store_bits = spec.store_bits if m.quant.U.enabled else None
            if m.store_bits is not None:
                _snap(m.weight, m.weight_exp, m.store_bits, m.ref_max)
                if m.bias is not None:
                    _snap(m.bias, m.bias_exp, m.store_bits, 1.0)
        elif isinstance(m, Scalar):
            m.quant = spec.S
            m.generator = generator
            m.stored = spec.S.enabled and spec.U.enabled
            m.update, m.grad_quant = spec.U, spec.G
            if m.stored:
                _snap(m.value, m.exp, spec.S.bits, 1.0)
        elif isinstance(m, QBatchNorm2d):
            m.stat_bits, m.value_bits, m.affine_bits = spec.bn_stat_bits, spec.bn_value_bits, spec.bn_affine_bits
    return model


def grid_params(model: nn.Module) -> list[GridParam]:
    """Every integer-stored tensor of a prepared model, with its exponent buffer and rules."""
    out: list[GridParam] = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (QConv2d, QLinear)):
            out.extend(m.grid_params(prefix))
        elif isinstance(m, Scalar) and m.stored:
            out.append(GridParam(prefix + "value", m.value, m, m.exp, m.quant.bits,
                                 lr_scale=SCALAR_LR_SCALE, weight_decay=False,
                                 grad_quant=m.grad_quant, update=m.update))
    return out

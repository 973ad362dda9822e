"""Bind a quantization spec to a model: resolve per-layer settings, put weights on their grids.

``prepare(model, spec, generator)`` is called once after init (and before loading a checkpoint).
It gives every QConv2d/QLinear its resolved :class:`~eoq.quant.spec.LayerQuant`, every Fixup scalar the
S quantization, every QBatchNorm2d its bit widths, and, for integer-stored tensors, chooses the
LSB exponent (see :class:`~eoq.quant.spec.WeightPolicy`) and rounds the initial values onto the grid.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..engine import Engine
from ..engine.intengine import check_spec
from ..quant.presets import load_spec
from ..quant.quantizers import fixed_grid
from ..quant.spec import QuantSpec, SpecError
from .batchnorm import QBatchNorm2d
from .layers import FixupScalar, GridParam, QConv2d, QLinear, init_exponent

SCALAR_LR_SCALE = 0.1  # Fixup: scalars train at lr / 10


def _snap(param: nn.Parameter, exp_buf: torch.Tensor, bits: int, ref_max: float) -> None:
    with torch.no_grad():
        exp_buf.fill_(init_exponent(param, bits, ref_max))
        param.copy_(fixed_grid(param, exp_buf, bits))


def prepare(model: nn.Module, spec: QuantSpec | str, generator: torch.Generator | None = None,
            engine: Engine | str = Engine.SIM) -> nn.Module:
    """Bind ``spec`` (a QuantSpec, a preset name or a JSON spec file) to ``model`` and return it;
    ``engine`` 'sim' (float simulation) or 'int' (int8 GEMMs, see eoq.engine.intengine; every
    quantized layer must then have SQ A/E/G/W of at most 8 bits, which fit int8 codes and give the
    simulator's results bit for bit, and 8-bit storage)."""
    engine = Engine.parse(engine, SpecError, "engine")
    spec = load_spec(spec)
    for name, m in model.named_modules():
        m.eoq_name = name
        if isinstance(m, (QConv2d, QLinear)):
            m.quant = spec.layer(name)
            m.generator = generator
            m.engine = engine if m.quant.any else Engine.SIM
            if m.engine == "int":
                check_spec(m.quant, name)
                if spec.store_bits != 8 or not m.quant.U.enabled:
                    raise SpecError(f"engine='int' (--engine int) needs 8-bit integer weight storage (store_bits 8); "
                                    f"layer {name!r} has {spec.store_bits}")
                if isinstance(m, QConv2d) and (m.groups != 1 or m.dilation != (1, 1)
                                               or m.stride[0] != m.stride[1] or m.padding[0] != m.padding[1]):
                    raise SpecError(f"engine='int' (--engine int) supports plain square convolutions; {name!r} is not")
            m.store_bits = spec.store_bits if m.quant.U.enabled else None
            if m.store_bits is not None:
                _snap(m.weight, m.weight_exp, m.store_bits, m.ref_max)
                if m.bias is not None:
                    _snap(m.bias, m.bias_exp, m.store_bits, 1.0)
        elif isinstance(m, FixupScalar):
            m.quant = spec.S
            m.generator = generator
            m.stored = spec.S.enabled and spec.U.enabled
            m.update, m.grad_quant = spec.U, spec.G
            if m.stored:
                _snap(m.value, m.exp, spec.S.bits, 1.0)
        elif isinstance(m, QBatchNorm2d):
            m.stat_bits, m.value_bits, m.affine_bits = spec.bn_stat_bits, spec.bn_value_bits, spec.bn_affine_bits
        if hasattr(type(m), "stream_bits") and getattr(m, "norm", None) == "fixup":   # ResNet and its blocks
            m.stream_bits = spec.stream_bits
    if engine == "int" and not any(getattr(m, "engine", "sim") == "int" for m in model.modules()):
        raise SpecError(f"engine='int' (--engine int) has nothing to compute in integers: spec {spec.name!r} quantizes "
                        "no layer (use the eoq preset)")
    return model


def grid_params(model: nn.Module) -> list[GridParam]:
    """Every integer-stored tensor of a prepared model, with its exponent buffer and rules."""
    out: list[GridParam] = []
    for name, m in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(m, (QConv2d, QLinear)):
            out.extend(m.grid_params(prefix))
        elif isinstance(m, FixupScalar) and m.stored:
            out.append(GridParam(prefix + "value", m.value, m, m.exp, m.quant.bits,
                                 lr_scale=SCALAR_LR_SCALE, weight_decay=False,
                                 grad_quant=m.grad_quant, update=m.update))
    return out

"""What a device holds to train: training state per weight and saved activations per image, by format.

Training state (between steps, per weight), from a spec and the optimizer's momentum:

    weight        the stored weight: ``store_bits`` integer codes (EOQ 8, WAGEUBN's accumulator 24)
                  or a float32 weight (32)
    momentum      the momentum buffer: M's bits in the integer update, float32 (32) where the update
                  keeps it in float, 0 without momentum
    master copy   a float32 copy beside integer weights (none of our presets keeps one)

(A per-tensor exponent, an integer per tensor, is not per weight and is left out.)

Saved activations (what backward needs of one image, held from the forward until the backward):
the input of every convolution and linear layer (float32 4 bytes per element; integer codes 1 byte
when A is quantized to at most 8 bits), every BN's input (4 bytes; its normalized value and
statistics are per channel or recomputable), and a ReLU's sign mask (1 bit per element; in our
ResNets one ReLU follows every convolution, directly or after the residual sum). This is
the minimum a backward needs in each format, counted from the model's shapes; the measured peak
memory of our engines is in ``benchmarks/bench_memory.py`` (reports/benchmarks.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from eoq.quant.presets import load_spec
from eoq.quant.spec import QuantSpec
from eoq.training.table import RowView


@dataclass(frozen=True)
class TrainingState(RowView):
    """Bits of training state per weight of one configuration."""

    config: str
    weight_bits: int
    momentum_bits: int
    master_bits: int = 0

    @property
    def total_bits(self) -> int:
        return self.weight_bits + self.momentum_bits + self.master_bits

    @property
    def bytes_per_weight(self) -> float:
        return self.total_bits / 8

    @property
    def widest_bits(self) -> int:
        """The widest single state tensor per weight (claim 2: at most 8 bits each)."""
        return max(self.weight_bits, self.momentum_bits, self.master_bits)

    def describe(self) -> str:
        parts = [f"{self.weight_bits}-bit weight"]
        parts.append(f"{self.momentum_bits}-bit momentum" if self.momentum_bits else "no momentum")
        if self.master_bits:
            parts.append(f"{self.master_bits}-bit master copy")
        return f"{self.total_bits} bits ({' + '.join(parts)})"


def training_state(spec: QuantSpec | str, momentum: float, config: str | None = None) -> TrainingState:
    """The training state per weight of ``spec`` trained with ``momentum`` (0: none)."""
    spec = load_spec(spec)
    weight = spec.store_bits if spec.store_bits is not None else 32
    if not momentum:
        m = 0
    elif spec.store_bits is not None and spec.M.enabled:
        m = spec.M.bits          # the buffer's M codes (int8/int16 codes in memory)
    else:
        m = 32
    return TrainingState(config or spec.name, weight, m)


@dataclass(frozen=True)
class SavedActivations(RowView):
    """Bytes backward needs of one image, by kind, for one configuration."""

    config: str
    layer_inputs: float
    bn_inputs: float
    relu_masks: float

    @property
    def total(self) -> float:
        return self.layer_inputs + self.bn_inputs + self.relu_masks


def saved_activations(model: nn.Module, spec: QuantSpec | str, config: str | None = None,
                      size: int = 32) -> SavedActivations:
    """Count :class:`SavedActivations` of ``model`` (prepared or not) for one ``size`` x ``size`` image
    under ``spec`` (the layers' A bits decide 1 or 4 bytes per input element)."""
    from eoq.nn.batchnorm import QBatchNorm2d
    from eoq.nn.layers import QConv2d, QLinear

    spec = load_spec(spec)
    sums = {"layer_inputs": 0.0, "bn_inputs": 0.0, "relu_masks": 0.0}
    hooks = []

    def on_layer(m, inputs, out):
        a = spec.layer(m.eoq_name).A
        width = 1 if a.enabled and a.bits <= 8 else 4
        sums["layer_inputs"] += inputs[0].numel() * width
        if isinstance(m, (QConv2d, nn.Conv2d)):
            sums["relu_masks"] += out.numel() / 8

    def on_bn(_m, inputs, _out):
        sums["bn_inputs"] += inputs[0].numel() * 4

    names = {m: n for n, m in model.named_modules()}
    for m in model.modules():
        if isinstance(m, (QConv2d, QLinear, nn.Conv2d, nn.Linear)):
            if not hasattr(m, "eoq_name"):
                m.eoq_name = names[m]
            hooks.append(m.register_forward_hook(on_layer))
        elif isinstance(m, (QBatchNorm2d, nn.BatchNorm2d)):
            hooks.append(m.register_forward_hook(on_bn))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(torch.zeros(1, 3, size, size))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return SavedActivations(config or spec.name, **sums)

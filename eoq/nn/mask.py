"""The ReLU masks a backward needs, kept as bits.

The exact Fixup block (eoq/nn/fixup_tail.py) and the ReLU before a branch's second conv
(eoq/nn/layers.py) keep, for the backward, which elements passed their ReLU: v > 0. As bools that
was a byte an element, 23 of the 91 MiB the integer engine saved for a ResNet-20 batch-128 backward.
With the compiled kernels a mask is bits instead (``csrc/stream.cpp``): uint8[ceil(n / 8)], element i
of the source tensor's *memory* order in bit i & 7 of byte i >> 3, so the backward also needs that
tensor's strides (the callers keep them beside it). Without the kernels a mask is a bool tensor, as
before; every function here takes either, and the results are the same bit for bit.
"""
from __future__ import annotations

import torch

from .. import kernels
from .stream import dense


def packed(live: torch.Tensor) -> bool:
    """Whether ``live`` is a bit mask (else a bool tensor of the source's shape)."""
    return live.dtype == torch.uint8


def greater(x: torch.Tensor, t: float) -> torch.Tensor:
    """The mask x > t (t compared as a float32, as torch compares a float32 tensor with a float)."""
    kern = kernels.usable(x)
    if kern is not None and dense(x):
        return kern.live_bits(x.detach(), float(t))
    return x > t


def bools(live: torch.Tensor, shape, strides) -> torch.Tensor:
    """The mask as a bool tensor of the source's shape and memory layout."""
    if not packed(live):
        return live
    out = torch.empty_strided(tuple(shape), tuple(strides), dtype=torch.bool)
    return kernels.load().unpack_bits(live, out)


def where(grad: torch.Tensor, live: torch.Tensor, strides) -> torch.Tensor:
    """grad where live, else +0.0 (``torch.where(live, grad, 0.0)``); ``strides``: the source's."""
    if packed(live):
        kern = kernels.usable(grad)
        if kern is not None and grad.stride() == tuple(strides) and dense(grad):
            return kern.masked_bits(grad, live)
        live = bools(live, grad.shape, strides)
    return torch.where(live, grad, 0.0)

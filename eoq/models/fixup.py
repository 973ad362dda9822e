"""Fixup initialization (Zhang, Dauphin, Ma, ICLR 2019; SPEC section 3).

With L residual branches of m weight layers each:
  - the last layer of every branch and the classifier (weight and bias) start at zero;
  - the other branch layers get He init (fan-out, as the reference code) times L^(-1/(2m-2));
  - scalar biases (init 0) and one multiplier per branch (init 1) are the only extra parameters.
Zero-initialised layers record the scale a nonzero init would have had (``ref_max``): integer
storage needs an LSB exponent before the weights have grown.
"""
from __future__ import annotations

import math

import torch.nn as nn


def fixup_branch_factor(num_branches: int, layers_per_branch: int) -> float:
    """L^(-1/(2m-2)): 1/sqrt(L) for basic blocks (m=2), L^(-1/4) for bottlenecks (m=3)."""
    if num_branches < 1 or layers_per_branch < 2:
        raise ValueError("Fixup needs L >= 1 branches of m >= 2 layers")
    return num_branches ** (-1.0 / (2 * layers_per_branch - 2))


def he_fan_out_std(conv: nn.Conv2d) -> float:
    """sqrt(2 / (out_channels * kh * kw)), the reference code's He (fan-out) std."""
    kh, kw = conv.kernel_size
    return math.sqrt(2.0 / (conv.out_channels * kh * kw))


def init_fixup_branch(convs: list, factor: float) -> None:
    """He-init the branch's convs scaled by ``factor``, then zero the last one."""
    for conv in convs[:-1]:
        nn.init.normal_(conv.weight, 0.0, he_fan_out_std(conv) * factor)
    last = convs[-1]
    last.ref_max = 3 * he_fan_out_std(last) * factor
    nn.init.zeros_(last.weight)

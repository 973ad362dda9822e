"""The loss of a training step: cross-entropy, with dL/dlogits rounded once where the datapath is integer.

dL/dlogits = (softmax(z) - onehot) / batch is the one float operation of an integer training step.
PyTorch's float32 softmax is vectorised differently per instruction set (AVX-512, AVX2, the scalar
``ATEN_CPU_CAPABILITY=default``), so its last bit depends on the CPU, and through the first error
quantizer so would everything after it. For a spec with an integer datapath (``spec.stream_bits``:
the eoq family) the loss and its gradient are computed in float64 and dL/dlogits is rounded once to
float32: a float64 result within 1 ulp of a float32 rounding boundary is the only way two CPUs can
still differ (probability about 2^-28 per element), and golden files written with either
capability agree byte for byte (tests/test_golden.py). Float specs keep the float32 loss.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def step_loss(logits: torch.Tensor, y: torch.Tensor, spec=None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of ``logits`` against ``y`` (float32 loss); float64 inside for integer datapaths."""
    if spec is not None and getattr(spec, "stream_bits", None):
        return F.cross_entropy(logits.double(), y, label_smoothing=label_smoothing).float()
    return F.cross_entropy(logits, y, label_smoothing=label_smoothing)

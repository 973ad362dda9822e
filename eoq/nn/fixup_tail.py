"""The end of a Fixup residual block, y = relu(x * s + b + identity), as one op under EOQ.

x is the output of the branch's last quantized conv, s the Fixup multiplier and b the last bias
(SPEC §3). Unfused, this is four passes over an activation-sized tensor forward (multiply, add,
add, ReLU) and a multiply backward that only feeds the conv's E quantizer. Fused:

    forward   one kernel pass (``csrc/tail.cpp``), each step torch's float32 operation
    backward  g = grad * [y > 0]                 (threshold_backward, as autograd's ReLU)
              d identity = g,  d b = sum(g),  d s = sum(g * x)    (autograd's own reductions)
              d x = E(g * s) quantized here (simulator: ``sq_times``), or left to the integer
              conv's E quantizer, whose kernel multiplies on the fly (``eoq.quant.fusion.defer``)

With ``bits`` (a model whose stream is held in fixed point, spec ``stream_bits``) every step is
exact instead, in float64, and the sums of the backward too; y is then rounded once, to the stream.
Either way, outputs, gradients and random bits equal those of the separate modules bit for bit (tests:
tests/test_layers.py, tests/test_intengine.py). It is used when the conv's E is a plain SQ and
nothing observes the tensors (:func:`eoq.nn.layers._fusable`); fp32 and observed runs take the
modules one by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import kernels
from ..quant import fusion
from ..quant import quantizers as Q
from .layers import _fusable, exact_sum
from .stream import fx, to_stream


def _tail(x: torch.Tensor, s: torch.Tensor, b: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    kern = kernels.usable(x)
    if kern is not None and identity.dtype == x.dtype and identity.shape == x.shape \
            and identity.stride() == x.stride() \
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return kern.fixup_tail(x, float(s), float(b), identity)
    return torch.relu(x * s + b + identity)


class _FixupTailFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, b, identity, layer, bits):
        if bits:           # exact in float64, then the stream's one rounding (stream.py)
            y = torch.relu(x.double() * s.detach().double() + b.detach().double() + identity.double())
            live = y > 0
            y = fx(y, bits)
        else:
            y = _tail(x, s.detach(), b.detach(), identity)
            live = y
        ctx.save_for_backward(x, s, live)
        ctx.layer, ctx.b_shape, ctx.exact = layer, b.shape, bool(bits)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, s, live = ctx.saved_tensors
        layer = ctx.layer
        if ctx.exact:      # grad: the error stream (16-bit values); the sums exact in float64
            g = torch.where(live, grad, 0.0)
            gb = exact_sum(g, ctx.b_shape) if ctx.needs_input_grad[2] else None
            gs = exact_sum(g.double() * x.double(), s.shape) if ctx.needs_input_grad[1] else None
        else:
            g = torch.ops.aten.threshold_backward(grad, live, 0)
            gb = g.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[2] else None
            gs = (g * x).sum_to_size(s.shape) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            if layer.engine == "int":
                gx = fusion.defer(g.view_as(g), layer, fusion.Affine(mult=float(s)))
            else:
                q = layer.quant.E
                gx = fusion.mark_quantized(Q.sq_times(g, s.detach(), q.bits, q.rounding, layer.generator), layer)
        return gx, gs, gb, g if ctx.needs_input_grad[3] else None, None, None


def fixup_tail(x, scale, bias, identity, layer, bits: int | None = None):
    """relu(bias(scale(x)) + identity) for ``x`` = ``layer``'s output (see module doc). ``bits``:
    every step exact and the result rounded to the ``bits``-bit stream (eoq/nn/stream.py)."""
    if not _fusable(layer, "E"):
        if bits:
            return to_stream(F.relu(bias(scale(x.double(), after=layer)) + identity.double()), bits)
        return F.relu(bias(scale(x, after=layer)) + identity)
    return _FixupTailFn.apply(x, scale.effective(), bias.effective(), identity, layer, bits)

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
from . import mask, stream
from .layers import _fusable, fusing_allowed
from .stream import dense, fx, to_stream


def _tail(x: torch.Tensor, s: torch.Tensor, b: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    kern = kernels.usable(x)
    if kern is not None and identity.dtype == x.dtype and identity.shape == x.shape \
            and identity.stride() == x.stride() \
            and (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
        return kern.fixup_tail(x, float(s), float(b), identity)
    return torch.relu(x * s + b + identity)


class _FixupTailFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s, b, identity, layer, bits, pair, ahead):
        if bits:           # exact, then the stream's one rounding (stream.py)
            y, live = exact_tail(x, s.detach(), b.detach(), identity, bits, ahead=ahead)
        else:
            y = _tail(x, s.detach(), b.detach(), identity)
            live = y
        ctx.save_for_backward(x, s, live)
        ctx.layer, ctx.b_shape, ctx.exact, ctx.strides = layer, b.shape, bool(bits), x.stride()
        ctx.pair, ctx.handoff = pair, None
        if bits and mask.packed(live) and y.stride() == x.stride() and dense(x) and fusing_allowed():
            # the stream's rounding of y's error may mask it and take the sums below in its pass
            ctx.handoff = fusion.GradHandoff("tail")
            ctx.handoff.live, ctx.handoff.x, ctx.handoff.strides, ctx.handoff.ready = live, x, x.stride(), True
            fusion.offer_backward(y, None, ctx.handoff)
        return y

    @staticmethod
    def backward(ctx, grad):
        x, s, live = ctx.saved_tensors
        layer = ctx.layer
        done = ctx.handoff.take(grad) if ctx.handoff is not None else None
        if done is not None:   # the stream's rounding of grad masked it and took the sums (stream.py)
            g, gb, gs, amax = done
            g, gb, gs = fusion.know_max(g, amax), gb.view(ctx.b_shape), gs.view(s.shape)
        elif ctx.exact:    # grad: the error stream (16-bit values); the sums exact, in double
            g, gb, gs = masked_exact_sums(grad, live, x, ctx.strides)
            gb, gs = gb.view(ctx.b_shape), gs.view(s.shape)
        else:
            g = torch.ops.aten.threshold_backward(grad, live, 0)
            gb = g.sum_to_size(ctx.b_shape) if ctx.needs_input_grad[2] else None
            gs = (g * x).sum_to_size(s.shape) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            if layer.engine == "int":
                gx = fusion.defer(fusion.know_max(g.view_as(g), fusion.known_max(g)), layer,
                                  fusion.Affine(mult=float(s)))
            else:
                q = layer.quant.E
                gx = fusion.mark_quantized(Q.sq_times(g, s.detach(), q.bits, q.rounding, layer.generator), layer)
        if ctx.pair is not None and ctx.needs_input_grad[3]:
            ctx.pair.identity = g         # the identity's error, for the block's error sum (fusion.ErrorSum)
        return gx, gs, gb, g if ctx.needs_input_grad[3] else None, None, None, None, None


def exact_tail(x, s, b, identity, bits: int, relu: bool = True, ahead=None):
    """(FX(relu(x * s + b + identity), bits) as float32, the mask of the ReLU before rounding):
    one kernel call (``csrc/stream.cpp``, the mask as bits in x's memory order, eoq/nn/mask.py)
    where x and identity share a layout, else the float64 torch ops (a bool mask). ``identity``
    may be None (the stem). ``ahead`` = (bias, bits): the kernel also makes the nearest SQ codes
    of y + bias, which the next block's first conv takes (fusion.know_codes)."""
    kern = kernels.usable(x)
    ends = None
    if identity is not None and relu:      # the max pass found by the conv that wrote x (fusion.know_tail)
        ends = fusion.known_tail(x, identity, float(s), float(b))
    if kern is not None and dense(x) and identity is not None and identity.stride() != x.stride():
        identity = torch.empty_like(x, dtype=identity.dtype).copy_(identity)    # x's memory order
    if kern is not None and dense(x):
        for f in stream.LISTENERS:
            f(x.numel(), False, False)
        known = ends or (0.0, 0.0, -1.0)
        a_bias, a_bits = ahead if ahead is not None else (0.0, 0)
        y, live, _, lo, hi, codes, lsb = stream._checked(
            lambda: kern.fx_affine(x.detach(), float(s), float(b), stream._EMPTY if identity is None else identity.detach(),
                                   relu, bits, *known, a_bits, a_bias))
        if a_bits:
            fusion.know_codes(y, a_bias, a_bits, codes, lsb)
        return fusion.know_range(y, lo, hi), live        # the next A quantizer needs no max pass
    t = x.double() * s.double() + b.double()
    if identity is not None:
        t = t + identity.double()
    t = torch.relu(t) if relu else t
    return fx(t, bits), t > 0


def masked_exact_sums(grad, live, x, strides):
    """(g = grad where live, sum g, sum g * x): the sums in double, rounded once to float32.
    ``live``: a mask of eoq/nn/mask.py made from a tensor of memory layout ``strides``."""
    kern = kernels.usable(grad)
    if kern is not None and mask.packed(live) and x.dtype == grad.dtype and x.stride() == tuple(strides) \
            and grad.stride() != x.stride() and dense(grad) and dense(x):
        grad = torch.empty_like(x).copy_(grad)     # x's memory order (the pooling head's error is NCHW)
    if kern is not None and mask.packed(live) and x.dtype == grad.dtype \
            and x.stride() == grad.stride() == tuple(strides) and dense(grad):
        g, sg, sgx, amax = kern.masked_sums(grad, live, x)
        return fusion.know_max(g, amax), sg, sgx         # max|g|: E's quantizer needs no max pass
    g = mask.where(grad, live, strides)
    return (g, *exact_sums(g, x))


def exact_sums(g, x):
    """(sum g, sum g * x) in double, each rounded once to float32 (one-element tensors)."""
    kern = kernels.usable(g)
    if kern is not None and x.dtype == g.dtype and x.stride() == g.stride() and dense(g):
        return kern.dot_sums(g, x)
    sg, sgx = float(g.double().sum()), float((g.double() * x.double()).sum())
    return torch.tensor([sg], dtype=torch.float32), torch.tensor([sgx], dtype=torch.float32)


def fixup_tail(x, scale, bias, identity, layer, bits: int | None = None, pair=None, ahead=None):
    """relu(bias(scale(x)) + identity) for ``x`` = ``layer``'s output (see module doc). ``bits``:
    every step exact and the result rounded to the ``bits``-bit stream (eoq/nn/stream.py); ``pair``:
    the block's eoq.quant.fusion.ErrorSum, which the backward hands the identity's error; ``ahead``:
    (bias, bits) of the next block's first A quantizer (exact_tail)."""
    if not _fusable(layer, "E"):
        if bits:
            return to_stream(F.relu(bias(scale(x.double(), after=layer)) + identity.double()), bits)
        return F.relu(bias(scale(x, after=layer)) + identity)
    return _FixupTailFn.apply(x, scale.effective(), bias.effective(), identity, layer, bits, pair, ahead)


class _FixupStemFn(torch.autograd.Function):
    """FX(relu(x + b), bits) after the stem conv (CIFAR layout), with the exact backward:
    d x = grad where x + b > 0, d b = its sum (in double, rounded once)."""

    @staticmethod
    def forward(ctx, x, b, bits):
        y, live = exact_tail(x, torch.ones(1), b.detach(), None, bits)
        ctx.save_for_backward(live)
        ctx.b_shape, ctx.dtype, ctx.strides = b.shape, x.dtype, x.stride()
        return y

    @staticmethod
    def backward(ctx, grad):
        (live,) = ctx.saved_tensors
        g, gb, _ = masked_exact_sums(grad, live, grad, ctx.strides)
        return g.to(ctx.dtype), gb.view(ctx.b_shape), None


def fixup_stem(x, bias, bits: int):
    """The stream's first value: relu(bias(x)) exactly, rounded to ``bits`` (see _FixupStemFn); the
    module ops in float64 where nothing may be fused (an observer, the cost model)."""
    if not fusing_allowed():
        return to_stream(F.relu(bias(x.double())), bits)
    return _FixupStemFn.apply(x, bias.effective(), bits)

"""Quantized layers: Conv2d and Linear with quantized W, A, E and G, and the Fixup scalars.

Forward:   out = conv(A(x), W(w))
Backward:  e = E(dL/dout)                         error quantized where it arrives
           dL/dx = conv_input_grad(e, W(w))       int8 E x int8 W (exact products)
           dL/dw = G(conv_weight_grad(A(x), e))   int8 A x int8 E, then quantized to G bits
The error passed to the input is not re-quantized here; it is quantized where it arrives at the
output of the layer below. Layers whose spec is all-float take PyTorch's own fast path.

Integer-stored tensors (weights under EOQ, Fixup scalars) carry a power-of-two LSB exponent in a
buffer; the parameter's float value is always exactly ``codes * 2^exponent`` (the optimizer keeps
it so), which is a lossless view of the int8 codes, not a master copy with extra precision.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import distributed, kernels
from ..engine import intengine
from ..quant import fusion
from ..quant import quantizers as Q
from ..quant.apply import apply_quant
from ..quant.observe import listening
from ..quant.spec import FLOAT, LayerQuant, TensorQuant
from . import mask
from .stream import dense


@dataclass
class GridParam:
    """A parameter stored as integer codes: value = codes * 2^exponent, |codes| <= 2^(bits-1)-1."""

    name: str
    param: nn.Parameter
    owner: nn.Module
    exponent: torch.Tensor  # 0-d float buffer of its module, the LSB exponent
    bits: int
    lr_scale: float = 1.0
    weight_decay: bool = True
    grad_quant: TensorQuant = FLOAT  # applied by the optimizer when the layer did not quantize G
    update: TensorQuant = FLOAT

    def codes(self) -> torch.Tensor:
        """The integer codes, value / 2^exponent, as an integer tensor (int8 for up to 8 bits, int16
        up to 16, else int32); ``int(self.exponent)`` is the exponent (value = codes * 2^exponent).

        >>> import torch
        >>> from eoq.nn.layers import GridParam
        >>> p = torch.nn.Parameter(torch.tensor([0.5, -0.25, 0.125]))
        >>> g = GridParam("w", p, None, torch.tensor(-3.0), 8)
        >>> g.codes(), int(g.exponent)
        (tensor([ 4, -2,  1], dtype=torch.int8), -3)
        """
        return self.code_values().to(Q.code_dtype(self.bits))

    def code_values(self) -> torch.Tensor:
        """The codes as float32 values (exact: at most 24 bits), for arithmetic on them."""
        return (self.param.detach() * torch.exp2(-self.exponent)).round_()


def init_exponent(value: torch.Tensor, bits: int, ref_max: float) -> float:
    """Smallest LSB exponent e with max|value| <= (2^(bits-1)-1) * 2^e: no code saturates at init.

    A tensor that is zero at init (Fixup's zero-initialised layers) uses ``ref_max`` instead."""
    amax = float(value.detach().abs().max()) if value.numel() else 0.0
    amax = amax if amax > 0 else ref_max
    return float(math.ceil(math.log2(amax / Q.max_code(bits))))


class _QuantizedLayer:
    """Shared state of QConv2d/QLinear: resolved spec, RNG, storage exponent."""

    quant: LayerQuant
    generator: torch.Generator | None
    store_bits: int | None
    ref_max: float

    def _setup_quant(self, ref_max: float) -> None:
        self.quant = LayerQuant()
        self.generator = None
        self.store_bits = None
        self.engine = "sim"          # "int": eoq.engine.intengine computes this layer on int8 codes
        self.ref_max = ref_max
        self.register_buffer("weight_exp", torch.zeros(()))

    def forward_weight(self, w: torch.Tensor) -> torch.Tensor:
        """W as used in the forward: the stored codes as they are, or re-quantized to W bits."""
        q = self.quant.W
        if not q.enabled or (self.store_bits is not None and q.bits >= self.store_bits):
            return w
        return apply_quant(q, w, self.generator, "W", self)

    def grid_params(self, prefix: str) -> list[GridParam]:
        if self.store_bits is None:
            return []
        out = [GridParam(prefix + "weight", self.weight, self, self.weight_exp, self.store_bits,
                         update=self.quant.U)]
        if getattr(self, "bias", None) is not None:
            out.append(GridParam(prefix + "bias", self.bias, self, self.bias_exp, self.store_bits,
                                 weight_decay=False, update=self.quant.U,
                                 grad_quant=self.quant.G))
        return out


def _input_quant(x, layer):
    """A(x), unless x came out of :class:`_BiasQuantFn` already quantized for this layer (float32:
    an exact float64 input's codes fit it)."""
    if fusion.quantized_for(x, layer):
        return x
    return apply_quant(layer.quant.A, x, layer.generator, "A", layer).float()


def exact_sum(t: torch.Tensor, shape) -> torch.Tensor:
    """t summed to ``shape`` exactly (in double: the values are integers times a power of two, and
    their sum needs fewer than 53 bits), then rounded once to float32: the gradient of a Fixup
    scalar, whatever order the reduction takes. One kernel pass for a full sum of a float32 tensor."""
    kern = kernels.usable(t)
    if kern is not None and math.prod(shape) == 1 and (t.is_contiguous()
                                                       or t.is_contiguous(memory_format=torch.channels_last)):
        return kern.sum_f32(t).view(shape)
    return t.double().sum_to_size(shape).float()


class _BiasQuantFn(torch.autograd.Function):
    """A(x + b) for a Fixup bias b feeding a quantized layer, in one pass (no x + b tensor).

    Backward: d/dx = grad (the layer's A is straight-through), d/db = grad summed to b's shape,
    exactly what autograd computes for x + b."""

    @staticmethod
    def forward(ctx, x, v, layer):
        ctx.v_shape = v.shape
        q = layer.quant.A
        return Q.sq_plus(x, v, q.bits, q.rounding, layer.generator)

    @staticmethod
    def backward(ctx, grad):
        gv = exact_sum(grad, ctx.v_shape) if ctx.needs_input_grad[1] else None
        return grad, gv, None


_UNFUSED = [0]


@contextmanager
def unfused():
    """Run every Fixup scalar, bias, ReLU and residual add as its own module or op (no fused
    block tail, no deferred bias): for tools that attribute work to modules, such as the cost
    model, which must see the same ops whether or not a kernel fuses them."""
    _UNFUSED[0] += 1
    try:
        yield
    finally:
        _UNFUSED[0] -= 1


def _quantized(layer) -> bool:
    """Whether ``layer`` quantizes anything: the elementwise work in front of it is then exact
    (float64), as in the fused kernels, and only its quantizers round."""
    q = getattr(layer, "quant", None)
    return q is not None and q.any


def fusing_allowed() -> bool:
    """No observer wants unquantized tensors, no cost count needs the modules one by one, no
    data-parallel sharding: fused kernels may replace module ops."""
    return not (listening() or _UNFUSED[0] or distributed.active())


def _fusable(layer, kind: str) -> bool:
    """Whether ``layer``'s quantization of ``kind`` (A or E) may be fused into a neighbouring op:
    a plain SQ, no observer wanting the unquantized tensor, no data-parallel sharding (its max
    is global), not inside :func:`unfused`."""
    q = getattr(layer, "quant", None)
    if q is None or not q.any or listening() or _UNFUSED[0] or distributed.active():
        return False
    t = getattr(q, kind)
    return t.enabled and t.quantizer == "sq"


class _DeferredBiasFn(torch.autograd.Function):
    """x + v as the input of an integer-engine layer, left to that layer's A quantizer, whose
    kernel adds v on the fly (no x + v tensor). The output aliases x and carries v; the backward is
    that of x + v."""

    @staticmethod
    def forward(ctx, x, v, handoff):
        ctx.v_shape, ctx.handoff = v.shape, handoff
        if math.prod(v.shape) == 1:
            handoff.ready, handoff.strides = True, x.stride()     # offered to the layer (fusion.offer_backward)
        return fusion.carry(x, x.view_as(x))

    @staticmethod
    def backward(ctx, grad):
        if not ctx.needs_input_grad[1]:
            return grad, None, None
        done = ctx.handoff.take(grad)              # the layer took the sum in its store
        return grad, (done[1].view(ctx.v_shape) if done is not None else exact_sum(grad, ctx.v_shape)), None


def fused_bias_input(x, v, layer):
    """x + v as the input of ``layer``: fused with its A quantization when that is a plain SQ and
    no observer wants the unquantized tensor; otherwise the plain sum."""
    if not _fusable(layer, "A"):
        return x.double() + v if _quantized(layer) else x + v
    if layer.engine == "int":
        handoff = fusion.GradHandoff("sum")
        handoff.error_sum = fusion.error_sum_of(x)     # a block's branch input: its error sum's max too
        out = fusion.defer(_DeferredBiasFn.apply(x, v, handoff), layer, fusion.Affine(bias=float(v.detach())))
        return fusion.offer_backward(out, layer, handoff)
    return fusion.mark_quantized(_BiasQuantFn.apply(x, v, layer), layer)


class _ReluBiasQuantFn(torch.autograd.Function):
    """A(relu(x + b_out) + b_in) between two convs of a Fixup branch, in two passes over x (no
    x + b_out, ReLU or + b_in tensors): the simulator's version of b_in(relu(b_out(x))).

    Backward, exactly what autograd computes for the unfused ops (A is straight-through):
    d/db_in = sum(grad); d/dx = grad where x + b_out > 0, else 0 (in float32, x + b_out > 0 exactly
    when x > -b_out: the rounded sum is zero only when x = -b_out); d/db_out = sum(d/dx)."""

    @staticmethod
    def forward(ctx, x, pre, bias, layer):
        ctx.save_for_backward(_live(x, pre))
        ctx.shapes, ctx.strides = (pre.shape, bias.shape), x.stride()
        q = layer.quant.A
        return Q.sq_relu_plus(x, pre, bias, q.bits, q.rounding, layer.generator)

    @staticmethod
    def backward(ctx, grad):
        return (*_relu_bias_backward(ctx, grad), None)


def _live(x, pre):
    """The ReLU's mask x + b_out > 0 (in float32 exactly x > -b_out), kept for the backward as bits
    (eoq/nn/mask.py): an eighth of a byte an element instead of the conv output's four."""
    return mask.greater(x, -float(pre))


def _relu_bias_backward(ctx, grad):
    live, = ctx.saved_tensors
    handoff = getattr(ctx, "handoff", None)
    done = handoff.take(grad) if handoff is not None else None
    if done is not None:     # the conv after the ReLU masked grad and took the sums in its store
        gx, s_pre, s_bias, amax = done
        return (fusion.know_max(gx, amax), s_pre.view(ctx.shapes[0]) if ctx.needs_input_grad[1] else None,
                s_bias.view(ctx.shapes[1]) if ctx.needs_input_grad[2] else None)
    kern = kernels.usable(grad)
    if kern is not None and mask.packed(live) and grad.stride() == tuple(ctx.strides) and dense(grad) \
            and math.prod(ctx.shapes[0]) == math.prod(ctx.shapes[1]) == 1:
        gx, s_pre, s_bias, amax = kern.masked_grad_sums(grad, live)   # one pass: the three below, bit for bit
        return (fusion.know_max(gx, amax), s_pre.view(ctx.shapes[0]) if ctx.needs_input_grad[1] else None,
                s_bias.view(ctx.shapes[1]) if ctx.needs_input_grad[2] else None)
    gx = mask.where(grad, live, ctx.strides)    # = threshold_backward(grad, x, -b_out), bit for bit
    gpre = exact_sum(gx, ctx.shapes[0]) if ctx.needs_input_grad[1] else None
    gbias = exact_sum(grad, ctx.shapes[1]) if ctx.needs_input_grad[2] else None
    return gx, gpre, gbias


class _DeferredReluBiasFn(torch.autograd.Function):
    """relu(x + pre) + bias as the input of an integer-engine layer, left to its A quantizer
    (see _DeferredBiasFn); the backward is _ReluBiasQuantFn's."""

    @staticmethod
    def forward(ctx, x, pre, bias, handoff):
        live = _live(x, pre)
        ctx.save_for_backward(live)
        ctx.shapes, ctx.strides = (pre.shape, bias.shape), x.stride()
        if mask.packed(live) and math.prod(pre.shape) == math.prod(bias.shape) == 1:
            handoff.live, handoff.strides = live, x.stride()      # offered to the conv (fusion.offer_backward)
            handoff.ready, ctx.handoff = True, handoff
        return fusion.carry(x, x.view_as(x))

    @staticmethod
    def backward(ctx, grad):
        return (*_relu_bias_backward(ctx, grad), None)


def fused_relu_bias_input(x, b_out: FixupScalar, b_in: FixupScalar, layer):
    """b_in(relu(b_out(x))) as the input of ``layer`` (inside a Fixup branch): one fused kernel
    when its A is a plain SQ (see :func:`_fusable`), otherwise the modules in turn."""
    if not _fusable(layer, "A"):
        return b_in(F.relu(b_out(x.double() if _quantized(layer) else x)), feeds=layer)
    pre, bias = b_out.effective(), b_in.effective()
    if layer.engine == "int":
        affine = fusion.Affine(bias=float(bias.detach()), relu_pre=float(pre.detach()))
        handoff = fusion.GradHandoff("relu")
        out = _DeferredReluBiasFn.apply(x, pre, bias, handoff)
        return fusion.offer_backward(fusion.defer(out, layer, affine), layer, handoff)
    return fusion.mark_quantized(_ReluBiasQuantFn.apply(x, pre, bias, layer), layer)


class _ScaleQuantGradFn(torch.autograd.Function):
    """y = x * s for the Fixup multiplier right after a quantized layer; its backward hands that
    layer the error already quantized, E(grad * s), in one pass (no grad * s tensor).
    d/ds = (grad * x) summed to s's shape, exactly what autograd computes for x * s."""

    @staticmethod
    def forward(ctx, x, v, layer):
        ctx.save_for_backward(x, v)
        ctx.layer = layer
        return x * v

    @staticmethod
    def backward(ctx, grad):
        x, v = ctx.saved_tensors
        layer = ctx.layer
        q = layer.quant.E
        gv = exact_sum(grad.double() * x.double(), v.shape) if ctx.needs_input_grad[1] else None
        gx = None
        if ctx.needs_input_grad[0]:
            gx = fusion.mark_quantized(Q.sq_times(grad, v, q.bits, q.rounding, layer.generator), layer)
        return gx, gv, None


def fused_scale_output(x, v, layer):
    """x * v for the output of ``layer``, with its E quantization fused into the backward when E
    is a plain SQ and no observer is attached (the error is then quantized once, here)."""
    if not _fusable(layer, "E") or layer.engine != "sim":
        return x * v
    return _ScaleQuantGradFn.apply(x, v, layer)


def _error_quant(grad_out, layer):
    """E(grad_out), unless _ScaleQuantGradFn already quantized it for this layer."""
    if fusion.quantized_for(grad_out, layer):
        return grad_out
    return apply_quant(layer.quant.E, grad_out, layer.generator, "E", layer)


class _QuantConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, layer):
        xq = _input_quant(x, layer)
        wq = layer.forward_weight(w)
        ctx.save_for_backward(xq, wq)
        ctx.layer, ctx.in_dtype = layer, x.dtype
        return F.conv2d(xq, wq, None, layer.stride, layer.padding, layer.dilation, layer.groups)

    @staticmethod
    def backward(ctx, grad_out):
        xq, wq = ctx.saved_tensors
        layer = ctx.layer
        e = _error_quant(grad_out, layer)
        gi, gw, _ = torch.ops.aten.convolution_backward(
            e, xq, wq, None, layer.stride, layer.padding, layer.dilation, False, [0, 0],
            layer.groups, [ctx.needs_input_grad[0], ctx.needs_input_grad[1], False])
        if gw is not None:
            if distributed.active():
                distributed.all_sum_(gw)          # sum over shards, then G rounds once
            gw = apply_quant(layer.quant.G, gw, layer.generator, "G", layer)
        return gi if gi is None else gi.to(ctx.in_dtype), gw, None


class QConv2d(nn.Conv2d, _QuantizedLayer):
    """nn.Conv2d with EOQ quantization of W, A, E, G (no bias: ResNet convs have none)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias)
        if bias:
            raise ValueError("QConv2d has no bias: put a Fixup scalar or BN after it")
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._setup_quant(3 * math.sqrt(2.0 / fan_in))

    def forward(self, x):
        if not self.quant.any:
            return super().forward(x)
        if self.engine == "int":
            return intengine.IntConvFn.apply(x, self.weight, self)
        return _QuantConvFn.apply(x, self.weight, self)


class _QuantLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, layer):
        xq = _input_quant(x, layer)
        wq = layer.forward_weight(w)
        ctx.save_for_backward(xq, wq)
        ctx.layer, ctx.in_dtype = layer, x.dtype
        ctx.has_bias = b is not None
        return F.linear(xq, wq, b)

    @staticmethod
    def backward(ctx, grad_out):
        xq, wq = ctx.saved_tensors
        layer = ctx.layer
        e = apply_quant(layer.quant.E, grad_out, layer.generator, "E", layer)
        gi = e @ wq if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            gw = e.t() @ xq
            if distributed.active():
                distributed.all_sum_(gw)
            gw = apply_quant(layer.quant.G, gw, layer.generator, "G", layer)
        gb = e.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gi if gi is None else gi.to(ctx.in_dtype), gw, gb, None


class QLinear(nn.Linear, _QuantizedLayer):
    """nn.Linear with EOQ quantization (the classifier). Its bias is integer-stored like W."""

    def __init__(self, in_features, out_features, bias=True):
        super().__init__(in_features, out_features, bias=bias)
        self._setup_quant(3 * math.sqrt(1.0 / in_features))
        if bias:
            self.register_buffer("bias_exp", torch.zeros(()))

    def forward(self, x):
        if not self.quant.any:
            return super().forward(x)
        if self.engine == "int":
            return intengine.IntLinearFn.apply(x, self.weight, self.bias, self)
        return _QuantLinearFn.apply(x, self.weight, self.bias, self)


class FixupScalar(nn.Module):
    """A Fixup scalar: a bias added to (``mode='bias'``) or a multiplier of (``'scale'``) its input.

    Quantized as the spec's S kind: integer-stored on its own 8-bit grid under EOQ, or fake-
    quantized (straight-through) when scalars are quantized but weights train in float."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in ("bias", "scale"):
            raise ValueError(f"FixupScalar mode must be 'bias' or 'scale', got {mode!r}")
        self.mode = mode
        self.value = nn.Parameter(torch.full((1,), 0.0 if mode == "bias" else 1.0))
        self.register_buffer("exp", torch.zeros(()))
        self.quant = FLOAT
        self.stored = False
        self.generator = None
        self.update = self.grad_quant = FLOAT  # set by prepare() from the spec's U and G

    def effective(self) -> torch.Tensor:
        v = self.value
        if self.quant.enabled and not self.stored:
            v = v + (apply_quant(self.quant, v.detach(), self.generator, "S", self) - v).detach()
        return v

    def forward(self, x, feeds=None, after=None):
        """x + v or x * v. A bias given the layer it ``feeds`` is fused with that layer's A; a
        multiplier given the layer it comes ``after`` is fused with that layer's E."""
        v = self.effective()
        if self.mode == "scale":
            return x * v if after is None else fused_scale_output(x, v, after)
        return x + v if feeds is None else fused_bias_input(x, v, feeds)

    def extra_repr(self):
        return self.mode

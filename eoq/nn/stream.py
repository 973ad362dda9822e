"""The residual stream of a Fixup ResNet in k-bit fixed point (spec ``stream_bits``).

An integer datapath keeps the values that pass from block to block in registers of a fixed
width. With ``stream_bits`` = k the model does the same at every block boundary (the stem's
output, each block's output, the input of the pooling head):

    forward    x -> FX(x, k)            the block output, computed exactly, rounded once (by the
                                        block's tail, or the stem: :func:`to_stream`)
    backward   e_branch + e_identity -> FX(e_branch + e_identity, k)
               the error of the block input is the exact sum of what the branch (the first
               conv's input error, int32 values) and the shortcut hand back, rounded once

The boundary (:func:`stream_split`) rounds again on the way in, which leaves a stream value as it
is. FX is :func:`eoq.quant.quantizers.round_fixed` (the smallest exponent that holds the max, round
half to even). Between two roundings every elementwise operation is exact (float64 holds it:
see fixup_tail.py and the fused quantizers), so the simulator, the integer engine and an integer
implementation compute the same numbers. The split into two outputs is what makes the backward
sum exact: autograd would otherwise add the two errors in float32 before this op saw them.
"""
from __future__ import annotations

import torch

from .. import kernels
from ..quant import fusion
from ..quant.quantizers import QuantizationError, round_fixed

LISTENERS: list = []     # callables f(numel, backward, summed) told of every stream rounding (the cost
                         # model); summed: the rounding of a sum of two errors (their add included)
_ROUNDING = [0]


def rounding() -> bool:
    """Whether a stream rounding is running (the cost model counts it as one op, not its torch ops)."""
    return _ROUNDING[0] > 0


def fx(x: torch.Tensor, bits: int, backward: bool = False, counted: bool = True) -> torch.Tensor:
    """FX(x, bits) as float32 (quantizers.round_fixed), told to LISTENERS unless not ``counted``
    (the boundary's forward, which leaves a stream value as it is)."""
    for f in LISTENERS if counted else ():
        f(x.numel(), backward, False)
    _ROUNDING[0] += 1
    try:
        kern = kernels.usable(x)
        if kern is not None and dense(x):
            return _checked(lambda: kern.fx_sum(x.detach(), _EMPTY, bits)[0])
        return round_fixed(x, bits)[0]
    finally:
        _ROUNDING[0] -= 1


_EMPTY = torch.empty(0)


def dense(t: torch.Tensor) -> bool:
    """Contiguous in NCHW or channels-last memory: what the stream kernels take."""
    return t.is_contiguous() or (t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last))


def _checked(call):
    """A stream kernel's result; its NaN/Inf error as the QuantizationError the torch path raises."""
    try:
        return call()
    except RuntimeError as err:
        if "NaN or Inf" in str(err):
            raise QuantizationError("cannot round the residual stream: it holds NaN or Inf (the training "
                                    "diverged or the input is corrupt)") from None
        raise


def fx_sum(a: torch.Tensor, b: torch.Tensor, bits: int, amax: float | None = None) -> torch.Tensor:
    """FX(a + b, bits), the sum exact (float64), as float32: the error at a block input. ``amax``:
    max|a + b| known already (fusion.ErrorSum), no max pass."""
    for f in LISTENERS:
        f(a.numel(), True, True)
    _ROUNDING[0] += 1
    try:
        kern = kernels.usable(a)
        if kern is not None and b.dtype == torch.float32 and dense(a):
            if b.stride() != a.stride():
                b = torch.empty_like(a).copy_(b)          # the same memory order (a cheap float32 copy)
            return _checked(lambda: kern.fx_sum(a.detach(), b.detach(), bits, -1.0 if amax is None else amax)[0])
        return round_fixed(a.double() + b.double(), bits)[0]
    finally:
        _ROUNDING[0] -= 1


class _StreamFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, pair):
        ctx.bits, ctx.dtype, ctx.pair = bits, x.dtype, pair
        ctx.tail = fusion.backward_offered(x, None)      # the previous block's tail: its backward here
        ctx.set_materialize_grads(False)       # an unused output (the pooling head) hands back None
        if x.dtype != torch.float32:            # not yet a stream value (FX leaves those as they are)
            x = fx(x, bits, counted=False)
        return fusion.mark_error_sum(fusion.carry(x, x.view_as(x)), pair), fusion.carry(x, x.view_as(x))

    @staticmethod
    def backward(ctx, g_branch, g_identity):
        parts = [g for g in (g_branch, g_identity) if g is not None]
        if not parts:
            return None, None, None
        if len(parts) == 1:
            return fx(parts[0], ctx.bits, backward=True).to(ctx.dtype), None, None
        amax = ctx.pair.take(g_branch, g_identity) if ctx.pair is not None else None
        tail, ctx.tail = ctx.tail, None
        if tail is not None and tail.kind == "tail":
            g = _fx_sum_masked(parts[0], parts[1], ctx.bits, amax, tail)
            if g is not None:
                return g, None, None
        return fx_sum(parts[0], parts[1], ctx.bits, amax).to(ctx.dtype), None, None


def _fx_sum_masked(a, b, bits, amax, tail):
    """FX(a + b, bits) masked by the previous block's tail and its sums, in the one pass
    (``fx_sum_masked``) that hands them to that tail's backward (fusion.GradHandoff "tail"); None
    where the kernel cannot take the tensors (then the two ops run apart)."""
    kern = kernels.usable(a)
    if kern is None or not (a.dtype == b.dtype == torch.float32 and a.stride() == b.stride() == tuple(tail.strides)
                            and dense(a) and tail.x.dtype == torch.float32 and tail.x.shape == a.shape):
        return None
    for f in LISTENERS:
        f(a.numel(), True, True)
    _ROUNDING[0] += 1
    try:
        g, sg, sgx, gmax = _checked(lambda: kern.fx_sum_masked(a.detach(), b.detach(), bits,
                                                               -1.0 if amax is None else amax, tail.live,
                                                               tail.x.detach()))
    finally:
        _ROUNDING[0] -= 1
    tail.fill(g, sg, sgx, gmax)
    return g


def stream_split(x: torch.Tensor, bits: int | None, pair: fusion.ErrorSum | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x at a block boundary, as (input of the branch, input of the shortcut): both FX(x, bits),
    their errors summed exactly and rounded to ``bits`` (see module doc); (x, x) when ``bits`` is None.
    ``pair``: the block's :class:`eoq.quant.fusion.ErrorSum`, marked on the branch input."""
    if bits is None:
        return x, x
    return _StreamFn.apply(x, bits, pair)


class _ToStreamFn(torch.autograd.Function):
    """FX(x, k) as float32 with a straight-through backward (the error arriving here was rounded
    by the boundary downstream)."""

    @staticmethod
    def forward(ctx, x, bits):
        ctx.dtype = x.dtype
        return fx(x, bits)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype), None


def to_stream(x: torch.Tensor, bits: int | None) -> torch.Tensor:
    """An exactly computed stream value (float64) rounded to the ``bits``-bit stream, as float32."""
    return x if bits is None else _ToStreamFn.apply(x, bits)

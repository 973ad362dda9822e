"""Quantization primitives of EOQ (SPEC section 1): per-tensor, power-of-two scales only.

k is the bit width and sigma(k) = 2^(1-k) the least significant bit of a k-bit fixed-point
number in (-1, 1). Every quantizer returns values that are exactly ``codes * 2^exponent`` with
integer codes, and the ``*_codes`` functions hand out that integer view (:class:`QTensor`).

    Q(x, k)   = round(x / sigma(k)) * sigma(k)              round half to even
    C(x, k)   = clamp(x, -1 + sigma(k), 1 - sigma(k))       codes -(2^(k-1)-1) .. 2^(k-1)-1
    R(x)      = 2^round(log2(max|x|)),  R = 1 when max|x| = 0; exponent floored at -100
    SR(y)     = floor(y + b / 2^16),  b 16 random bits         E[SR(y)] = y to within 2^-16
    SQ(x, k)  = R(x) * C(Q(x / R(x), k), k)
    FQ(x, k)  flag quantizer: below one SQ unit 7 fractional bits, above it integers to 127
    CQ(g;k,c) = clamp(SR(c * g / R(g)), -(c-1), c-1)         value n * R(g) / c

All arithmetic on the float path is exact: dividing by a power of two and rounding to an integer
of at most 24 bits lose nothing in float32, which is what makes the simulated path and the integer
path agree bit for bit. Stochastic rounding takes its random bits from a counter-based hash
keyed by draws from an explicit ``torch.Generator`` (see :mod:`eoq.quant.rng` for the bits and their
statistical quality), so runs are reproducible and the integer engine can use the same bits.

round(log2 m) is evaluated exactly: with m = f * 2^p, f in [1/2, 1), it is p when f >= 2^-1/2 and
p - 1 otherwise (float32 ``log2`` can land on the tie n + 1/2 for the two floats per octave next
to 2^(n+1/2) and round them the other way). SQ on float32 CPU tensors runs in the fused kernels of
:mod:`eoq.kernels` (two passes over memory); elsewhere in torch ops, with identical results.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import distributed, kernels
from . import rng
from .formats import (  # noqa: F401  (re-exported: the quantizers' vocabulary)
    MAX_BITS,
    MIN_BITS,
    MIN_EXPONENT,
    ROUNDINGS,
    QuantizationError,
    Rounding,
    check_bits,
    max_code,
    sigma,
)


def round_to_lsb(x: torch.Tensor, k: int) -> torch.Tensor:
    """Q(x, k) = round(x / sigma) * sigma, ties to even."""
    s = sigma(k)
    return torch.round(x / s) * s


def clip_to_range(x: torch.Tensor, k: int) -> torch.Tensor:
    """C(x, k) = clamp(x, -1 + sigma, 1 - sigma)."""
    s = sigma(k)
    return torch.clamp(x, -1 + s, 1 - s)


def _non_finite(x: torch.Tensor) -> QuantizationError:
    return QuantizationError(f"cannot quantize a tensor holding NaN or Inf (shape {tuple(x.shape)}): "
                             "the training diverged or the input is corrupt")


def _amax(x: torch.Tensor) -> float:
    """max|x| as a Python float; raises QuantizationError on NaN/Inf."""
    k = kernels.usable(x)
    if not x.numel():
        amax = 0.0
    elif k is not None:
        amax = k.amax(x.detach())
    else:
        amax = float(x.detach().abs().amax())
    if not math.isfinite(amax):
        raise _non_finite(x)
    return amax


def exponent_of(amax: float) -> int:
    """round(log2 amax) evaluated exactly (see module doc); 0 for amax = 0; floored at MIN_EXPONENT."""
    if amax <= 0:
        return 0
    f, p = math.frexp(amax)
    return max(p if f >= math.sqrt(0.5) else p - 1, MIN_EXPONENT)


def shift_exponent(x: torch.Tensor) -> int:
    """e with R(x) = 2^e = 2^round(log2 max|x|); e = 0 for an all-zero or empty tensor.

    e is floored at MIN_EXPONENT (-100)."""
    return exponent_of(_amax(x))


def pow2_scale(x: torch.Tensor) -> torch.Tensor:
    """R(x) = 2^round(log2 max|x|), 1 when max|x| = 0: a pure shift in hardware."""
    return torch.tensor(2.0 ** shift_exponent(x))


def stochastic_round(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """SR(y) = floor(y + b / 2^16) with 16 counter-hash random bits b per element (:mod:`eoq.quant.rng`).

    Unbiased to within 2^-16: E[SR(y)] - y lies in (-2^-16, 0]."""
    return rng.stochastic_round(y, rng.draw_key(generator))


def round_(y: torch.Tensor, rounding: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to integers: 'nearest' (half to even) or 'stochastic'."""
    if _check_rounding(rounding) == Rounding.NEAREST.code:
        return torch.round(y)
    return stochastic_round(y, generator)


_ROUNDING_CODES = {m: m.code for m in Rounding}      # a member and its string hash alike


def _check_rounding(rounding: str) -> int:
    """The kernels' mode number of ``rounding`` (a Rounding or its string); a dict lookup on every
    quantizer call, the parse (and its error naming the choices) only for an unknown one."""
    code = _ROUNDING_CODES.get(rounding) if isinstance(rounding, str) else None
    return code if code is not None else Rounding.parse(rounding, QuantizationError, "rounding").code


def round_scaled(x: torch.Tensor, exponent: int, m: int, rounding: str = "nearest",
                 generator: torch.Generator | None = None, codes: bool = False,
                 key: tuple[int, int] | None = None, offset: int = 0) -> torch.Tensor:
    """c = round(clamp(x / 2^exponent, -m, m)); returns c * 2^exponent, or c when ``codes``.

    Clamping before rounding gives the same c as rounding first (m is an integer). Codes come
    back as float (torch path) or int8/16/32 (kernel path); both hold the same integers.
    Stochastic rounding uses ``key`` when given, else a key drawn from ``generator``."""
    mode = _check_rounding(rounding)
    if mode and key is None:
        key = rng.draw_key(generator)
    key = key or (0, 0)
    k = kernels.usable(x)
    if k is not None:
        return k.round_scaled(x.detach(), int(exponent), int(m), mode, key[0], key[1], codes,
                              offset=int(offset))
    y = (x * 2.0 ** -exponent).clamp_(-m, m)
    c = torch.round(y) if mode == 0 else rng.stochastic_round(y, key, offset)
    return c if codes else c.mul_(2.0 ** exponent)


@dataclass(frozen=True)
class QTensor:
    """Integer view of a quantized tensor: value = codes * 2^exponent (exponent of the LSB)."""

    codes: torch.Tensor
    exponent: int
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.codes.to(torch.float32) * 2.0 ** self.exponent


def code_dtype(bits: int) -> torch.dtype:
    """The narrowest integer dtype that holds codes of ``bits`` bits (sign included)."""
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def exact_codes(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, int] | None:
    """(codes, lsb) with values = codes * 2^lsb exactly and |codes| <= 2^(bits-1) - 1, the largest
    code in [2^(bits-2), 2^(bits-1)): lsb = e - (bits - 1) with max|values| < 2^e (a grid of at
    most ``bits``-bit codes is never finer). None when ``values`` are not such codes times a power
    of two, or not finite; an all-zero tensor gets lsb 0. Codes in :func:`code_dtype`."""
    amax = float(values.abs().max()) if values.numel() else 0.0
    if not math.isfinite(amax):
        return None
    lsb = math.frexp(amax)[1] - (bits - 1) if amax > 0 else 0
    scaled = values.double() * 2.0 ** -lsb
    if not torch.equal(scaled, scaled.round()) or (amax > 0 and float(scaled.abs().max()) > max_code(bits)):
        return None
    return scaled.to(code_dtype(bits)), lsb


def _fused_sq(x, k, rounding, generator, key, codes, bias=0.0, mult=1.0, relu=False, pre=0.0, amax=None,
              amax_v=None, pad=None):
    """The one-call kernel SQ (max, exponent, key draw, rounding), or None where it cannot run;
    ``amax``: max|x| already known (no max pass; x or x * mult only); ``amax_v``: max|v| of the
    affine value itself (:func:`affine_amax`)."""
    kern = kernels.usable(x) if key is None else None
    if kern is None or (generator is not None and generator.device.type != "cpu"):
        return None
    try:
        return kern.sq(x.detach(), k, _check_rounding(rounding), generator, codes, bias, mult, relu, pre,
                       -1.0 if amax is None else amax, -1.0 if amax_v is None else amax_v,
                       *((-1, 0) if pad is None else pad))
    except RuntimeError as err:
        if "NaN or Inf" in str(err):
            raise _non_finite(x) from None
        raise


def _affine_sq(x, k, rounding, generator, reference, **affine) -> torch.Tensor:
    """SQ of an elementwise function of x (``affine``: the kernel's bias / mult / relu + pre), in
    the kernel's two passes over x; ``reference()`` builds the same values with torch ops in
    float64 where the kernel cannot run. The affine value is exact either way (float64 holds the
    sum or product of a float32 and an 8-bit scalar whose exponents are less than 29 bits apart),
    so only the quantizer rounds, as in an integer datapath."""
    check_bits(k)
    fused = _fused_sq(x, k, rounding, generator, None, False, **affine)
    return fused[0] if fused is not None else sq(reference(), k, rounding, generator).to(x.dtype)


def sq_plus(x: torch.Tensor, bias: torch.Tensor, k: int, rounding: str = "nearest",
            generator: torch.Generator | None = None) -> torch.Tensor:
    """SQ(x + bias, k) for a one-element ``bias``, the sum exact (see _affine_sq), without
    materialising x + bias in the kernel."""
    return _affine_sq(x, k, rounding, generator, lambda: x.double() + bias.detach().double(), bias=float(bias))


def sq_relu_plus(x: torch.Tensor, pre: torch.Tensor, bias: torch.Tensor, k: int,
                 rounding: str = "nearest", generator: torch.Generator | None = None) -> torch.Tensor:
    """SQ(relu(x + pre) + bias, k) for one-element ``pre`` and ``bias``, each step exact (see
    _affine_sq), in two passes over x without materialising x + pre or the ReLU output."""
    return _affine_sq(x, k, rounding, generator,
                      lambda: torch.relu(x.double() + pre.detach().double()) + bias.detach().double(),
                      bias=float(bias), relu=True, pre=float(pre))


def sq_times(x: torch.Tensor, mult: torch.Tensor, k: int, rounding: str = "nearest",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """SQ(x * mult, k) for a one-element ``mult``, the product exact (see _affine_sq)."""
    return _affine_sq(x, k, rounding, generator, lambda: x.double() * mult.detach().double(), mult=float(mult))


def _sharded_sq(x, k, rounding, generator, codes):
    """SQ of one data-parallel shard of a batch tensor: the exponent from the max over all shards
    and the random bits of the rows' global indices, so that the codes equal those of the whole
    batch quantized in one process (see eoq.distributed)."""
    amax = distributed.all_max(_amax(x))
    lsb = exponent_of(amax) + 1 - k
    out = round_scaled(x, lsb, max_code(k), rounding, generator, codes=codes,
                       offset=distributed.index_offset(x.numel()))
    return out, lsb


def affine_amax(lo: float, hi: float, bias: float = 0.0, relu_pre: float | None = None) -> float:
    """max|v| of v = x + bias or relu(x + relu_pre) + bias over x in [lo, hi] (float32 ends and
    scalars): v is monotone in x, so an end gives it; each step in double, exact, as the kernel's
    max pass (csrc/quant.cpp abs_max_affine) forms it from x's min and max."""
    if relu_pre is not None:
        lo, hi = max(lo + relu_pre, 0.0), max(hi + relu_pre, 0.0)
    return max(abs(lo + bias), abs(hi + bias))


def _known_maxes(arange, amax, affine: bool, bias, relu_pre) -> tuple[float | None, float | None]:
    """(max|x|, max|affine(x)|) as the kernel takes them from a known range (either may stay None)."""
    if arange is None:
        return amax, None
    if affine:
        return amax, affine_amax(arange[0], arange[1], bias or 0.0, relu_pre)
    return (max(abs(arange[0]), abs(arange[1])) if amax is None else amax), None


def sq_integer(x: torch.Tensor, k: int, rounding: str = "nearest",
               generator: torch.Generator | None = None, sharded: bool = False,
               bias: float | None = None, relu_pre: float | None = None,
               mult: float | None = None, amax: float | None = None,
               arange: tuple[float, float] | None = None) -> tuple[torch.Tensor, int]:
    """SQ(x, k) as (integer codes, LSB exponent e_R + 1 - k); ``sharded``: x is this process's
    part of a batch split across processes (A and E under data parallelism); ``bias``: quantize
    x + bias, without an x + bias tensor where the kernel runs; with ``relu_pre`` too: quantize
    relu(x + relu_pre) + bias; ``mult`` (alone): quantize x * mult (each step exact, see _affine_sq).
    ``amax``: max|x| as the kernel's max pass finds it, known already (eoq.quant.fusion.known_max):
    the kernel skips that pass (the same codes); ignored with a bias, a ReLU or ``sharded``.
    ``arange``: (min x, max x), known already (eoq.quant.fusion.known_range): with a bias or a ReLU
    the max pass is skipped too (:func:`affine_amax`)."""
    check_bits(k)
    relu = relu_pre is not None
    if mult is not None and (relu or bias is not None):
        raise ValueError("sq_integer: mult cannot be combined with bias or relu_pre")
    affine = relu or (bias is not None and bias != 0.0)
    amax, amax_v = _known_maxes(None if sharded else arange, amax, affine, bias, relu_pre)
    amax = None if sharded or affine else amax
    if relu or (bias is not None and bias != 0.0) or (mult is not None and mult != 1.0):
        b, m = (0.0 if bias is None else bias), (1.0 if mult is None else mult)
        fused = None if sharded else _fused_sq(x, k, rounding, generator, None, True, b, m,
                                               relu=relu, pre=relu_pre if relu else 0.0, amax=amax,
                                               amax_v=amax_v)
        if fused is not None:
            return fused
        x = x.double()                                   # exact (see _affine_sq)
        if relu:
            x = torch.relu(x + relu_pre)
        x = x * m if mult is not None else x + b
    if sharded:
        return _sharded_sq(x, k, rounding, generator, True)
    fused = _fused_sq(x, k, rounding, generator, None, True, amax=amax)
    if fused is not None:
        return fused
    lsb = shift_exponent(x) + (1 - k)
    return round_scaled(x, lsb, max_code(k), rounding, generator, codes=True), lsb


def sq_integer_padded(x: torch.Tensor, k: int, pad: int, cp: int, bias: float | None = None,
                      relu_pre: float | None = None, amax: float | None = None,
                      arange: tuple[float, float] | None = None) -> tuple[torch.Tensor, int] | None:
    """:func:`sq_integer` (nearest rounding) of a channels-last [N, C, H, W] x, written as the direct
    convolutions' padded input (uint8 [N, H+2 pad, W+2 pad, cp] holding code + 128, 128 in the border
    and in channels C..cp-1: eoq.engine.direct.pad_input of the codes) in the quantizer's one pass;
    None where the kernels cannot (then quantize and pad apart)."""
    if kernels.usable(x) is None or x.dim() != 4 or not x.is_contiguous(memory_format=torch.channels_last) \
            or x.dtype != torch.float32:
        return None
    check_bits(k)
    relu = relu_pre is not None
    affine = relu or (bias is not None and bias != 0.0)
    amax, amax_v = _known_maxes(arange, amax, affine, bias, relu_pre)
    return _fused_sq(x, k, "nearest", None, None, True, bias or 0.0, 1.0, relu=relu,
                     pre=relu_pre if relu else 0.0, amax=None if affine else amax, amax_v=amax_v, pad=(pad, cp))


def sq(x: torch.Tensor, k: int, rounding: str = "nearest",
       generator: torch.Generator | None = None, key: tuple[int, int] | None = None,
       sharded: bool = False) -> torch.Tensor:
    """SQ(x, k) = R(x) * C(Q(x / R(x), k), k), with nearest or stochastic rounding."""
    check_bits(k)
    if sharded:
        return _sharded_sq(x, k, rounding, generator, False)[0].to(x.dtype)
    fused = _fused_sq(x, k, rounding, generator, key, False)
    if fused is not None:
        return fused[0]
    lsb = shift_exponent(x) + (1 - k)
    return round_scaled(x, lsb, max_code(k), rounding, generator, key=key).to(x.dtype)


def sq_codes(x: torch.Tensor, k: int, rounding: str = "nearest",
             generator: torch.Generator | None = None) -> QTensor:
    """SQ(x, k) as integer codes and exponent."""
    codes, lsb = sq_integer(x, k, rounding, generator)
    return QTensor(codes.to(code_dtype(k)), lsb, k)


FQ_FRACTION_BITS = 7


def fq_integer(x: torch.Tensor, k: int = 8, rounding: str = "nearest",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """FQ(x, k) as codes on the fine grid and their LSB exponent.

    Reconstruction of WAGEUBN's flag quantizer for errors. With the SQ unit u = R(x) * sigma(k)
    and y = x / u: if |y| < 1 the value keeps 7 fractional bits, round(y * 2^7) / 2^7; otherwise
    it is an integer, round(y), clamped to 2^(k-1) - 1. A flag bit tells the two ranges apart, so
    the hardware format is one flag bit plus a k-bit code; small errors that SQ flushes to zero
    survive. Codes are returned on the fine grid (unit u * 2^-7).
    """
    check_bits(k)
    unit = shift_exponent(x) + (1 - k)
    y = x * 2.0 ** -unit
    f = 2.0 ** FQ_FRACTION_BITS
    small = round_(y * f, rounding, generator)
    large = round_(y, rounding, generator).clamp_(-max_code(k), max_code(k)) * f
    codes = torch.where(y.abs() < 1, small, large)
    return codes, unit - FQ_FRACTION_BITS


def fq(x: torch.Tensor, k: int = 8, rounding: str = "nearest",
       generator: torch.Generator | None = None) -> torch.Tensor:
    codes, lsb = fq_integer(x, k, rounding, generator)
    return codes.mul_(2.0 ** lsb).to(x.dtype)


def fq_codes(x: torch.Tensor, k: int = 8, rounding: str = "nearest",
             generator: torch.Generator | None = None) -> QTensor:
    """FQ as fine-grid codes (int16: flag range folded in) and exponent."""
    codes, lsb = fq_integer(x, k, rounding, generator)
    return QTensor(codes.to(torch.int16), lsb, k + FQ_FRACTION_BITS + 1)


def cq_integer(g: torch.Tensor, k: int = 8, c: int = 128,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CQ(g; k, c): n = clamp(SR(c * g / R(g)), -(c-1), c-1), value n * R(g) / c.

    WAGEUBN's gradient quantizer; c must be a power of two no larger than 2^(k-1) so that the
    value is n * 2^(e_R - log2 c) and n fits in k bits."""
    check_bits(k)
    if c < 2 or c & (c - 1) or c > 2 ** (k - 1):
        raise QuantizationError(f"CQ constant c must be a power of two in [2, 2^(k-1)], got {c}")
    lsb = shift_exponent(g) - (c.bit_length() - 1)
    return round_scaled(g, lsb, c - 1, "stochastic", generator, codes=True).to(g.dtype), lsb


def cq(g: torch.Tensor, k: int = 8, c: int = 128, generator: torch.Generator | None = None) -> torch.Tensor:
    codes, lsb = cq_integer(g, k, c, generator)
    return codes.mul_(2.0 ** lsb).to(g.dtype)


def cq_codes(g: torch.Tensor, k: int = 8, c: int = 128,
             generator: torch.Generator | None = None) -> QTensor:
    codes, lsb = cq_integer(g, k, c, generator)
    return QTensor(codes.to(code_dtype(k)), lsb, k)


def fixed_grid(x: torch.Tensor, lsb_exponent, k: int, rounding: str = "nearest",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantize onto a fixed grid: clamp(round(x / 2^e), +-(2^(k-1)-1)) * 2^e (weights, scalars)."""
    return round_scaled(x, int(lsb_exponent), max_code(k), rounding, generator).to(x.dtype)


def fixed_exponent(amax: float, k: int) -> int:
    """The smallest LSB exponent e with amax <= (2^(k-1) - 1) * 2^e (no value clips); 0 for amax = 0;
    floored at MIN_EXPONENT like SQ's."""
    if amax <= 0:
        return 0
    m = max_code(k)
    e = math.ceil(math.log2(amax / m))
    while amax > m * 2.0 ** e:              # exact comparisons settle a log2 rounded either way
        e += 1
    while amax <= m * 2.0 ** (e - 1):
        e -= 1
    return max(e, MIN_EXPONENT)


def round_fixed(x: torch.Tensor, k: int) -> tuple[torch.Tensor, int]:
    """FX(x, k): x on a k-bit fixed-point grid that holds max|x| without clipping, round half to
    even: (float32 values codes * 2^e, e). The residual stream and the error stream of a Fixup
    ResNet at its block boundaries (spec ``stream_bits``): x is exact there (float64 or float32),
    so this is the only rounding, as in an integer datapath that keeps the stream in k-bit
    registers. k <= 24, so the values are exact in float32."""
    check_bits(k)
    amax = float(x.detach().abs().max()) if x.numel() else 0.0
    if not math.isfinite(amax):
        raise _non_finite(x)
    e = fixed_exponent(amax, k)
    y = torch.round(x.detach().double() * 2.0 ** -e).mul_(2.0 ** e)
    return y.to(torch.float32), e

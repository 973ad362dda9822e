"""The all-integer update of an integer-stored tensor: exact sums of aligned integers, one rounding each.

For a tensor w = codes_w * 2^ew with a fixed-point learning rate lr = L * 2^-sl (``spec.lr_bits``)
and a fixed-point weight decay wd = Lw * 2^-sw (``spec.wd_bits``), momentum mu = 1 - 2^-s:

    terms    g             G codes * 2^eg (the layer's SQ, or the optimizer's for biases and scalars)
             wd * w        Lw * codes_w * 2^(ew - sw)                      (16-bit product)
             mu * v        (2^s - 1) * codes_v * 2^(ev - s)                 (v - v >> s, exact)
    S        mu v + g + wd w, summed exactly in a 64-bit accumulator (:func:`accumulate`)
    M        codes_v' = SR to M bits of S (SQ's exponent rule, :func:`round_sq`)        one rounding
    U        clamp(SR(L * codes_v' * 2^(ev' - sl - ew)), +-(2^(u-1)-1))                one rounding
             (no momentum: U = clamp(SR(L * (g + wd w) * 2^-(sl + ew))), the sum formed exactly)
    codes_w  clamp(codes_w - U, +-(2^(k-1)-1)), then the exponent policy, whose saturation test is
             the integer comparison count * den > num * n for saturate_frac = num / den (:func:`saturated`)

The accumulator: every term's magnitude is below 2^T_t; with T = max_t T_t + 2 (three terms at
most: |S| < 2^T), its LSB is 2^(T - 62), so |S| / 2^(T-62) < 2^62 fits int64. A term whose grid is
coarser than that LSB (every term whose exponent lies within about 40 bits of the largest, i.e.
always in practice) enters exactly; the bits of a term below the LSB are dropped (floor). The result
depends only on the terms' values, never on how their grids were written down.

Stochastic rounding is the method's SR (eoq.quant.rng): floor((floor(y * 2^16) + b) / 2^16) with the
16 counter-hash bits b of the tensor's key, on int64 throughout.
"""
from __future__ import annotations

import math
from fractions import Fraction

import torch

from ..quant import rng
from ..quant.formats import MIN_EXPONENT, QuantizationError
from ..quant.quantizers import exact_codes, max_code
from ..quant.spec import SpecError

ACC_BITS = 64          # the update accumulator: int64, |S| < 2^62 by construction


def accumulate(terms) -> tuple[torch.Tensor | None, int]:
    """(S, E0): the sum of ``terms`` as int64 integers S * 2^E0 (None, 0 when every term is zero).

    A term is (x, mult, shift) with value x * mult * 2^-shift: x a float32 tensor of exact values or
    an integer tensor of codes (the momentum buffer's), mult an integer in [1, 2^29) (so x * mult
    is exact in float64)."""
    tops = []
    for x, mult, shift in terms:
        amax = float(x.abs().max()) if x.numel() else 0.0
        if not math.isfinite(amax):
            raise QuantizationError("cannot form the update of a tensor holding NaN or Inf: the training diverged "
                                    "(optimizer step)")
        if amax > 0:
            tops.append(math.frexp(amax * mult)[1] - shift)      # |x * mult * 2^-shift| < 2^top
    if not tops:
        return None, 0
    e0 = max(tops) + 2 - (ACC_BITS - 2)
    total = None
    for x, mult, shift in terms:
        t = torch.floor(x.double().mul_(float(mult)).mul_(2.0 ** (-shift - e0))).to(torch.int64)
        total = t if total is None else total.add_(t)
    return total, e0


def exponent_of(m: int, e: int) -> int:
    """round(log2(m * 2^e)) for an integer m >= 0, exactly (2 m^2 >= 4^bitlength(m) decides the
    half octave); 0 for m = 0; at least MIN_EXPONENT (SQ's R(x))."""
    if m == 0:
        return 0
    bl = m.bit_length()
    p = bl + e
    return max(p if 2 * m * m >= 1 << (2 * bl) else p - 1, MIN_EXPONENT)


def sr_shift(y: torch.Tensor, f: int, key) -> torch.Tensor:
    """SR(y / 2^f) of int64 integers y: floor((floor(y * 2^(16-f)) + b) / 2^16). The caller keeps
    y * 2^(16-f) within int64 (see :func:`sr_clamped`)."""
    t = y << (16 - f) if f <= 16 else y >> (f - 16)
    return (t + rng.random_bits(y.shape, key)) >> 16


def sr_clamped(y: torch.Tensor, f: int, m: int, key) -> torch.Tensor:
    """clamp(SR(y / 2^f), -m, m) for int64 y and any integer f, without overflow: y is first clamped
    to +-(m + 1) * 2^f (where SR gives +-(m + 1) or beyond either way), which changes no result."""
    if f >= 0:
        lim = min((m + 1) << f, 1 << 62)         # |y| < 2^62 always (accumulate)
        return sr_shift(y.clamp(-lim, lim), f, key).clamp_(-m, m)
    y = y.clamp(-(m + 1), m + 1) << min(-f, 32)           # an integer: SR is the identity
    return y.clamp_(-m, m)


def round_sq(s: torch.Tensor, e0: int, bits: int, key) -> tuple[torch.Tensor, int]:
    """SQ(S * 2^e0, bits) with stochastic rounding: (int64 codes, LSB exponent), LSB =
    round(log2 max|S * 2^e0|) + 1 - bits, codes clamped to +-(2^(bits-1)-1)."""
    m = (1 << (bits - 1)) - 1
    lsb = exponent_of(int(s.abs().max()), e0) + 1 - bits
    return sr_clamped(s, lsb - e0, m, key), lsb


def saturation_ratio(frac: float) -> tuple[int, int]:
    """(num, den) with num / den the decimal ``frac`` exactly (0.05 -> (1, 20))."""
    r = Fraction(repr(float(frac)))
    return r.numerator, r.denominator


def saturated(count: int, n: int, frac: float) -> bool:
    """count / n > frac as an integer comparison: count * den > num * n."""
    num, den = saturation_ratio(frac)
    return count * den > num * n


def momentum_codes(values: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """(codes, lsb) with values = codes * 2^lsb exactly and |codes| <= 2^(bits-1) - 1: a momentum
    buffer's float values (a checkpoint's) as the integer update keeps them. Refuses values that no
    such grid holds (not a momentum buffer of this M)."""
    if not bool(torch.isfinite(values).all()):
        raise SpecError("the momentum buffer holds NaN or Inf: the checkpoint is corrupt")
    packed = exact_codes(values, bits)
    if packed is None:
        raise SpecError(f"the momentum buffer is not on a {bits}-bit grid (a checkpoint of another M?)")
    codes, lsb = packed
    return codes, lsb if values.any() else 1 - bits

"""Quantization primitives of EOQ (SPEC section 1): per-tensor, power-of-two scales only.

k is the bit width and sigma(k) = 2^(1-k) the least significant bit of a k-bit fixed-point
number in (-1, 1). Every quantizer returns values that are exactly ``codes * 2^exponent`` with
integer codes, and the ``*_codes`` functions hand out that integer view (:class:`QTensor`).

    Q(x, k)   = round(x / sigma(k)) * sigma(k)              round half to even
    C(x, k)   = clamp(x, -1 + sigma(k), 1 - sigma(k))       codes -(2^(k-1)-1) .. 2^(k-1)-1
    R(x)      = 2^round(log2(max|x|)),  R = 1 when max|x| = 0; exponent floored at -100
    SR(y)     = floor(y + u),  u ~ U[0, 1)                   E[SR(y)] = y
    SQ(x, k)  = R(x) * C(Q(x / R(x), k), k)
    FQ(x, k)  flag quantizer: below one SQ unit 7 fractional bits, above it integers to 127
    CQ(g;k,c) = clamp(SR(c * g / R(g)), -(c-1), c-1)         value n * R(g) / c

All arithmetic on the float path is exact: dividing by a power of two and rounding to an integer
of at most 24 bits lose nothing in float32, which is what makes the simulated path and the integer
path agree bit for bit. Stochastic rounding draws its uniform numbers from an explicit
``torch.Generator`` so that runs are reproducible.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

MIN_BITS, MAX_BITS = 2, 24  # float32 holds every integer of up to 24 bits exactly
ROUNDINGS = ("nearest", "stochastic")
# Shift exponents are kept >= MIN_EXPONENT so that every scale 2^-e is a normal float32 number
# (2^126 would overflow the reciprocal). A tensor with max|x| < 2^-100 therefore quantizes to 0.
MIN_EXPONENT = -100


class QuantizationError(ValueError):
    """Raised for input a quantizer cannot represent: NaN or Inf values, bad bit widths."""


def check_bits(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or not MIN_BITS <= k <= MAX_BITS:
        raise QuantizationError(f"bit width must be an integer in [{MIN_BITS}, {MAX_BITS}], got {k!r}")
    return k


def sigma(k: int) -> float:
    """Least significant bit of a k-bit fixed-point number in (-1, 1): 2^(1-k)."""
    return 2.0 ** (1 - check_bits(k))


def max_code(k: int) -> int:
    """Largest symmetric code, 2^(k-1) - 1 (127 for 8 bits)."""
    return 2 ** (check_bits(k) - 1) - 1


def q_direct(x: torch.Tensor, k: int) -> torch.Tensor:
    """Q(x, k) = round(x / sigma) * sigma, ties to even."""
    s = sigma(k)
    return torch.round(x / s) * s


def clip(x: torch.Tensor, k: int) -> torch.Tensor:
    """C(x, k) = clamp(x, -1 + sigma, 1 - sigma)."""
    s = sigma(k)
    return torch.clamp(x, -1 + s, 1 - s)


def _amax(x: torch.Tensor) -> torch.Tensor:
    amax = x.detach().abs().amax() if x.numel() else x.new_zeros(())
    if not bool(torch.isfinite(amax)):
        raise QuantizationError(
            f"cannot quantize a tensor holding NaN or Inf (shape {tuple(x.shape)}): "
            "the training diverged or the input is corrupt")
    return amax


def shift_exponent(x: torch.Tensor) -> torch.Tensor:
    """e with R(x) = 2^e = 2^round(log2 max|x|); e = 0 for an all-zero or empty tensor.

    e is floored at MIN_EXPONENT (-100). Returned as a 0-d float tensor."""
    amax = _amax(x).float()
    safe = torch.where(amax > 0, amax, torch.ones_like(amax))
    return torch.round(torch.log2(safe)).clamp_(min=MIN_EXPONENT)


def shift_scale(x: torch.Tensor) -> torch.Tensor:
    """R(x) = 2^round(log2 max|x|), 1 when max|x| = 0: a pure shift in hardware."""
    return torch.exp2(shift_exponent(x))


def uniform_like(y: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """The uniform random numbers u ~ U[0, 1) stochastic rounding adds, one per element."""
    return torch.rand(y.shape, generator=generator, device=y.device, dtype=y.dtype)


def stochastic_round(y: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """SR(y) = floor(y + u), u ~ U[0, 1): unbiased, E[SR(y)] = y."""
    return torch.floor(y + uniform_like(y, generator))


def round_(y: torch.Tensor, rounding: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Round to integers: 'nearest' (half to even) or 'stochastic'."""
    if rounding == "nearest":
        return torch.round(y)
    if rounding == "stochastic":
        return stochastic_round(y, generator)
    raise QuantizationError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")


@dataclass(frozen=True)
class QTensor:
    """Integer view of a quantized tensor: value = codes * 2^exponent (exponent of the LSB)."""

    codes: torch.Tensor
    exponent: int
    bits: int

    def dequantize(self) -> torch.Tensor:
        return self.codes.to(torch.float32) * 2.0 ** self.exponent


def _code_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def sq_integer(x: torch.Tensor, k: int, rounding: str = "nearest",
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SQ(x, k) as (integer-valued float codes, LSB exponent e_R + 1 - k as 0-d tensor)."""
    check_bits(k)
    lsb = shift_exponent(x) + (1 - k)
    m = max_code(k)
    codes = round_(x * torch.exp2(-lsb), rounding, generator).clamp_(-m, m)
    return codes, lsb


def sq(x: torch.Tensor, k: int, rounding: str = "nearest",
       generator: torch.Generator | None = None) -> torch.Tensor:
    """SQ(x, k) = R(x) * C(Q(x / R(x), k), k), with nearest or stochastic rounding."""
    codes, lsb = sq_integer(x, k, rounding, generator)
    return codes.mul_(torch.exp2(lsb)).to(x.dtype)


def sq_codes(x: torch.Tensor, k: int, rounding: str = "nearest",
             generator: torch.Generator | None = None) -> QTensor:
    """SQ(x, k) as integer codes and exponent."""
    codes, lsb = sq_integer(x, k, rounding, generator)
    return QTensor(codes.to(_code_dtype(k)), int(lsb), k)


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
    y = x * torch.exp2(-unit)
    f = 2.0 ** FQ_FRACTION_BITS
    small = round_(y * f, rounding, generator)
    large = round_(y, rounding, generator).clamp_(-max_code(k), max_code(k)) * f
    codes = torch.where(y.abs() < 1, small, large)
    return codes, unit - FQ_FRACTION_BITS


def fq(x: torch.Tensor, k: int = 8, rounding: str = "nearest",
       generator: torch.Generator | None = None) -> torch.Tensor:
    codes, lsb = fq_integer(x, k, rounding, generator)
    return codes.mul_(torch.exp2(lsb)).to(x.dtype)


def fq_codes(x: torch.Tensor, k: int = 8, rounding: str = "nearest",
             generator: torch.Generator | None = None) -> QTensor:
    """FQ as fine-grid codes (int16: flag range folded in) and exponent."""
    codes, lsb = fq_integer(x, k, rounding, generator)
    return QTensor(codes.to(torch.int16), int(lsb), k + FQ_FRACTION_BITS + 1)


def cq_integer(g: torch.Tensor, k: int = 8, c: int = 128,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """CQ(g; k, c): n = clamp(SR(c * g / R(g)), -(c-1), c-1), value n * R(g) / c.

    WAGEUBN's gradient quantizer; c must be a power of two no larger than 2^(k-1) so that the
    value is n * 2^(e_R - log2 c) and n fits in k bits."""
    check_bits(k)
    if c < 2 or c & (c - 1) or c > 2 ** (k - 1):
        raise QuantizationError(f"CQ constant c must be a power of two in [2, 2^(k-1)], got {c}")
    lsb = shift_exponent(g) - (c.bit_length() - 1)
    codes = stochastic_round(g * torch.exp2(-lsb), generator).clamp_(-(c - 1), c - 1)
    return codes, lsb


def cq(g: torch.Tensor, k: int = 8, c: int = 128, generator: torch.Generator | None = None) -> torch.Tensor:
    codes, lsb = cq_integer(g, k, c, generator)
    return codes.mul_(torch.exp2(lsb)).to(g.dtype)


def cq_codes(g: torch.Tensor, k: int = 8, c: int = 128,
             generator: torch.Generator | None = None) -> QTensor:
    codes, lsb = cq_integer(g, k, c, generator)
    return QTensor(codes.to(_code_dtype(k)), int(lsb), k)


def fixed_grid(x: torch.Tensor, lsb_exponent: torch.Tensor | int, k: int, rounding: str = "nearest",
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Quantize onto a fixed grid: clamp(round(x / 2^e), +-(2^(k-1)-1)) * 2^e (weights, scalars)."""
    scale = torch.exp2(torch.as_tensor(lsb_exponent, dtype=torch.float32))
    m = max_code(k)
    return round_(x / scale, rounding, generator).clamp_(-m, m).mul_(scale).to(x.dtype)

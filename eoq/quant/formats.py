"""Number formats and the choices that travel through specs and kernels, as enums.

A choice is parsed once from its string (``Rounding.parse("stochastic")``) where a spec or a
configuration is built; from then on code compares enum members, and the kernels receive
``.code``, the integer the C++ side expects. Each enum is also its string (``str`` mix-in), so the
JSON spec format and every message stay as they were.

    bits k       integer codes in [-(2^(k-1)-1), 2^(k-1)-1], 2 <= k <= 24 (exact in float32)
    sigma(k)     2^(1-k), the LSB of a k-bit fixed-point number in (-1, 1)
    exponent     a tensor's values are codes * 2^exponent; exponents are kept >= MIN_EXPONENT
"""
from __future__ import annotations

import enum

MIN_BITS, MAX_BITS = 2, 24  # float32 holds every integer of up to 24 bits exactly
# Shift exponents are kept >= MIN_EXPONENT so that every scale 2^-e is a normal float32 number
# (2^126 would overflow the reciprocal). A tensor with max|x| < 2^-100 therefore quantizes to 0.
MIN_EXPONENT = -100


class QuantizationError(ValueError):
    """Raised for input a quantizer cannot represent: NaN or Inf values, bad bit widths."""


class Choice(str, enum.Enum):
    """An enum whose members are their strings (JSON, messages and comparisons unchanged)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def parse(cls, value, error=ValueError, what: str | None = None):
        """The member named by ``value`` (a member or its string); ``error`` names the choices."""
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise error(f"unknown {what or cls.__name__.lower()} {value!r}; choose one of: {names}") from None

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(m.value for m in cls)


class Rounding(Choice):
    """How a scaled value becomes an integer code. ``code`` is the kernels' mode number."""

    NEAREST = "nearest"        # round half to even (torch.round, std::nearbyint)
    STOCHASTIC = "stochastic"  # SR(y) = floor(y + b / 2^16), 16 counter-hash random bits b

    @property
    def code(self) -> int:
        return 0 if self is Rounding.NEAREST else 1


class QuantizerKind(Choice):
    """Which quantizer a tensor kind uses (SPEC section 1)."""

    SQ = "sq"   # shift quantizer: R(x) * C(Q(x / R(x), k), k)
    FQ = "fq"   # flag quantizer (WAGEUBN's conv-output errors)
    CQ = "cq"   # constant quantizer (WAGEUBN's gradients)


ROUNDINGS = Rounding.values()


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

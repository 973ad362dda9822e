"""Counter-based random bits for stochastic rounding: 16 bits per element from a keyed hash.

Stochastic rounding needs one uniform number per element. Drawing them with ``torch.rand`` cost
about 3 ns per element here (a third of the simulator's overhead) and gives float32 numbers whose
sum with y rounds, so no integer datapath could reproduce it. Instead, every quantizer call draws
one 64-bit key (k0, k1) from the run's ``torch.Generator`` and element i (row-major index in the
logical shape, whatever the memory layout) gets

    h_m = lowbias32(lowbias32(m + k0 mod 2^32) XOR k1),   b_2m = h_m >> 16,  b_2m+1 = h_m & 0xFFFF

(16 bits each, 0 .. 65535): one keyed hash serves two neighbouring elements. lowbias32 is the
32-bit integer hash of C. Wellons (xor-shift-multiply, a bijection with measured bias 0.17 in its
avalanche test); both halves of its output are well mixed. Stochastic rounding is then

    SR(y) = floor((floor(y * 2^16) + b) / 2^16)  ==  floor(y + b / 2^16)

exact integer arithmetic in both the float simulator and the integer engine. Its statistical
quality: E[SR(y)] = floor(2^16 y) / 2^16, so the bias lies in (-2^-16, 0] of one LSB (exactly
0 for y on the 2^-16 grid), against 2^-24 for float32 ``torch.rand``; P(round up) is exact to 2^-16.
Reproducible from the seed; the generator state (checkpointed) fixes every key.

This module is the reference implementation in plain torch ops (any device). The fused CPU
kernel in ``csrc/quant.cpp`` computes the same bits; tests check that they agree bit for bit.
"""
from __future__ import annotations

import numpy as np
import torch

SR_BITS = 16
_M32 = 0xFFFFFFFF


def draw_keys(generator: torch.Generator | None, *shape: int) -> torch.Tensor:
    """int64 tensor of ``shape`` x 2: one (k0, k1) pair of 32-bit keys per quantizer call."""
    return torch.randint(0, 2 ** 32, (*shape, 2), generator=generator, dtype=torch.int64)


def draw_key(generator: torch.Generator | None) -> tuple[int, int]:
    """Two 32-bit keys for one quantizer call, drawn from ``generator`` (the global one if None)."""
    k0, k1 = draw_keys(generator).tolist()
    return k0, k1


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """x * c mod 2^32 for int64 tensors holding uint32, without int64 overflow."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _M32


def lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _lowbias32_u32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on a NumPy uint32 array, whose multiplications wrap mod 2^32 by themselves."""
    x = x ^ (x >> np.uint32(16))
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def random_bits(shape, key: tuple[int, int], device=None, offset: int = 0) -> torch.Tensor:
    """b_i for every element of ``shape`` (int64 in [0, 2^16)), i the row-major logical index
    (plus ``offset``: a data-parallel shard gets the bits of its rows' global indices). On the CPU
    the hash runs in NumPy uint32 (native wrapping multiplies, four times faster than the int64
    emulation below, which serves other devices); tests check both against plain Python ints."""
    n = 1
    for s in shape:
        n *= int(s)
    if device is None or torch.device(device).type == "cpu":
        i = np.arange(offset, offset + n, dtype=np.uint64).astype(np.uint32)      # mod 2^32
        h = _lowbias32_u32(_lowbias32_u32((i >> np.uint32(1)) + np.uint32(key[0])) ^ np.uint32(key[1]))
        b, even = h.astype(np.int64), offset & 1          # element j has i = offset + j
        b[even::2] >>= 16                                  # even i: the hash's high half,
        b[1 - even::2] &= 0xFFFF                           # odd i: its low half
        return torch.from_numpy(b).reshape(tuple(shape))
    return _random_bits_int64(n, key, device, offset).reshape(tuple(shape))


def _random_bits_int64(n: int, key: tuple[int, int], device=None, offset: int = 0) -> torch.Tensor:
    """random_bits of n elements in int64 torch ops (any device)."""
    i = torch.arange(offset, offset + n, dtype=torch.int64, device=device) & _M32
    h = lowbias32(lowbias32(((i >> 1) + key[0]) & _M32) ^ key[1])
    return torch.where((i & 1) == 1, h & 0xFFFF, h >> 16)


def stochastic_round(y: torch.Tensor, key: tuple[int, int], offset: int = 0) -> torch.Tensor:
    """SR(y) = floor((floor(y * 2^16) + b) / 2^16), exact for |y| < 2^36; same dtype as y."""
    b = random_bits(y.shape, key, y.device, offset).to(torch.float64)
    t = torch.floor(y.to(torch.float64) * 2.0 ** SR_BITS) + b
    return torch.floor(t * 2.0 ** -SR_BITS).to(y.dtype)

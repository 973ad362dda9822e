"""Known answers for the counter hash and stochastic rounding, from their definitions (eoq.quant.rng,
README "Random bits"), not from any implementation: every implementation (torch, the fused kernel,
the NumPy reference) must give these numbers.

lowbias32(x): x ^= x >> 16; x *= 0x7feb352d; x ^= x >> 15; x *= 0x846ca68b; x ^= x >> 16 (mod 2^32).
lowbias32(1) step by step: 0x1 -> 0x7feb352d -> 0x7feb352d ^ 0xffd6 = 0x7febcafb -> * 0x846ca68b =
0x6889f849 -> ^ 0x6889 = 0x688990c0.
b_i = high (i even) or low (i odd) 16 bits of lowbias32(lowbias32((i >> 1) + k0) ^ k1).
SR(y) = floor((floor(y * 2^16) + b) / 2^16).
"""
import numpy as np
import pytest
import torch

from eoq import kernels
from eoq.quant import rng
from eoq.training import golden

REF = golden.reference()
LOWBIAS = {0: 0x0, 1: 0x688990C0, 2: 0xD1132181, 0xFFFFFFFF: 0x6768824A, 0x12345678: 0xF5E71C96}
KEY = (0x12345678, 0x9ABCDEF0)
BITS = [14750, 39249, 34665, 25517, 45628, 32533]          # b_0 .. b_5 under KEY


def test_lowbias32_known_answers():
    x = torch.tensor(list(LOWBIAS), dtype=torch.int64)
    assert rng.lowbias32(x).tolist() == list(LOWBIAS.values())
    assert REF.lowbias32(np.array(list(LOWBIAS), dtype=np.uint64)).tolist() == list(LOWBIAS.values())


def test_random_bits_known_answers():
    assert rng.random_bits((6,), KEY).tolist() == BITS
    assert REF.random_bits(6, KEY).tolist() == BITS
    k = kernels.load()
    if k is not None:
        assert k.random_bits(6, *KEY).tolist() == BITS


@pytest.mark.parametrize("y,threshold,low", [(2.75, 16384, 2), (-1.25, 16384, -2), (0.5, 32768, 0),
                                             (3.0, 65536, 3), (-3.0, 65536, -3)])
def test_stochastic_rounding_known_answers(y, threshold, low):
    """SR(y) = low + [b >= threshold]: 2.75 -> floor(180224 + b) / 65536 is 3 exactly when b >= 16384
    (probability 0.75); -1.25 -> -2 + [b >= 16384]; integers stay."""
    b = np.array(BITS)
    want = low + (b >= threshold)
    got = rng.stochastic_round(torch.full((6,), y, dtype=torch.float64), KEY).tolist()
    assert got == want.tolist()
    # the reference's integer form: y = m / 2^s with m = y * 4, s = 2
    assert REF.sr_shift(np.full(6, int(y * 4)), 2, KEY).tolist() == want.tolist()

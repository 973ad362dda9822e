"""Counter-hash random bits and the fused quantizer kernels against independent references."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from eoq import kernels
from eoq.quant import quantizers as Q
from eoq.quant import rng


def py_lowbias32(x: int) -> int:
    """Wellons' lowbias32 on Python ints (independent of the torch int64 trick)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_random_bits_match_python_reference():
    key = (0xDEADBEEF, 0x12345678)
    got = rng.random_bits((1000,), key).tolist()
    h = [py_lowbias32(py_lowbias32((m + key[0]) & 0xFFFFFFFF) ^ key[1]) for m in range(500)]
    ref = [h[i // 2] & 0xFFFF if i % 2 else h[i // 2] >> 16 for i in range(1000)]
    assert got == ref
    assert py_lowbias32(0) == 0 and py_lowbias32(1) != 1
    assert rng._random_bits_int64(1000, key).tolist() == ref      # the any-device path


@given(st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 32 - 1), st.integers(0, 2 ** 33), st.integers(1, 9))
@settings(max_examples=60, deadline=None)
def test_random_bits_wrap_like_python_ints_at_any_key_and_offset(k0, k1, offset, n):
    """Counter and key sums wrap mod 2^32 (NumPy uint32 path and int64 path alike)."""
    got = rng.random_bits((n,), (k0, k1), offset=offset).tolist()
    ref = []
    for i in range(offset, offset + n):
        h = py_lowbias32(py_lowbias32((((i & 0xFFFFFFFF) >> 1) + k0) & 0xFFFFFFFF) ^ k1)
        ref.append(h & 0xFFFF if i & 1 else h >> 16)
    assert got == ref
    assert rng._random_bits_int64(n, (k0, k1), offset=offset).tolist() == ref


def test_random_bits_statistical_quality():
    """Uniform over 0..65535 (chi-square over 256 cells), independent bits, uncorrelated keys/neighbours."""
    n = 1 << 20
    b = rng.random_bits((n,), rng.draw_key(torch.Generator().manual_seed(3))).numpy()
    counts = np.bincount(b >> 8, minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6             # uniform over 256 cells (df 255)
    assert stats.kstest((b + 0.5) / 65536, "uniform").pvalue > 1e-6
    bits = (b[:, None] >> np.arange(16)) & 1
    assert np.abs(bits.mean(0) - 0.5).max() < 6 * 0.5 / math.sqrt(n)
    u = (b + 0.5) / 65536 - 0.5
    assert abs(float(np.mean(u[1:] * u[:-1]))) < 6 / 12 / math.sqrt(n)   # lag-1 correlation
    b2 = rng.random_bits((n,), rng.draw_key(torch.Generator().manual_seed(4))).numpy()
    u2 = (b2 + 0.5) / 65536 - 0.5
    assert abs(float(np.mean(u * u2))) < 6 / 12 / math.sqrt(n)           # two keys


def test_stochastic_rounding_bias_bound_is_tight():
    """E[SR(y)] = floor(2^16 y) / 2^16: bias 0 on the 2^-16 grid, at most 2^-16 off it."""
    n = 1 << 18
    gen = torch.Generator().manual_seed(5)
    y_on = 0.25 + 3 * 2 ** -16
    y_off = 0.25 + 0.5 * 2 ** -16
    for y, expected in ((y_on, y_on), (y_off, 0.25)):
        draws = Q.stochastic_round(torch.full((n,), y, dtype=torch.float64), gen)
        ups = int(draws.sum())                   # SR(y) is 0 or 1 here: a binomial count of round-ups
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
        assert stats.binomtest(ups, n, expected).pvalue > 1e-6


@pytest.mark.parametrize("amax", [2 ** 0.5 * 2 ** n for n in range(-30, 30, 7)])
def test_exponent_is_exact_at_the_half_point(amax):
    """round(log2 m) at the two float32 neighbours of 2^(n+1/2): below rounds down, above up."""
    below = float(np.nextafter(np.float32(amax), np.float32(0)))
    above = float(np.nextafter(np.float32(amax), np.float32(np.inf)))
    n = math.floor(math.log2(amax))
    lo = below if below < amax else float(np.nextafter(np.float32(below), np.float32(0)))
    hi = above if above > amax else float(np.nextafter(np.float32(above), np.float32(np.inf)))
    assert Q.exponent_of(lo) == n and Q.exponent_of(hi) == n + 1


@settings(max_examples=300, deadline=None)
@given(st.floats(1e-30, 1e30))
def test_exponent_matches_float64_log2(a):
    a = float(np.float32(a))
    assert Q.exponent_of(a) == max(round(math.log2(a)), Q.MIN_EXPONENT)


needs_kernels = pytest.mark.skipif(kernels.load() is None, reason="fused kernels not built here")


@needs_kernels
def test_kernel_bits_equal_reference():
    mod = kernels.load()
    key = (123456789, 4000000000)
    assert torch.equal(mod.random_bits(70_000, *key).long(), rng.random_bits((70_000,), key))


def _reference(x, exponent, m, rounding, key):
    y = (x.double() * 2.0 ** -exponent).clamp(-m, m)
    if rounding == "nearest":
        return torch.round(y)
    b = rng.random_bits(x.shape, key).double()
    return torch.floor((torch.floor(y * 65536) + b) / 65536)


@needs_kernels
@settings(max_examples=60, deadline=None)
@given(st.sampled_from([(7,), (3, 5), (2, 3, 4, 5), (4, 16, 6, 6), (1, 1, 1, 1), (2, 5, 3, 3),
                         (1, 600, 2, 2), (3, 24, 10, 10), (2, 256, 2, 2), (2, 3, 4, 4)]),
       st.integers(2, 16), st.sampled_from(Q.ROUNDINGS), st.integers(0, 2 ** 31),
       st.booleans(), st.floats(1e-6, 1e6))
def test_kernel_round_scaled_is_bit_exact(shape, k, rounding, seed, channels_last, spread):
    """Kernel == float64 reference (and == torch path) for layouts, widths and both roundings;
    channels-last with an even H*W takes the kernel's pixel-pair path (runs of pairs in one block,
    cut at the end of an image: (4, 16, 6, 6), (3, 24, 10, 10), (2, 3, 4, 4); one pair a block at
    256 channels), odd H*W (2, 5, 3, 3) the per-pixel one, and 600 channels split into blocks."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * spread
    if channels_last and len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    m = Q.max_code(k)
    e = Q.shift_exponent(x) + 1 - k
    key = rng.draw_key(torch.Generator().manual_seed(seed + 1))
    mod = kernels.load()
    mode = Q.ROUNDINGS.index(rounding)
    codes = mod.round_scaled(x, e, m, mode, key[0], key[1], True)
    ref = _reference(x, e, m, rounding, key)
    assert torch.equal(codes.double(), ref)
    vals = mod.round_scaled(x, e, m, mode, key[0], key[1], False)
    assert torch.equal(vals.double(), ref * 2.0 ** e)
    if channels_last and shape == (4, 16, 6, 6):
        assert vals.is_contiguous(memory_format=torch.channels_last)   # layout kept


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_kernel_pixel_pair_runs_across_thread_chunks(threads):
    """Channels-last stochastic rounding in runs of pixel pairs, where a thread's chunk starts in
    the middle of an image (338 pairs an image, chunks of 512 pairs): the float64 reference."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(3, 16, 26, 26, generator=torch.Generator().manual_seed(6))
        x = x.contiguous(memory_format=torch.channels_last)
        key = (987654321, 12345)
        codes = kernels.load().round_scaled(x, -5, 127, 1, key[0], key[1], True)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(codes.double(), _reference(x, -5, 127, "stochastic", key))


@needs_kernels
def test_sq_same_with_and_without_kernels():
    x = torch.randn(8, 16, 10, 10).contiguous(memory_format=torch.channels_last)
    fast = Q.sq(x, 8, "stochastic", torch.Generator().manual_seed(2))
    with kernels.disabled():
        slow = Q.sq(x, 8, "stochastic", torch.Generator().manual_seed(2))
    assert torch.equal(fast, slow)
    with pytest.raises(Q.QuantizationError, match="NaN or Inf"):
        Q.sq(torch.tensor([1.0, float("nan")]), 8)


@needs_kernels
@settings(max_examples=40, deadline=None)
@given(st.sampled_from([(5,), (3, 7), (4, 16, 6, 6), (2, 3, 5, 5)]), st.sampled_from(Q.ROUNDINGS),
       st.integers(0, 2 ** 31), st.booleans(), st.sampled_from([0.0, 0.25, -0.3, 1.5]),
       st.sampled_from([0.0, 0.0625, -0.75]))
def test_fused_affine_sq_equals_torch_ops(shape, rounding, seed, channels_last, pre, bias):
    """The kernel's SQ(x + b), SQ(x * s) and SQ(relu(x + p) + b) == the same ops in float64, where
    each step is exact, followed by SQ (the torch path), for both roundings and layouts. (float32
    ops would round x + 1.5 and, now and then, move a value across a rounding tie.)"""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    x[(x.abs() < 0.2)] = -pre              # elements that land exactly on the ReLU's threshold
    if channels_last and len(shape) == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    p, b = torch.tensor([pre]), torch.tensor([bias])
    xd, pd, bd = x.double(), p.double(), b.double()
    cases = [(Q.sq_plus, (x, b), xd + bd), (Q.sq_times, (x, b + 1), xd * (bd + 1)),
             (Q.sq_relu_plus, (x, p, b), torch.relu(xd + pd) + bd)]
    for fn, args, plain in cases:
        fast = fn(*args, 8, rounding, torch.Generator().manual_seed(seed + 1))
        ref = Q.sq(plain, 8, rounding, torch.Generator().manual_seed(seed + 1)).float()
        with kernels.disabled():
            slow = fn(*args, 8, rounding, torch.Generator().manual_seed(seed + 1))
        assert torch.equal(fast, ref) and torch.equal(slow, ref), fn.__name__


@needs_kernels
def test_fused_relu_sq_rejects_nan():
    with pytest.raises(Q.QuantizationError, match="NaN or Inf"):
        Q.sq_relu_plus(torch.tensor([1.0, float("nan"), -2.0]), torch.zeros(1), torch.zeros(1), 8)


@needs_kernels
def test_kernel_key_draw_matches_torch_randint():
    """The kernel's key draw consumes the generator exactly like rng.draw_key (torch.randint)."""
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert [kernels.load().draw_key(g1) for _ in range(5)] == [rng.draw_key(g2) for _ in range(5)]
    assert torch.equal(g1.get_state(), g2.get_state())


def test_kernels_are_built_where_a_compiler_exists():
    """A silent fallback would hide the fast path from every kernel test: fail instead."""
    import shutil
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    assert kernels.load() is not None

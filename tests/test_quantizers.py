"""Quantization primitives against hand-worked examples, float64 references and properties."""
import contextlib
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq import kernels
from eoq.quant import quantizers as Q

finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)
arrays = st.lists(finite, min_size=1, max_size=64)
bits = st.integers(min_value=2, max_value=16)


def ref_sq(x: np.ndarray, k: int) -> np.ndarray:
    """SPEC's SQ written directly in float64 with numpy (round half to even: np.round)."""
    amax = np.abs(x).max()
    r = 1.0 if amax == 0 else 2.0 ** max(np.round(np.log2(amax)), Q.MIN_EXPONENT)
    s = 2.0 ** (1 - k)
    return r * np.clip(np.round(x / r / s) * s, -1 + s, 1 - s)


# ---- hand-worked examples -------------------------------------------------------------------

def test_sigma_and_max_code():
    assert Q.sigma(8) == 1 / 128 and Q.sigma(2) == 0.5
    assert Q.max_code(8) == 127 and Q.max_code(2) == 1 and Q.max_code(16) == 32767


def test_q_direct_rounds_half_to_even():
    # k = 3: sigma = 0.25; 0.375 / 0.25 = 1.5 -> 2, 0.625 / 0.25 = 2.5 -> 2 (ties to even)
    x = torch.tensor([0.375, 0.625, -0.125, 0.1])
    assert Q.round_to_lsb(x, 3).tolist() == [0.5, 0.5, -0.0, 0.0]


def test_clip_symmetric():
    x = torch.tensor([-2.0, -0.5, 0.75, 2.0])
    assert Q.clip_to_range(x, 8).tolist() == [-127 / 128, -0.5, 0.75, 127 / 128]


def test_shift_scale_examples():
    assert float(Q.pow2_scale(torch.tensor([0.3, -0.1]))) == 0.25   # log2 0.3 = -1.74 -> -2
    assert float(Q.pow2_scale(torch.tensor([3.0]))) == 4.0          # log2 3 = 1.58 -> 2
    assert float(Q.pow2_scale(torch.tensor([-5.0, 1.0]))) == 4.0    # log2 5 = 2.32 -> 2
    assert float(Q.pow2_scale(torch.zeros(4))) == 1.0               # defined for zeros
    assert float(Q.pow2_scale(torch.zeros(0))) == 1.0               # and for empty tensors


def test_sq_hand_worked():
    # max 0.3 -> R = 0.25, k = 4: sigma = 1/8, grid step R * sigma = 1/32, codes in [-7, 7]
    x = torch.tensor([0.3, 0.1, -0.05, 0.01])
    q = Q.sq_codes(x, 4)
    # 0.3/0.25 = 1.2 -> clip to 7/8 -> code 7; 0.1*32 = 3.2 -> 3; -0.05*32 = -1.6 -> -2; 0.32 -> 0
    assert q.codes.tolist() == [7, 3, -2, 0]
    assert q.exponent == -5 and q.codes.dtype == torch.int8
    assert Q.sq(x, 4).tolist() == [7 / 32, 3 / 32, -2 / 32, 0.0]


def test_tiny_tensors_quantize_without_overflow():
    # max|x| = 1e-40 (denormal): an unfloored scale 2^-(e+1-k) would overflow float32 to inf
    x = torch.tensor([1e-40, 0.0, -3e-41])
    assert torch.equal(Q.sq(x, 8), torch.zeros(3))
    assert torch.equal(Q.sq(x, 8, "stochastic", torch.Generator().manual_seed(0)).abs(), torch.zeros(3))
    y = torch.tensor([2.0 ** -90, 2.0 ** -91])   # above the floor: exact as usual
    assert Q.sq(y, 8).tolist() == [2.0 ** -90 * 127 / 128, 2.0 ** -91]


def test_sq_of_zeros_and_empty():
    assert Q.sq(torch.zeros(5), 8).tolist() == [0.0] * 5
    assert Q.sq(torch.zeros(0), 8).numel() == 0
    assert Q.sq_codes(torch.zeros(3), 8).exponent == -7


def test_fq_keeps_small_values_that_sq_flushes():
    # max 1.0 -> R = 1, k = 8: unit u = 1/128. 0.001 * 128 = 0.128 (< 1: 7 fractional bits)
    x = torch.tensor([1.0, 0.5, 0.001, -0.003])
    assert Q.sq(x, 8)[2:].tolist() == [0.0, -0.0]
    fqv = Q.fq(x, 8)
    u = 1 / 128
    assert fqv[2].item() == pytest.approx(round(0.128 * 128) / 128 * u, abs=0)
    assert fqv[3].item() == pytest.approx(round(-0.384 * 128) / 128 * u, abs=0)
    assert fqv[1].item() == 0.5 and fqv[0].item() == 127 / 128   # large range: integers, clipped at 127
    q = Q.fq_codes(x, 8)
    assert q.dequantize().tolist() == fqv.tolist()


def test_cq_hand_worked():
    g = torch.tensor([0.5, -0.25, 0.0])   # R = 0.5, c = 4: n = SR(4 * g / 0.5) = [4 -> clamp 3, -2, 0]
    gen = torch.Generator().manual_seed(0)
    q = Q.cq_codes(g, 8, 4, gen)
    assert q.codes.tolist() == [3, -2, 0] and q.exponent == -3
    with pytest.raises(Q.QuantizationError):
        Q.cq(g, 8, 3)


def test_stochastic_round_uses_floor_of_y_plus_random_bits():
    """SR(y) = floor(y + b / 2^16), b the hash bits of a key drawn from the generator."""
    from eoq.quant import rng
    key = rng.draw_key(torch.Generator().manual_seed(1))
    b = rng.random_bits((5,), key).double()
    y = torch.tensor([0.2, 1.5, -0.7, 3.0, -2.25], dtype=torch.float64)
    expect = torch.floor(y + b / 65536)          # exact in float64: y has few bits here
    assert torch.equal(Q.stochastic_round(y, torch.Generator().manual_seed(1)), expect)


@pytest.mark.parametrize("bad", [1, 25, 0, 8.0, True, "8"])
def test_bad_bit_widths_rejected(bad):
    with pytest.raises(Q.QuantizationError, match="bit width"):
        Q.sq(torch.ones(3), bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_a_clear_error(value):
    with pytest.raises(Q.QuantizationError, match="NaN or Inf"):
        Q.sq(torch.tensor([1.0, value]), 8)


def test_bad_rounding_rejected():
    with pytest.raises(Q.QuantizationError, match="rounding"):
        Q.round_(torch.ones(2), "up")


# ---- float64 reference and properties -------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(arrays, bits)
def test_sq_matches_float64_reference(values, k):
    x = np.array(values, np.float32)
    got = Q.sq(torch.from_numpy(x), k).double().numpy()
    np.testing.assert_array_equal(got, ref_sq(x.astype(np.float64), k))


@settings(max_examples=200, deadline=None)
@given(arrays, bits, st.sampled_from(Q.ROUNDINGS), st.integers(0, 2 ** 31))
def test_sq_codes_on_grid_and_in_range(values, k, rounding, seed):
    x = torch.tensor(values)
    q = Q.sq_codes(x, k, rounding, torch.Generator().manual_seed(seed))
    assert int(q.codes.abs().max()) <= Q.max_code(k)
    r = float(Q.pow2_scale(x))
    assert q.exponent == round(math.log2(r)) + 1 - k and q.exponent >= Q.MIN_EXPONENT + 1 - k
    v = Q.sq(x, k, rounding, torch.Generator().manual_seed(seed))
    assert torch.equal(q.dequantize(), v)            # integer view and float view agree exactly
    assert float(v.abs().max()) <= r * (1 - Q.sigma(k))


@settings(max_examples=100, deadline=None)
@given(arrays, st.integers(2, 8), st.integers(0, 2 ** 31))
def test_fq_and_cq_codes_on_grid(values, k, seed):
    x = torch.tensor(values)
    f = Q.fq_codes(x, k)
    assert torch.equal(f.dequantize(), Q.fq(x, k))
    assert int(f.codes.abs().max()) <= Q.max_code(k) * 2 ** Q.FQ_FRACTION_BITS
    c = 2 ** (k - 1)
    q = Q.cq_codes(x, k, c, torch.Generator().manual_seed(seed))
    assert int(q.codes.abs().max()) <= c - 1
    assert torch.equal(q.dequantize(), Q.cq(x, k, c, torch.Generator().manual_seed(seed)))


@settings(max_examples=50, deadline=None)
@given(arrays, bits, st.integers(0, 2 ** 31))
def test_same_seed_same_result(values, k, seed):
    x = torch.tensor(values)
    a = Q.sq(x, k, "stochastic", torch.Generator().manual_seed(seed))
    b = Q.sq(x, k, "stochastic", torch.Generator().manual_seed(seed))
    assert torch.equal(a, b)


@pytest.mark.parametrize("y", [0.3, -1.7, 5.01, 0.5, -0.999])
def test_stochastic_rounding_is_unbiased(y):
    """Mean of n draws of SR(y) is within 5 standard errors + the 2^-16 bit-depth bias of y."""
    n = 200_000
    gen = torch.Generator().manual_seed(123)
    draws = Q.stochastic_round(torch.full((n,), y, dtype=torch.float64), gen)
    p = y - math.floor(y)
    se = math.sqrt(p * (1 - p) / n)
    assert abs(float(draws.mean()) - y) <= 5 * se + 2 ** -16
    assert set(draws.unique().tolist()) <= {math.floor(y), math.floor(y) + 1}


def test_stochastic_sq_is_unbiased_inside_the_clip_range():
    x = torch.linspace(-0.9, 0.9, 101)
    x[0] = -1.0  # fixes R = 1
    n = 4000
    gen = torch.Generator().manual_seed(7)
    mean = sum(Q.sq(x, 4, "stochastic", gen) for _ in range(n)) / n
    step = 2 ** -3
    inside = x.abs() <= 1 - step
    se = step / 2 / math.sqrt(n)
    assert float((mean - x)[inside].abs().max()) < 5 * se


def test_fixed_grid_clamps_and_rounds():
    x = torch.tensor([0.0, 0.3, -10.0, 0.0078125])
    # LSB 2^-4, 4 bits: codes in [-7, 7]
    assert Q.fixed_grid(x, -4, 4).tolist() == [0.0, 5 / 16, -7 / 16, 0.0]


@pytest.mark.parametrize("use_kernel", [True, False])
def test_fused_affine_is_exact_before_the_rounding(use_kernel):
    """SQ(x + b) rounds the exact sum: 2.5 LSB + 2^-40 rounds up to 3, where the float32 sum
    (2.5 LSB: b is below its last bit) would tie to the even code 2. The same for relu(x + p) + b and
    for the integer engine's codes."""
    from eoq import kernels
    from eoq.quant.quantizers import sq, sq_integer, sq_plus, sq_relu_plus
    x = torch.tensor([1.0, 2.5 * 2.0 ** -7, -3.0 * 2.0 ** -7])
    tiny = torch.tensor([2.0 ** -40])
    ctx = contextlib.nullcontext() if use_kernel else kernels.disabled()
    with ctx:
        if use_kernel and kernels.load() is None:
            pytest.skip("compiled kernels unavailable")
        assert sq_plus(x, tiny, 8).tolist() == [127 * 2.0 ** -7, 3 * 2.0 ** -7, -3 * 2.0 ** -7]
        assert sq(x + tiny, 8).tolist()[1] == 2 * 2.0 ** -7            # the float32 sum ties to even
        assert sq_relu_plus(x, torch.zeros(1), tiny, 8).tolist()[1:] == [3 * 2.0 ** -7, 0.0]
        codes, lsb = sq_integer(x, 8, bias=float(tiny))
        assert codes.tolist() == [127, 3, -3] and lsb == -7


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("mult", [None, 0.75, -3.0])
def test_sq_integer_with_a_known_max_skips_the_pass_and_keeps_the_codes(rounding, mult):
    """sq_integer(x, amax=max|x|) gives the codes of the max pass (x and x * mult); a different amax
    changes them (so the kernel really uses it); a bias ignores it (it needs x's range)."""
    if kernels.load() is None:
        pytest.skip("the compiled kernels are unavailable here")
    x = torch.randn(4, 6, 5, 5, generator=torch.Generator().manual_seed(8)) * 3
    amax = float(x.abs().max())
    run = lambda **k: Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(1), mult=mult, **k)  # noqa: E731
    want, got = run(), run(amax=amax)
    assert torch.equal(got[0], want[0]) and got[1] == want[1]
    assert run(amax=4 * amax)[1] == want[1] + 2
    b = Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(1), bias=0.5, amax=4 * amax)
    assert b[1] == Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(1), bias=0.5)[1]


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31), st.sampled_from(["mult", "bias", "relu"]), st.booleans(),
       st.sampled_from(["nearest", "stochastic"]), st.booleans())
def test_affine_sq_float32_fast_path_equals_the_exact_reference(seed, form, on_grid, rounding, channels_last):
    """The kernel forms x * mult, x + bias and relu(x + pre) + bias in float32 where every element's
    result is exact (stream values and 8-bit Fixup scalars: always) and in double elsewhere; either
    way the codes equal the torch reference's, which forms them in double (kernels disabled). Inputs
    on a 16-bit grid with grid scalars take the float32 path, full-mantissa ones mostly the double."""
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 16, 5, 6, generator=g) * 3
    scalar = float(torch.randint(-127, 128, (1,), generator=g)) * 2.0 ** -6
    pre = float(torch.randint(-127, 128, (1,), generator=g)) * 2.0 ** -7
    if on_grid:
        x = (x * 2 ** 12).round().clamp(-32767, 32767) / 2 ** 12
    else:
        scalar, pre = scalar + 2.0 ** -20, pre + 3 * 2.0 ** -21
    x[0, 0, 0, :3] = 0.0
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    kw = {"mult": dict(mult=scalar or 1.5), "bias": dict(bias=scalar or 0.5),
          "relu": dict(bias=scalar, relu_pre=pre)}[form]
    got = Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(5), **kw)
    with kernels.disabled():
        ref = Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(5), **kw)
    assert got[1] == ref[1] and torch.equal(got[0].to(torch.int8), ref[0].to(torch.int8))


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("affine", [{}, {"bias": 0.375}, {"bias": -5.0}, {"bias": 0.25, "relu_pre": -0.5},
                                    {"bias": 0.0, "relu_pre": 9.0}, {"mult": -1.5}])
def test_sq_integer_with_a_known_range_equals_the_max_pass(rounding, affine):
    """sq_integer(x, arange=(min x, max x)) skips the max pass (affine_amax) and gives the codes and
    exponent the pass gives, for x, x + b, relu(x + p) + b and x * m; a wrong range changes them."""
    x = torch.randn(4, 16, 3, 5, generator=torch.Generator().manual_seed(2)) * 3 + 1
    run = lambda **k: Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(1), **affine, **k)  # noqa: E731
    ref = run()
    got = run(arange=(float(x.min()), float(x.max())))
    assert got[1] == ref[1] and torch.equal(got[0], ref[0])
    wrong = run(arange=(float(x.min()) * 4, float(x.max()) * 4))
    assert wrong[1] != ref[1]

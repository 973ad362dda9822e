"""The fixed-point residual stream (eoq/nn/stream.py, spec stream_bits): FX rounding, the exact
error sum at a block boundary, and whole steps that stay on the 16-bit grid in both engines."""
import contextlib
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq import kernels
from eoq.nn import mask
from eoq.nn.fixup_tail import exact_tail, masked_exact_sums
from eoq.nn.stream import stream_split
from eoq.quant.quantizers import fixed_exponent, round_fixed
from eoq.training.loop import train_step
from eoq.training.setup import setup


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6, allow_nan=False, width=32), min_size=1, max_size=40),
       st.integers(2, 24))
def test_round_fixed_holds_the_max_on_the_finest_grid_and_rounds_to_nearest(values, k):
    x = torch.tensor(values, dtype=torch.float64)
    y, e = round_fixed(x, k)
    m = 2 ** (k - 1) - 1
    codes = y.double() * 2.0 ** -e
    assert torch.equal(codes, codes.round()) and codes.abs().max() <= m       # on the grid, no clip
    assert ((y.double() - x).abs() <= 2.0 ** (e - 1)).all()                    # nearest
    amax = float(x.abs().max())
    if amax > m * 2.0 ** -100:                                               # the exponent floor
        assert amax <= m * 2.0 ** e and amax > m * 2.0 ** (e - 1)              # the finest such grid


def test_round_fixed_ties_go_to_even_and_the_exponent_is_exact():
    assert fixed_exponent(127.0, 8) == 0 and fixed_exponent(127.5, 8) == 1 and fixed_exponent(0.0, 8) == 0
    assert fixed_exponent(2.0 ** -30 * 127, 8) == -30
    y, e = round_fixed(torch.tensor([127.0, 2.5, 3.5, -2.5]), 8)
    assert e == 0 and y.tolist() == [127.0, 2.0, 4.0, -2.0]


@pytest.mark.parametrize("use_kernel", [True, False])
def test_the_boundary_sums_the_two_errors_exactly_before_rounding(use_kernel):
    """e_branch + e_identity in float32 loses the 2^-40 (below its last bit) and ties to even; the
    boundary's exact sum rounds up (kernel and torch path alike)."""
    x = torch.tensor([3.0, 1.0 + 2.0 ** -20], requires_grad=True)
    a, b = stream_split(x, 16)           # a float32 input is a stream value already: passed as it is
    assert a.tolist() == x.tolist() and b.tolist() == x.tolist()
    a64, _ = stream_split(x.double(), 16)                             # an exact one is rounded
    assert a64.dtype == torch.float32 and a64.tolist() == [3.0, 1.0]  # LSB 2^-13 for max 3
    lsb = 2.0 ** -14                                                  # for max 1.5
    g_branch = torch.tensor([1.5, 2.5 * lsb])
    g_identity = torch.tensor([0.0, 2.0 ** -40])
    with contextlib.nullcontext() if use_kernel else kernels.disabled():
        torch.autograd.backward([a, b], [g_branch, g_identity])
    assert x.grad.tolist() == [1.5, 3 * lsb]
    assert round_fixed(g_branch + g_identity, 16)[0].tolist() == [1.5, 2 * lsb]    # the float32 sum


@pytest.mark.parametrize("engine", ["sim", "int"])
def test_block_outputs_are_16_bit_and_both_engines_agree(engine):
    """Three EOQ steps of a ResNet-20: every block output has at most 2^15 - 1 LSBs (one grid per
    tensor), and the integer engine ends with the simulator's weights, bit for bit."""
    results = {}
    for eng in ("sim", engine):
        s = setup("resnet20", "fixup", "eoq", seed=0, rounding_seed=0, engine=eng, lr=0.05)
        g = torch.Generator().manual_seed(1)
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 10, (4,), generator=g)
        if eng == "int":
            x = x.contiguous(memory_format=torch.channels_last)
        outs = []
        hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for b in s.model.blocks()]
        for _ in range(3):
            train_step(s.model, s.optimizer, x, y)
        for h in hooks:
            h.remove()
        for o in outs:
            assert o.dtype == torch.float32
            _, e = round_fixed(o, 16)
            codes = o.double() * 2.0 ** -e
            assert torch.equal(codes, codes.round()) and codes.abs().max() <= 2 ** 15 - 1
        results[eng] = {k: v.clone() for k, v in s.model.state_dict().items()}
    assert all(torch.equal(results["sim"][k], results[engine][k]) for k in results["sim"])
    assert math.isfinite(sum(float(v.float().sum()) for v in results["sim"].values()))


@pytest.mark.parametrize("identity_dtype", [torch.float32, torch.float64, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_stream_kernels_equal_the_float64_torch_ops(identity_dtype, channels_last):
    """csrc/stream.cpp against the torch reference: the rounded tail, its ReLU mask, the masked
    gradient and both sums, bit for bit; an identity in the other memory order is handled too."""
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 16, 8, 8, generator=g) * 1000
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    ident = None if identity_dtype is None else (torch.randn(4, 16, 8, 8, generator=g) * 3).to(identity_dtype)
    s, b = torch.tensor([0.8125]), torch.tensor([-0.046875])
    y_k, live_k = exact_tail(x, s, b, ident, 16)
    with kernels.disabled():
        y_t, live_t = exact_tail(x, s, b, ident, 16)
    assert live_k.dtype == torch.uint8 and live_k.numel() == x.numel() // 8      # bits (eoq/nn/mask.py)
    assert torch.equal(y_k, y_t) and torch.equal(mask.bools(live_k, x.shape, x.stride()), live_t)
    assert live_t.any() and not live_t.all()
    from eoq.quant import fusion          # the range the next A quantizer takes instead of a max pass
    assert fusion.known_range(y_k) == (float(y_t.min()), float(y_t.max()))
    assert fusion.known_max(y_k) == float(y_t.abs().max())
    y_k.add_(0)
    assert fusion.known_range(y_k) is None            # written since: the mark no longer counts
    grad = round_fixed(torch.randn(4, 16, 8, 8, generator=g), 16)[0]
    grad = grad.contiguous(memory_format=torch.channels_last) if channels_last else grad
    out_k = masked_exact_sums(grad, live_k, x, x.stride())
    with kernels.disabled():
        out_t = masked_exact_sums(grad, live_t, x, x.stride())
    for a, r in zip(out_k, out_t):
        assert torch.equal(a, r)


@pytest.mark.parametrize("case", ["all_negative", "negative_largest", "signed_zeros", "nan", "inf"])
def test_stream_kernel_max_on_edge_values(case):
    """The kernels' max pass (integer maxima over the bits of the exact values) against the torch
    path: a ReLU tail whose every value is negative (y = 0), a sum whose largest magnitude is
    negative, signed zeros; NaN and Inf give the one error of the torch path."""
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    from eoq.quant.quantizers import QuantizationError
    from eoq.nn import stream
    x = -torch.rand(2, 4, 4, 4, generator=torch.Generator().manual_seed(1)) - 0.5
    if case == "negative_largest":
        x = x + 0.4
        x[1, 2, 3, 0] = -37.25
    if case == "signed_zeros":
        x = torch.where(x < -1.0, torch.tensor(-0.0), torch.tensor(0.0))
    if case in ("nan", "inf"):
        x[0, 1, 2, 3] = float(case)
    s, b = torch.tensor([1.0]), torch.tensor([0.0])
    for relu in (True, False):
        if case in ("nan", "inf"):
            with pytest.raises(QuantizationError, match="NaN or Inf"):
                exact_tail(x, s, b, None, 16, relu=relu)
            with pytest.raises(QuantizationError, match="NaN or Inf"):
                stream.fx_sum(x, x, 16)
            continue
        y_k = exact_tail(x, s, b, None, 16, relu=relu)[0]
        sum_k = stream.fx_sum(x, x * 0.5, 16)
        with kernels.disabled():
            y_t = exact_tail(x, s, b, None, 16, relu=relu)[0]
            sum_t = stream.fx_sum(x, x * 0.5, 16)
        assert torch.equal(y_k, y_t) and torch.equal(y_k.signbit(), y_t.signbit())
        assert torch.equal(sum_k, sum_t) and torch.equal(sum_k.signbit(), sum_t.signbit())
        if case == "all_negative" and relu:
            assert not y_k.any()



@pytest.mark.parametrize("known", [False, True])
def test_fx_sum_masked_equals_fx_sum_then_masked_sums(known):
    """One pass (csrc/stream.cpp fx_sum_masked) == fx_sum, then masked_sums on its result: g, both
    sums (the same ranges and lanes) and max|g|, bit for bit; with max|a + b| given, too."""
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    kern = kernels.load()
    g = torch.Generator().manual_seed(9)
    shape = (64, 16, 16, 16)                      # several ranges of the parallel reduction
    a = (torch.randn(shape, generator=g) * 300).contiguous(memory_format=torch.channels_last)
    b = round_fixed(torch.randn(shape, generator=g) * 50, 16)[0].contiguous(memory_format=torch.channels_last)
    x = (torch.randn(shape, generator=g) * 1e4).contiguous(memory_format=torch.channels_last)
    live = mask.greater(x, 0.0)
    amax = float((a.double() + b.double()).abs().max()) if known else -1.0
    got = kern.fx_sum_masked(a, b, 16, amax, live, x)
    e = kern.fx_sum(a, b, 16)[0]
    ref = kern.masked_sums(e, live, x)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
    assert got[3] == ref[3]



@pytest.mark.parametrize("bias,bits", [(0.0, 8), (0.3125, 8), (-7.5, 8), (1.0, 4), (0.1, 8)])   # 0.1: inexact sums
def test_tail_makes_the_next_layers_codes(bias, bits):
    """exact_tail(ahead=(bias, bits)) marks y with the nearest SQ codes of y + bias: those the A
    quantizer computes from y (its own max pass), bit for bit, exponent included."""
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    from eoq.quant import fusion
    from eoq.quant import quantizers as Q
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(4, 16, 8, 8, generator=g) * 1000).contiguous(memory_format=torch.channels_last)
    ident = round_fixed(torch.randn(4, 16, 8, 8, generator=g) * 3, 16)[0].contiguous(memory_format=torch.channels_last)
    y, _ = exact_tail(x, torch.tensor([0.8125]), torch.tensor([-0.046875]), ident, 16, ahead=(bias, bits))
    codes, lsb = fusion.known_codes(y, bias, bits)
    ref, ref_lsb = Q.sq_integer(y.clone(), bits, "nearest", bias=bias or None)
    assert lsb == ref_lsb and torch.equal(codes.to(torch.int8), ref.to(torch.int8))
    assert codes.stride() == y.stride() and fusion.known_codes(y, bias + 1, bits) is None

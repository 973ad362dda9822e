"""The float32 convolution route of the integer engine against float64 convolutions, bit for bit."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq.engine import float_conv as FC
from eoq.engine import int_gemm
from eoq.engine import intengine as IE

shapes = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 20), st.integers(3, 9),
                   st.sampled_from([(1, 0), (3, 1), (3, 0), (5, 2)]), st.sampled_from([1, 2]))


def _codes(*shape, gen, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


def _case(n, cin, cout, hw, k, p, s, gen, e_hi=127):
    a, w = _codes(n, cin, hw, hw, gen=gen), _codes(cout, cin, k, k, gen=gen)
    ref = F.conv2d(a.double(), w.double(), None, s, p)
    e = _codes(*ref.shape, gen=gen, lo=-e_hi, hi=e_hi)
    gi, gw, _ = torch.ops.aten.convolution_backward(e.double(), a.double(), w.double(), None, [s, s], [p, p],
                                                    [1, 1], False, [0, 0], 1, [True, True, False])
    return a, w, e, ref, gi, gw


def _check(a, w, e, ref, gi_ref, gw_ref, s, p, dtype=torch.int32):
    mats = IE.weight_mats(w)
    cout, cin, k, _ = w.shape
    out = FC.forward(IE.to_nhwc(a), FC.weights_fwd(mats.fwd, mats.shape), s, p)
    assert out.dtype == (torch.float32 if cin * k * k <= int_gemm.F32_CHUNK else torch.int32)
    assert torch.equal(out.permute(0, 3, 1, 2).double(), ref)
    gi = FC.input_grad(IE.to_nhwc(e), FC.weights_bwd(mats.bwd, mats.shape), s, p, tuple(a.shape[2:]))
    assert gi.dtype == (torch.float32 if cout * k * k <= int_gemm.F32_CHUNK else torch.int32)
    assert torch.equal(gi.permute(0, 3, 1, 2).double(), gi_ref)
    gw = FC.weight_grad(IE.to_nhwc(a), IE.to_nhwc(e), tuple(w.shape), s, p, dtype)
    assert gw.dtype == dtype and torch.equal(gw.view(cout, k, k, cin).permute(0, 3, 1, 2).double(), gw_ref)


@settings(max_examples=40, deadline=None)
@given(shapes, st.integers(0, 2 ** 31))
def test_float_convolutions_equal_float64(shape, seed):
    n, cin, cout, hw, (k, p), s = shape
    if hw + 2 * p < k:
        return
    g = torch.Generator().manual_seed(seed)
    a, w, e, ref, gi, gw = _case(n, cin, cout, hw, k, p, s, g)
    _check(a, w, e, ref, gi, gw, s, p)


def test_wide_layers_split_their_channels_where_one_float32_sum_would_round():
    """130 input (and output) channels at 3x3: K = 1170 terms of 127 * 127 reach 18.9 million,
    beyond 2^24, where a float32 sum rounds (one float32 convolution of all channels differs);
    the channel groups of at most 1024 / 9 channels stay exact."""
    a = torch.full((1, 130, 5, 5), 127, dtype=torch.int8)
    a[0, 0, 2, 2] = 2         # an odd total above 2^24 (where the 1170 products of 127^2 sum to an even one)
    w = torch.full((130, 130, 3, 3), 127, dtype=torch.int8)
    ref = F.conv2d(a.double(), w.double(), None, 1, 1)
    assert not torch.equal(F.conv2d(a.float(), w.float(), None, 1, 1).double(), ref)
    e = torch.full(ref.shape, -127, dtype=torch.int8)
    gi, gw, _ = torch.ops.aten.convolution_backward(e.double(), a.double(), w.double(), None, [1, 1], [1, 1],
                                                    [1, 1], False, [0, 0], 1, [True, True, False])
    _check(a, w, e, ref, gi, gw, 1, 1)


def test_weight_gradient_groups_images_within_the_bound():
    """Images are grouped while max|a| * sum |e| per channel stays within 2^24: 32x32 images of
    full-range codes one at a time, small errors many at a time, one image beyond the bound None
    (the engine then takes its GEMMs)."""
    g = torch.Generator().manual_seed(0)
    a = IE.to_nhwc(_codes(6, 3, 32, 32, gen=g))
    full = IE.to_nhwc(_codes(6, 4, 32, 32, gen=g, lo=127, hi=127))
    assert FC.image_groups(a, full) == [slice(i, i + 1) for i in range(6)]
    small = IE.to_nhwc(_codes(6, 4, 32, 32, gen=g, lo=-2, hi=2))
    assert FC.image_groups(a, small) == [slice(0, 6)]
    big_a = IE.to_nhwc(_codes(1, 3, 48, 48, gen=g, lo=127, hi=127))
    big_e = IE.to_nhwc(_codes(1, 4, 48, 48, gen=g, lo=127, hi=127))
    assert FC.image_groups(big_a, big_e) is None
    assert FC.weight_grad(big_a, big_e, (4, 3, 1, 1), 1, 0, torch.int32) is None


def test_weight_gradient_in_int64_across_many_groups():
    """Full-range errors on 32x32 images, one image per group: the groups' integer sums add
    exactly, in the int64 the engine uses beyond SAFE_K pixels."""
    g = torch.Generator().manual_seed(1)
    a, w, e, ref, gi, gw = _case(5, 4, 3, 32, 3, 1, 1, g)
    _check(a, w, e, ref, gi, gw, 1, 1, dtype=torch.int64)


@pytest.mark.parametrize("exact", [True, False])
def test_the_engine_takes_its_gemms_where_the_float_convolution_may_not_be_exact(monkeypatch, exact):
    """With the float32 route the engine's convolutions give the float64 numbers whether PyTorch's
    choice of kernel allows the float32 convolution (it runs) or not (the exact GEMMs run)."""
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("the float32 route's callers need the compiled kernels")
    monkeypatch.setitem(int_gemm._state, "route", int_gemm.Route.FLOAT32)
    monkeypatch.setattr(FC, "runs_exactly", lambda *args, **kw: exact)
    gemms = []
    real = IE.int_mm
    monkeypatch.setattr(IE, "int_mm", lambda *args, **kw: gemms.append(1) or real(*args, **kw))
    g = torch.Generator().manual_seed(2)
    a, w, e, ref, gi_ref, gw_ref = _case(2, 5, 6, 9, 3, 1, 2, g)
    mats = IE.weight_mats(w)
    out = IE.conv_float(IE.to_nhwc(a), mats, 2, 1, -3)
    gi = IE.input_grad_float(IE.to_nhwc(e), mats, 2, 1, (9, 9), 4)
    gw = IE.conv_weight_grad(IE.to_nhwc(a), IE.to_nhwc(e), 3, 3, 2, 1)
    assert torch.equal(out.double(), ref * 2.0 ** -3)
    assert torch.equal(gi.double(), gi_ref * 2.0 ** 4)
    assert torch.equal(gw.view(6, 3, 3, 5).permute(0, 3, 1, 2).double(), gw_ref)
    assert bool(gemms) != exact


@pytest.mark.parametrize("op", ["conv", "matmul"])
def test_reduced_float32_precision_is_not_exact(op):
    """oneDNN's float32 convolutions with bfloat16 allowed (for convolutions, or for matmuls, which
    PyTorch's im2col path runs) are not taken: the engine's exact GEMMs run instead."""
    x = torch.zeros(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(16, 16, 3, 3)
    assert FC.runs_exactly(x, w, 1, 1)
    backend = getattr(torch.backends.mkldnn, op)
    before = backend.fp32_precision
    try:
        backend.fp32_precision = "bf16"
        assert not FC.runs_exactly(x, w, 1, 1)
    finally:
        backend.fp32_precision = before
    assert FC.runs_exactly(x, w, 1, 1)


def test_pytorch_runs_the_engines_convolutions_on_exact_kernels():
    """The shapes of ResNet-20 and ResNet-18 (channels-last float32) go to oneDNN or PyTorch's
    im2col GEMM here, never to NNPACK's Winograd transforms."""
    for cin, cout, hw, k, p, s in [(16, 16, 32, 3, 1, 1), (16, 32, 32, 3, 1, 2), (64, 128, 8, 1, 0, 2),
                                   (256, 512, 4, 3, 1, 1)]:
        x = torch.zeros(128, cin, hw, hw).contiguous(memory_format=torch.channels_last)
        w = torch.zeros(cout, cin, k, k)
        assert FC.runs_exactly(x, w, s, p)
        e = torch.zeros(128, cout, hw // s, hw // s).contiguous(memory_format=torch.channels_last)
        assert FC.runs_exactly(e, w, s, p, transposed=True, output_padding=s - 1)


@pytest.mark.parametrize("exponent", [-9, 0, 3, -140])
def test_scaling_exact_float_sums_in_place_equals_the_int32_dequantization(exponent):
    """scale_exact_ on float32 integers (|v| <= 2^24) writes dequant's floats for the same int32
    values and finds dequant_stats' (sum, min, max); -140: subnormal results, rounded alike."""
    from eoq import kernels
    kern = kernels.load()
    if kern is None:
        pytest.skip("compiled kernels unavailable")
    g = torch.Generator().manual_seed(4)
    acc = torch.randint(-2 ** 24, 2 ** 24 + 1, (2, 6, 5, 8), generator=g, dtype=torch.int32)
    acc[0, 0, 0, :2] = torch.tensor([-2 ** 24, 2 ** 24], dtype=torch.int32)
    want = torch.empty(acc.shape)
    stats = kern.dequant_stats(acc, exponent, want)
    y = acc.float()
    assert kern.scale_exact_(y, exponent, True) == stats
    assert torch.equal(y, want)
    y = acc.float()
    kern.scale_exact_(y, exponent, False)
    assert torch.equal(y, want)

"""The integer engine against float64 references and against the simulator, bit for bit."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq.engine import int_gemm
from eoq.engine import intengine as IE
from eoq.models import build_model
from eoq.nn.layers import FixupScalar, QConv2d, QLinear
from eoq.nn.prepare import grid_params, prepare
from eoq.quant import quantizers as Q
from eoq.quant.presets import get_preset
from eoq.quant.spec import SpecError, TensorQuant
from eoq.training.loop import train_step
from eoq.training.optimizer import EOQSGD

conv_shapes = st.tuples(st.integers(1, 3), st.integers(1, 6), st.integers(1, 7), st.integers(3, 9),
                        st.integers(3, 9), st.sampled_from([(1, 0), (3, 1), (3, 0), (1, 1)]),
                        st.sampled_from([1, 2]))


def codes(*shape, gen, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


@settings(max_examples=60, deadline=None)
@given(conv_shapes, st.integers(0, 2 ** 31))
def test_int_conv_gemms_equal_float64_convolution(shape, seed):
    """forward, input gradient and weight gradient of the im2col/_int_mm convolution == float64."""
    n, cin, cout, h, w, (k, p), s = shape
    if h + 2 * p < k or w + 2 * p < k:
        return
    g = torch.Generator().manual_seed(seed)
    a, wc = codes(n, cin, h, w, gen=g), codes(cout, cin, k, k, gen=g)
    out, cols = IE.conv_forward(IE.to_nhwc(a), wc, s, p)
    ref = F.conv2d(a.double(), wc.double(), None, s, p)
    assert torch.equal(out.permute(0, 3, 1, 2).double(), ref)
    e = codes(*ref.shape, gen=g)
    gi_ref, gw_ref, _ = torch.ops.aten.convolution_backward(
        e.double(), a.double(), wc.double(), None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, False])
    gi = IE.conv_input_grad(IE.to_nhwc(e), wc, s, p, (h, w))
    assert torch.equal(gi.permute(0, 3, 1, 2).double(), gi_ref)
    gw = IE.weight_grad(IE.to_nhwc(e).reshape(-1, cout), cols).view(cout, k, k, cin).permute(0, 3, 1, 2)
    assert torch.equal(gw.double(), gw_ref)


def _strided_case(k, p, s, hw, n, cout, cin=5):
    """(E codes NCHW, weight codes, float64 input gradient) of a random strided conv."""
    g = torch.Generator().manual_seed(k * 100 + s * 10 + p)
    a, wc = codes(n, cin, *hw, gen=g), codes(cout, cin, k, k, gen=g)
    ref = F.conv2d(a.double(), wc.double(), None, s, p)
    e = codes(*ref.shape, gen=g)
    gi_ref = torch.ops.aten.convolution_backward(e.double(), a.double(), wc.double(), None, [s, s], [p, p],
                                                 [1, 1], False, [0, 0], 1, [True, False, False])[0]
    return e, wc, gi_ref


@pytest.mark.parametrize("use_kernels", [True, False])
@pytest.mark.parametrize("k,p,s,hw", [(3, 1, 2, (8, 8)), (3, 1, 2, (7, 9)), (1, 0, 2, (8, 7)), (3, 0, 3, (10, 11)),
                                      (5, 2, 2, (9, 6)), (1, 1, 3, (5, 7))])
def test_strided_input_gradient_phases_equal_float64(use_kernels, k, p, s, hw):
    """The phase-by-phase input gradient of strided convs (C++ and torch im2col; negative padding
    crops) == float64 convolution_backward, including phases that no kernel tap reaches."""
    from eoq import kernels
    e, wc, gi_ref = _strided_case(k, p, s, hw, 2, 4)
    with contextlib.nullcontext() if use_kernels else kernels.disabled():
        gi = IE.conv_input_grad(IE.to_nhwc(e), wc, s, p, hw)
    assert torch.equal(gi.permute(0, 3, 1, 2).double(), gi_ref)


@pytest.fixture
def int8_gemms():
    """The GEMM paths themselves (on CPUs without int8 dot products the engine's float32 route
    would run float32 convolutions instead of them)."""
    with int_gemm.using("int8"):
        yield


@pytest.mark.usefixtures("int8_gemms")
@pytest.mark.parametrize("k,p,s,hw", [(3, 1, 2, (8, 10)), (3, 0, 2, (8, 8)), (5, 2, 2, (6, 8)), (4, 1, 2, (8, 8)),
                                      (3, 1, 3, (9, 12)), (1, 0, 2, (8, 8)), (3, 1, 2, (9, 8))])
@pytest.mark.parametrize("block", [1, 1 << 22])
def test_space_to_depth_input_gradient_equals_float64(monkeypatch, k, p, s, hw, block):
    """The strided conv's input gradient as one space-to-depth GEMM (every phase meets a tap and H, W
    are multiples of the stride; else the phases) == float64 convolution_backward, one image per
    GEMM block or the whole batch; the space-to-depth path ran where it applies."""
    from eoq import kernels
    kern = kernels.load()
    if kern is None:
        pytest.skip("the float input gradient's GEMM paths need the compiled kernels")
    calls = []
    real = IE._input_grad_s2d
    monkeypatch.setattr(IE, "_input_grad_s2d", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(IE, "BLOCK_BYTES", block)
    e, wc, gi_ref = _strided_case(k, p, s, hw, 3, 6)
    gi = IE.input_grad_float(IE.to_nhwc(e), IE.weight_mats(wc), s, p, hw, -4)
    assert torch.equal(gi.double(), gi_ref * 2.0 ** -4)
    expected = k > 1 and hw[0] % s == 0 and hw[1] % s == 0
    assert bool(calls) == expected


@pytest.mark.parametrize("route", ["int8", "float32"])
@pytest.mark.parametrize("k,p,s", [(3, 1, 1), (3, 1, 2), (1, 0, 2), (5, 2, 1)])
def test_blocked_convolutions_equal_float64(monkeypatch, k, p, s, route):
    """The blocked forward, input gradient and weight gradient (a block of images per GEMM, here
    one to three images: BLOCK_BYTES made tiny) == float64 convolution, times 2^exponent; the
    weight gradient keeps the whole-batch GEMM's int32 type. On the float32 route: the float32
    convolutions of eoq.engine.float_conv, the same numbers."""
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("the blocked paths need the compiled kernels")
    monkeypatch.setitem(int_gemm._state, "route", int_gemm.Route(route))
    g = torch.Generator().manual_seed(k * 10 + s)
    n, cin, cout, h, w = 7, 5, 6, 9, 8
    a, wc = codes(n, cin, h, w, gen=g), codes(cout, cin, k, k, gen=g)
    mats = IE.weight_mats(wc)
    ref = F.conv2d(a.double(), wc.double(), None, s, p)
    e = codes(*ref.shape, gen=g)
    gi_ref, gw_ref, _ = torch.ops.aten.convolution_backward(
        e.double(), a.double(), wc.double(), None, [s, s], [p, p], [1, 1], False, [0, 0], 1, [True, True, False])
    for block in (1, 2 * h * w * k * k * cin, 1 << 22, None):  # one image per block, two, the whole batch, no kernels
        monkeypatch.setattr(IE, "BLOCK_BYTES", block or 1 << 22)
        monkeypatch.setattr(IE, "WGRAD_BLOCK_BYTES", block or 1 << 22)
        with kernels.disabled() if block is None else contextlib.nullcontext():
            out = IE.conv_float(IE.to_nhwc(a), mats, s, p, -3, channels_last=block != 1)
            gi = IE.input_grad_float(IE.to_nhwc(e), mats, s, p, (h, w), 5, channels_last=block != 1)
        assert torch.equal(out.double(), ref * 2.0 ** -3)
        assert torch.equal(gi.double(), gi_ref * 2.0 ** 5)
        gw = IE.conv_weight_grad(IE.to_nhwc(a), IE.to_nhwc(e), k, k, s, p)
        assert gw.dtype == torch.int32
        assert torch.equal(gw.view(cout, k, k, cin).permute(0, 3, 1, 2).double(), gw_ref)


def test_overflow_guard_with_adversarial_codes():
    """K = 140,000 products of 127 * 127 (and -127 * 127): raw int32 wraps, the guard stays exact."""
    k = 140_000
    assert k > IE.SAFE_K and 127 * 127 * IE.SAFE_K < 2 ** 31 <= 127 * 127 * (IE.SAFE_K + 1)
    a = torch.full((2, k), 127, dtype=torch.int8)
    a[1] = -127
    b = torch.full((k, 3), 127, dtype=torch.int8)
    exact = a.long() @ b.long()
    assert int(exact.abs().max()) > 2 ** 31                      # the true value does not fit
    assert not torch.equal(torch._int_mm(a, b).long(), exact)    # and _int_mm wraps silently
    assert torch.equal(IE.checked_int_mm(a, b), exact)
    # the weight-gradient path uses it: K = rows of E
    e = torch.full((k, 2), -127, dtype=torch.int8)
    cols = torch.full((k, 4), 127, dtype=torch.int8)
    assert torch.equal(IE.weight_grad(e, cols).long(), e.long().t() @ cols.long())


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(-2 ** 40, 2 ** 40), min_size=1, max_size=40), st.integers(-30, 10),
       st.sampled_from(Q.ROUNDINGS), st.integers(0, 2 ** 31))
def test_sq_on_integers_equals_float_sq(values, exp_in, rounding, seed):
    """SQ evaluated on integers == SQ of the same values in float64 (same generator draws)."""
    acc = torch.tensor(values, dtype=torch.int64)
    got, lsb = IE.sq_from_int(acc, exp_in, 8, rounding, torch.Generator().manual_seed(seed))
    x = acc.double() * 2.0 ** exp_in
    ref, ref_lsb = Q.sq_integer(x, 8, rounding, torch.Generator().manual_seed(seed))
    assert lsb == ref_lsb and torch.equal(got.long(), ref.long())


def pair(layer_fn, seed=5):
    """The same layer (same init, same generator seed) prepared for the simulator and for int."""
    out = []
    for engine in ("sim", "int"):
        torch.manual_seed(seed)
        layer = layer_fn()
        prepare(layer, get_preset("eoq"), torch.Generator().manual_seed(seed + 1), engine=engine)
        out.append(layer)
    return out


@settings(max_examples=30, deadline=None)
@given(conv_shapes, st.integers(0, 2 ** 31))
def test_conv_layer_int_equals_sim(shape, seed):
    n, cin, cout, h, w, (k, p), s = shape
    if h + 2 * p < k or w + 2 * p < k:
        return
    layers = pair(lambda: QConv2d(cin, cout, k, stride=s, padding=p), seed % 1000)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cin, h, w, generator=g)
    results = []
    for layer in layers:
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
        results.append((out.detach(), xi.grad, layer.weight.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("n", [1, 7])
def test_linear_layer_int_equals_sim(n):
    layers = pair(lambda: QLinear(13, 5))
    bias = torch.randn(5)
    for layer in layers:
        with torch.no_grad():
            layer.bias.copy_(Q.fixed_grid(bias, int(layer.bias_exp), 8))
    x = torch.randn(n, 13)
    results = []
    for layer in layers:
        xi = x.clone().requires_grad_()
        out = layer(xi)
        out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(1)))
        results.append((out.detach(), xi.grad, layer.weight.grad, layer.bias.grad))
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("model,channels_last", [("resnet20", False), ("resnet20", True), ("resnet18", True)])
def test_full_training_steps_give_identical_weight_codes(model, channels_last):
    """Two EOQ steps of a whole network (batch 2: the simulator's float GEMMs are exact) give
    identical weights, exponents, momentum and update codes in both engines."""
    runs = []
    for engine in ("sim", "int"):
        torch.manual_seed(0)
        net = build_model(model, "fixup", num_classes=10)
        gen = torch.Generator().manual_seed(1)
        spec = get_preset("eoq")
        prepare(net, spec, gen, engine=engine)
        opt = EOQSGD(net, spec, lr=0.1, momentum=0.875, generator=gen)
        vals = torch.Generator().manual_seed(3)
        with torch.no_grad():      # distinct non-zero Fixup scalars, so that each fusion shows
            for m in net.modules():
                if isinstance(m, FixupScalar):
                    v = torch.randint(-40, 41, (1,), generator=vals) / 64 + (m.mode == "scale")
                    m.value.copy_(Q.fixed_grid(v, int(m.exp), 8))
        data = torch.Generator().manual_seed(2)
        for _ in range(2):
            x = torch.randn(2, 3, 32, 32, generator=data)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (2,), generator=data)
            train_step(net, opt, x, y)
        runs.append((net, opt))
    (a, oa), (b, ob) = runs
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    moved = 0
    for ga, gb in zip(grid_params(a), grid_params(b)):
        assert torch.equal(oa.state[ga.param]["last_update"], ob.state[gb.param]["last_update"]), ga.name
        moved += int(oa.state[ga.param]["last_update"].count_nonzero())
    assert moved > 0


def test_int_engine_rejects_specs_it_cannot_run():
    net = build_model("resnet20", "fixup", num_classes=10)
    with pytest.raises(SpecError, match="engine int"):
        prepare(net, get_preset("wageubn"), engine="int")
    with pytest.raises(SpecError, match="unknown engine"):
        prepare(net, get_preset("eoq"), engine="fpga")


@pytest.mark.parametrize("k", [1, 2, 3, 9])
@pytest.mark.parametrize("transposed", [False, True])
def test_int_mm_small_and_transposed(k, transposed):
    """torch._int_mm is wrong here for K = 1 and for some transposed operands; int_mm is exact."""
    g = torch.Generator().manual_seed(k)
    for m in (1, 3, 17):
        for n in (1, 2, 5, 16):
            a = codes(k, m, gen=g).t() if transposed else codes(m, k, gen=g)
            b = codes(n, k, gen=g).t() if transposed else codes(k, n, gen=g)
            assert torch.equal(IE.int_mm(a, b).long(), a.long() @ b.long()), (m, k, n)
    odd = codes(k, 1, gen=g).as_strided((k, 1), (1, 7))     # "contiguous", odd stride on size 1
    a = codes(3, k, gen=g)
    assert torch.equal(IE.int_mm(a, odd).long(), a.long() @ odd.long())


@settings(max_examples=40, deadline=None)
@given(conv_shapes, st.integers(1, 2), st.integers(0, 2 ** 31), st.sampled_from(Q.ROUNDINGS))
def test_kernels_equal_the_torch_reference(shape, dilation, seed, rounding):
    """The C++ im2col (padding and dilation on the fly) and integer SQ == the torch reference."""
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("kernels not built")
    n, cin, _, h, w, (k, p), s = shape
    g = torch.Generator().manual_seed(seed)
    x = codes(n, h, w, cin, gen=g)
    pad = (p, p + 1, p, p)
    fast = IE.im2col(x, k, k, s, pad, dilation)
    with kernels.disabled():
        slow = IE.im2col(x, k, k, s, pad, dilation)
    assert torch.equal(fast, slow)
    acc = torch.randint(-2 ** 35, 2 ** 35, (3, 50), generator=g)
    a = IE.sq_from_int(acc, -20, 8, rounding, torch.Generator().manual_seed(seed))
    with kernels.disabled():
        b = IE.sq_from_int(acc, -20, 8, rounding, torch.Generator().manual_seed(seed))
    assert a[1] == b[1] and torch.equal(a[0], b[0])
    # the weight operands straight from float weights, and G straight from a conv accumulator
    e_w = int(torch.randint(-12, -4, (1,), generator=g))
    wc = codes(cin + 1, cin, k, k, gen=g)
    fast_m = IE.weight_mats(wc.float() * 2.0 ** e_w, e_w)
    slow_m = IE.weight_mats(wc)
    assert torch.equal(fast_m.fwd, slow_m.fwd) and torch.equal(fast_m.bwd, slow_m.bwd)
    layer = QConv2d(cin, cin + 1, k)
    prepare(layer, get_preset("eoq").with_changes(G=TensorQuant(bits=8, rounding=rounding)), engine="int")
    for dtype, span in ((torch.int32, 2 ** 20), (torch.int64, 2 ** 40)):
        acc = torch.randint(-span, span, (cin + 1, k * k * cin), generator=g, dtype=dtype)
        grads = []
        for disabled in (False, True):
            layer.generator = torch.Generator().manual_seed(seed)
            with kernels.disabled() if disabled else contextlib.nullcontext():
                grads.append(IE._gradient(acc, -30, layer, (cin + 1, cin, k, k)))
        assert torch.equal(*grads)


@pytest.mark.parametrize("shape", [(130, 70, 3, 3), (64, 64, 1, 1), (5, 129, 3, 3), (3, 2, 1, 3)])
def test_weight_mats_kernel_matches_torch_reference(shape):
    """Both GEMM operands from float weights on the grid, against the flip/transpose reference
    (channel counts across several 64 x 64 tiles, 1x1 and non-square kernels)."""
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("kernels not built")
    g = torch.Generator().manual_seed(sum(shape))
    wc = codes(*shape, gen=g)
    fast = IE.weight_mats(wc.float() * 2.0 ** -9, -9)
    slow = IE.weight_mats(wc)
    assert fast.shape == slow.shape == shape
    assert torch.equal(fast.fwd, slow.fwd) and torch.equal(fast.bwd, slow.bwd)


@pytest.mark.parametrize("shape", [(130, 70), (1, 200), (200, 1), (64, 64), (1000, 3)])
def test_transpose_kernel_matches_torch(shape):
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("kernels not built")
    x = codes(*shape, gen=torch.Generator().manual_seed(shape[0]))
    t = IE.transpose(x)
    assert t.shape == shape[::-1] and t.is_contiguous() and torch.equal(t, x.t())
    assert torch.equal(IE.transpose(x.t()), x)          # a non-contiguous input


@pytest.mark.parametrize("c,stride,dilation", [(16, 1, 1), (32, 2, 1), (16, 1, 2), (24, 1, 1)])
def test_large_im2col_and_dequant_kernels_match_torch(c, stride, dilation):
    """Outputs of several MB (many parallel chunks, every padding case), against the torch code."""
    from eoq import kernels
    if kernels.load() is None:
        pytest.skip("kernels not built")
    g = torch.Generator().manual_seed(c + stride)
    x = codes(32, 32, 32, c, gen=g)
    pad = (1, 1 + dilation - 1, 1, 1)
    fast = IE.im2col(x, 3, 3, stride, pad, dilation)
    with kernels.disabled():
        slow = IE.im2col(x, 3, 3, stride, pad, dilation)
    assert torch.equal(fast, slow)
    acc = torch.randint(-2 ** 30, 2 ** 30, (32, 33, 32, c + 1), generator=g, dtype=torch.int32)
    acc[0, 0, 0, :3] = torch.tensor([2 ** 24 + 1, -(2 ** 24) - 3, 0])   # rounded, as float(acc) does
    for cl in (True, False):
        fast = IE._to_float_nchw(acc, -17, cl)
        with kernels.disabled():
            slow = IE._to_float_nchw(acc, -17, cl)
        assert torch.equal(fast, slow) and fast.stride() == slow.stride()


def test_second_backward_through_one_graph_is_a_clear_error():
    layer = pair(lambda: QConv2d(2, 3, 3, padding=1))[1]
    out = layer(torch.randn(1, 2, 5, 5, requires_grad=True)).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        out.backward()


def test_an_error_with_a_known_max_is_quantized_without_the_max_pass():
    """IE._codes takes max|E| from the mark of the kernel that wrote the error (fusion.known_max):
    the true max gives the codes of the max pass, a false one other codes (so the mark is read),
    and a write after the mark drops it."""
    from eoq import kernels
    from eoq.quant import fusion
    if kernels.load() is None:
        pytest.skip("kernels not built")
    layer = QConv2d(4, 4, 3, padding=1)
    prepare(layer, get_preset("eoq"), engine="int")
    err = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(4))

    def codes_of(t):
        return IE._codes(t, layer.quant.E, torch.Generator().manual_seed(0), layer)

    want = codes_of(err)
    same = codes_of(fusion.know_max(err.clone(), float(err.abs().max())))
    assert torch.equal(same[0], want[0]) and same[1] == want[1]
    wrong = codes_of(fusion.know_max(err.clone(), 8 * float(err.abs().max())))
    assert wrong[1] == want[1] + 3
    stale = fusion.know_max(err.clone(), 8 * float(err.abs().max()))
    stale.mul_(1.0)
    assert codes_of(stale)[1] == want[1]



@pytest.mark.parametrize("strided", [False, True])
def test_dequant_stats_equal_the_values_sum_min_and_max(strided):
    """dequant_stats writes what dequant writes, and returns the sum of the values' integers (the
    float32 of each accumulator: rounded above 2^24, as the values are) and the accumulators' ends;
    stats_of turns them into the float32 sum and the values' ends, as sum_f32 and min/max give."""
    from eoq import kernels
    kern = kernels.load()
    if kern is None:
        pytest.skip("compiled kernels unavailable")
    g = torch.Generator().manual_seed(3)
    acc = torch.randint(-2 ** 26, 2 ** 26, (2 * 6 * 4, 8), generator=g, dtype=torch.int32)
    out = torch.empty(2, 12, 8, 8)
    dst = out[:, ::2, ::2] if strided else out[:, :6, :4]
    got = kern.dequant_stats(acc, -9, dst)
    ref = torch.empty_like(dst)
    kern.dequant(acc, -9, out=ref)
    assert torch.equal(dst, ref)
    assert got == (int(acc.float().double().sum()), int(acc.min()), int(acc.max()))
    st = IE.stats_of([got], -9)
    assert torch.equal(st.total, kern.sum_f32(ref.contiguous())) and (st.lo, st.hi) == (float(ref.min()), float(ref.max()))

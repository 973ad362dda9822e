"""The direct VNNI / AMX convolutions (eoq/engine/direct.py, csrc/direct.cpp) against float64 and the simulator."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq.engine import direct
from eoq.engine import intengine as IE
from eoq.nn.layers import QConv2d
from eoq.nn.prepare import prepare
from eoq.quant.presets import get_preset

needs_direct = pytest.mark.skipif(direct.module() is None, reason="no AVX-512 VNNI kernels here")

shapes = st.tuples(st.integers(1, 3), st.sampled_from([3, 4, 16, 20, 32, 64]), st.sampled_from([16, 32, 64]),
                   st.integers(1, 9), st.integers(1, 19), st.sampled_from([(1, 0), (3, 1), (3, 0), (3, 2)]))


def codes(*shape, gen, lo=-127, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


needs_amx = pytest.mark.skipif(direct.module() is None or not direct.use_amx(direct.module()),
                               reason="no AMX tiles here")


def amx_switch(use_amx):
    return contextlib.nullcontext() if use_amx else direct.amx_disabled()


@needs_direct
@pytest.mark.parametrize("use_amx", [False, pytest.param(True, marks=needs_amx)])
@settings(max_examples=60, deadline=None)
@given(shape=shapes, exponent=st.integers(-12, 4), seed=st.integers(0, 2 ** 31))
def test_direct_kernels_equal_float64_convolution(use_amx, shape, exponent, seed):
    """forward, input gradient (rotated kernel) and weight gradient == float64 convolution, on VNNI
    instructions and on AMX tiles."""
    with amx_switch(use_amx):
        _check_against_float64(shape, exponent, seed)


def _check_against_float64(shape, exponent, seed):
    n, cin, cout, h, w, (k, p) = shape
    if h + 2 * p < k or w + 2 * p < k:
        return
    g = torch.Generator().manual_seed(seed)
    kern = direct.module()
    a, wc = codes(n, cin, h, w, gen=g), codes(cout, cin, k, k, gen=g)
    dw = direct.weights(wc)
    out, xu = direct.conv(kern, IE.to_nhwc(a), dw.fwd, dw.fwd_corr, k, k, p, exponent)
    ref = F.conv2d(a.double(), wc.double(), None, 1, p)
    assert torch.equal(out.permute(0, 3, 1, 2).double(), (ref * 2.0 ** exponent).float().double())
    e = codes(*ref.shape, gen=g)
    gi_ref, gw_ref, _ = torch.ops.aten.convolution_backward(
        e.double(), a.double(), wc.double(), None, [1, 1], [p, p], [1, 1], False, [0, 0], 1, [True, True, False])
    gw = direct.weight_grad(kern, xu, IE.to_nhwc(e), k, k, cin)
    assert gw.dtype == torch.int64
    assert torch.equal(gw.view(cout, k, k, cin).permute(0, 3, 1, 2).double(), gw_ref)
    if cin % 16 == 0:
        gi, _ = direct.conv(kern, IE.to_nhwc(e), dw.bwd, dw.bwd_corr, k, k, k - 1 - p, 0)
        assert torch.equal(gi.permute(0, 3, 1, 2).double(), gi_ref)


@needs_direct
@pytest.mark.parametrize("use_amx", [False, pytest.param(True, marks=needs_amx)])
def test_weight_gradient_int32_sums_cannot_overflow(use_amx):
    """71,680 products of 255 * 127 per lane would wrap int32 (2.3e9 > 2^31): the kernel drains its
    int32 sums to int64 in time. Adversarial codes: every input +127 (255 on the unsigned side),
    every error -127. One thread, so that one thread's sums see all 71,680 products."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with amx_switch(use_amx):
            _overflow_case()
    finally:
        torch.set_num_threads(threads)


def _overflow_case():
    kern = direct.module()
    a = torch.full((70, 16, 32, 32), 127, dtype=torch.int8)
    e = torch.full((70, 16, 32, 32), -127, dtype=torch.int8)
    wc = torch.zeros(16, 16, 3, 3, dtype=torch.int8)
    _, xu = direct.conv(kern, IE.to_nhwc(a), *direct.weights(wc)[:2], 3, 3, 1, 0)
    gw = direct.weight_grad(kern, xu, IE.to_nhwc(e), 3, 3, 16)
    _, gw_ref, _ = torch.ops.aten.convolution_backward(
        e.double(), a.double(), wc.double(), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False])
    assert torch.equal(gw.view(16, 3, 3, 16).permute(0, 3, 1, 2).double(), gw_ref)
    assert gw.abs().max() > 2 ** 30                       # the centre tap: 127 * 127 * 71,680


@needs_direct
@pytest.mark.parametrize("shape", [(16, 3, 3, 3), (32, 16, 3, 3), (16, 20, 1, 1), (17, 5, 3, 3), (96, 48, 3, 3)])
def test_pack_kernel_equals_torch_packing(shape):
    w = torch.randint(-127, 128, shape, generator=torch.Generator().manual_seed(3)).float() * 2.0 ** -5
    kern = direct.module()
    for a, b in zip(direct.weights((w * 32).round().to(torch.int8)), direct.grid_weights(kern, w, -5)):
        assert torch.equal(a, b)


@needs_direct
def test_padded_input_holds_codes_plus_128():
    x = codes(2, 3, 4, 5, gen=torch.Generator().manual_seed(0))          # NHWC, 5 channels
    xu = direct.pad_input(direct.module(), x, 2)
    ref = F.pad(x.to(torch.int16) + 128, (0, 0, 2, 2, 2, 2), value=128)
    ref = torch.cat([ref, torch.full((2, 7, 8, 3), 128, dtype=torch.int16)], dim=3)   # 5 -> 8 channels
    assert xu.dtype == torch.uint8 and torch.equal(xu.to(torch.int16), ref)


def _layer(cin, cout, k, p, s, engine, seed):
    torch.manual_seed(seed)
    layer = QConv2d(cin, cout, k, stride=s, padding=p)
    prepare(layer, get_preset("eoq"), torch.Generator().manual_seed(seed + 1), engine=engine)
    return layer


def _run(layer, x, seed, input_grad=True):
    xi = x.clone().requires_grad_(input_grad)
    out = layer(xi)
    out.backward(torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)))
    return out.detach(), xi.grad, layer.weight.grad


@needs_direct
@pytest.mark.parametrize("cin,cout,k,p,input_grad", [(16, 16, 3, 1, True), (3, 16, 3, 1, False), (16, 32, 3, 1, True),
                                                     (32, 32, 3, 0, True), (20, 16, 1, 0, False)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("use_amx", [False, pytest.param(True, marks=needs_amx)])
def test_direct_layer_equals_simulator_and_gemm_path(cin, cout, k, p, input_grad, channels_last, use_amx, monkeypatch):
    """A conv layer on the direct kernels gives the simulator's output and gradients bit for bit,
    and the im2col path's (direct.disabled()); the direct kernels really ran."""
    calls = []
    for name in ("conv", "conv_range"):       # the input gradient's, the forward's (its output's range)
        real = getattr(direct, name)
        monkeypatch.setattr(direct, name, lambda *a, _r=real: calls.append(1) or _r(*a))
    x = torch.randn(3, cin, 9, 10, generator=torch.Generator().manual_seed(7))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with amx_switch(use_amx):
        results = [_run(_layer(cin, cout, k, p, 1, "sim", 4), x, 8, input_grad),
                   _run(_layer(cin, cout, k, p, 1, "int", 4), x, 8, input_grad)]
    assert len(calls) == (2 if input_grad else 1)
    with direct.disabled():
        results.append(_run(_layer(cin, cout, k, p, 1, "int", 4), x, 8, input_grad))
    assert len(calls) == (2 if input_grad else 1)
    for ref in results[1:]:
        for a, b in zip(results[0], ref):
            assert (a is None and b is None) or torch.equal(a, b)


@needs_amx
@pytest.mark.parametrize("cin,cout", [(32, 80), (128, 128), (64, 256)])
def test_wide_layer_on_amx_tiles(cin, cout, monkeypatch):
    """Wider than 64 channels, AMX tiles run the forward and the input gradient, and the weight
    gradient up to AMX_WGRAD_MAX_CHANNELS (above, the GEMM path, from the saved unpadded codes): the
    simulator's results and the GEMM-only path's, bit for bit; each kernel really ran."""
    calls = []
    for mod, name in ((direct, "conv"), (direct, "conv_range"), (direct, "weight_grad"), (IE, "conv_weight_grad")):
        real = getattr(mod, name)
        monkeypatch.setattr(mod, name, lambda *a, _r=real, _n=name.replace("_range", ""): calls.append(_n) or _r(*a))
    x = torch.randn(2, cin, 6, 7, generator=torch.Generator().manual_seed(7))
    results = [_run(_layer(cin, cout, 3, 1, 1, "sim", 4), x, 8), _run(_layer(cin, cout, 3, 1, 1, "int", 4), x, 8)]
    wgrad = "weight_grad" if cout <= direct.AMX_WGRAD_MAX_CHANNELS else "conv_weight_grad"
    assert sorted(calls) == sorted(["conv", "conv", wgrad])
    with direct.disabled():
        results.append(_run(_layer(cin, cout, 3, 1, 1, "int", 4), x, 8))
    for ref in results[1:]:
        for a, b in zip(results[0], ref):
            assert torch.equal(a, b)


@needs_direct
@pytest.mark.parametrize("cin,cout,k,p,s,input_grad,expected", [
    (16, 16, 3, 1, 1, True, True), (16, 16, 3, 1, 2, True, False), (16, 8, 3, 1, 1, True, False),
    (3, 16, 3, 1, 1, True, False), (3, 16, 3, 1, 1, False, True), (16, 16, 3, 3, 1, True, False)])
def test_eligibility(cin, cout, k, p, s, input_grad, expected):
    """Direct only for stride 1, output channels in steps of 16 (16-64 on VNNI, 16-256 on AMX with
    the weight gradient on the direct kernels up to 128), padding < kernel, and input channels a
    multiple of 16 unless no input gradient is needed."""
    layer = torch.nn.Conv2d(cin, cout, k, stride=s, padding=p)
    assert direct.route(layer, input_grad).conv is expected
    wide, wider = torch.nn.Conv2d(16, 64, 3, padding=1), torch.nn.Conv2d(16, 80, 3, padding=1)
    widest = torch.nn.Conv2d(16, direct.AMX_MAX_CHANNELS, 3, padding=1)
    too_wide = torch.nn.Conv2d(16, direct.AMX_MAX_CHANNELS + 16, 3, padding=1)
    assert direct.route(wide, True) == (True, True)
    assert direct.route(too_wide, True) == (False, False)
    if direct.use_amx(direct.module()):
        assert direct.route(wider, True) == (True, True) and direct.route(widest, True) == (True, False)
    with direct.amx_disabled():
        assert direct.route(wide, True).conv and not direct.route(wider, True).conv
        # on VNNI a layer wider than 32 channels needs WIDE_MIN_PIXELS input pixels (its packing)
        few = direct.WIDE_MIN_PIXELS - 1
        assert not direct.route(wide, True, few).conv and direct.route(wide, True, few + 1).conv
        assert direct.route(torch.nn.Conv2d(16, 32, 3, padding=1), True, 1).conv
    if direct.use_amx(direct.module()):
        assert direct.route(wide, True, 1).conv
    with direct.disabled():
        assert direct.route(layer, input_grad) == direct.GEMM



def _store_case(seed, n, h, w, cin, cout, k):
    """(generator, kernels, NHWC input codes, packed weights) of a random direct conv."""
    g = torch.Generator().manual_seed(seed)
    a, wc = codes(n, h, w, cin, gen=g), codes(cout, cin, k, k, gen=g)
    return g, direct.module(), a, direct.weights(wc)


@needs_direct
@pytest.mark.parametrize("use_amx", [False, pytest.param(True, marks=needs_amx)])
@pytest.mark.parametrize("n,h,w,cin,cout,k,p", [(3, 8, 8, 16, 16, 3, 1), (2, 5, 7, 32, 48, 3, 1),
                                                (4, 4, 4, 64, 32, 3, 1), (2, 9, 3, 16, 16, 1, 0)])
def test_masked_conv_equals_conv_then_masked_sums(use_amx, n, h, w, cin, cout, k, p):
    """The input gradient with the ReLU backward in its store (direct.conv_masked) == the plain conv,
    then the masked_grad_sums pass it replaces: the masked values, both sums and max|g|, bit for
    bit, also where AMX blocks overlap (Ho * Wp not a multiple of 16)."""
    from eoq.nn import mask
    g, kern, a, dw = _store_case(h * 100 + cout, n, h, w, cin, cout, k)
    with amx_switch(use_amx):
        out, _ = direct.conv(kern, a, dw.fwd, dw.fwd_corr, k, k, p, -7)
        x = torch.randn(out.shape, generator=g).permute(0, 3, 1, 2)      # NCHW view of channels-last memory
        live = mask.greater(x, 0.3)
        got = direct.conv_masked(kern, a, dw.fwd, dw.fwd_corr, k, k, p, -7, live)
    ref = kern.masked_grad_sums(out.permute(0, 3, 1, 2), live)
    assert torch.equal(got[0].permute(0, 3, 1, 2), ref[0])
    assert torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2]) and got[3] == ref[3]
    assert 0 < int(live.count_nonzero())
    assert not torch.equal(got[0], out)           # the mask removed something


@needs_direct
@pytest.mark.parametrize("model", ["resnet20", "resnet18"])
def test_backward_in_the_conv_store_changes_no_bit(model, monkeypatch):
    """The Fixup branch's ReLU backward, the first bias's gradient sum and the block's error-sum
    max taken in the next conv's input-gradient store (fusion.offer_backward, fusion.ErrorSum), the
    block tail's max pass in the last conv's forward store (fusion.offer_tail), the tail's backward
    in the stream's rounding, the next block's A codes in the tail's pass (fusion.know_codes) and
    the padded input written by the quantizer ran, and every weight, scalar and optimizer state
    equals that of the separate passes."""
    from eoq.models import build_model
    from eoq.quant import fusion
    from eoq.training.loop import train_step
    from eoq.training.optimizer import EOQSGD
    grads, calls = [], []
    expect = {"conv_masked", "conv_sum", "error sum", "tail", "tail bwd", "codes", "gemm stats", "padded"}
    from eoq.quant import quantizers as Q
    padded = Q.sq_integer_padded       # the quantizer writing the direct kernels' padded input
    monkeypatch.setattr(Q, "sq_integer_padded", lambda *a, **k: (lambda r: calls.append("padded" if r else "none") or r)(padded(*a, **k)))
    for name in ("conv_masked", "conv_sum"):
        real = getattr(direct, name)
        monkeypatch.setattr(direct, name, lambda *a, _r=real, _n=name: calls.append(_n) or _r(*a))
    from eoq.nn import stream
    fused = stream._fx_sum_masked      # the tail's backward in the stream's rounding of its error
    monkeypatch.setattr(stream, "_fx_sum_masked", lambda *a: (lambda r: calls.append("tail bwd" if r is not None else "none") or r)(fused(*a)))
    ahead = fusion.known_codes         # the next block's first A codes, made in the tail's pass
    monkeypatch.setattr(fusion, "known_codes", lambda *a: (lambda r: calls.append("codes" if r else "none") or r)(ahead(*a)))
    known = fusion.known_tail          # the block tail's max pass, found by the last conv's store
    monkeypatch.setattr(fusion, "known_tail", lambda *a: (lambda r: calls.append("tail" if r else "none") or r)(known(*a)))
    from eoq.engine import intengine
    stats = intengine.stats_of         # the GEMM paths' dequantization: a bias's sum, a forward's range
    monkeypatch.setattr(intengine, "stats_of", lambda *a: calls.append("gemm stats") or stats(*a))
    take = fusion.ErrorSum.take        # the error sum's max, found by the first conv's store
    monkeypatch.setattr(fusion.ErrorSum, "take",
                        lambda self, *a: (lambda r: calls.append("error sum" if r is not None else "none") or r)(take(self, *a)))
    for offered in (True, False):
        if not offered:
            monkeypatch.setattr(fusion, "backward_offered", lambda t, layer: None)
            monkeypatch.setattr(fusion, "tail_offered", lambda t, layer: None)
            from eoq.models.blocks import ResidualBlock
            monkeypatch.setattr(ResidualBlock, "ahead_of", lambda self: None)
            monkeypatch.setattr(fusion, "known_range", lambda t: None)      # every A quantizer's max pass
            from eoq.quant import quantizers as Q
            monkeypatch.setattr(Q, "sq_integer_padded", lambda *a, **k: None)  # codes, then pad_u8
        torch.manual_seed(0)
        net = build_model(model, "fixup", num_classes=10)
        gen = torch.Generator().manual_seed(1)
        spec = get_preset("eoq")
        prepare(net, spec, gen, engine="int")
        opt = EOQSGD(net, spec, lr=0.1, momentum=0.875, generator=gen)
        with torch.no_grad():
            for name, prm in net.named_parameters():
                if prm.numel() == 1:            # non-zero Fixup biases: the ReLU masks something
                    prm.fill_(0.25 if "scale" not in name else 1.0)
        data = torch.Generator().manual_seed(2)
        x = torch.randn(4, 3, 32, 32, generator=data).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (4,), generator=data)
        opt.zero_grad()
        train_step(net, opt, x, y)
        grads.append({n: p.clone() for n, p in net.state_dict().items()})
        if offered:
            assert expect <= set(calls), f"not fused: {expect - set(calls)}"
            n_calls = len(calls)
    assert not {"error sum", "tail", "tail bwd", "codes", "padded"} & set(calls[n_calls:])   # off: every pass ran
    assert calls[n_calls:].count("gemm stats") < calls[:n_calls].count("gemm stats")   # (forward ranges remain)
    assert sum(c.startswith("conv") for c in calls[n_calls:]) == 0
    for name in grads[0]:
        assert torch.equal(grads[0][name], grads[1][name]), name


@needs_direct
@pytest.mark.parametrize("use_amx", [False, pytest.param(True, marks=needs_amx)])
@pytest.mark.parametrize("n,h,w,cin,cout,k,p", [(3, 8, 8, 16, 16, 3, 1), (2, 5, 7, 32, 48, 3, 1), (1, 1, 1, 16, 16, 3, 1)])
def test_conv_store_finds_the_output_range(use_amx, n, h, w, cin, cout, k, p):
    """The forward's store finds the output's smallest and largest value (direct.conv_range): the
    conv's own output and its torch min and max, bit for bit (AMX blocks overlap at 5x7); with a
    block tail's identity, s and b, also the ends and max|.| of out * s + b + identity in double."""
    g, kern, a, dw = _store_case(h * 10 + cout, n, h, w, cin, cout, k)
    with amx_switch(use_amx):
        out, _ = direct.conv(kern, a, dw.fwd, dw.fwd_corr, k, k, p, -9)
        got, _, lo, hi, none = direct.conv_range(kern, a, dw.fwd, dw.fwd_corr, k, k, p, -9)
        ident = torch.randn(out.shape, generator=g) * 50
        got2, _, lo2, hi2, ends = direct.conv_range(kern, a, dw.fwd, dw.fwd_corr, k, k, p, -9, (ident, 0.8125, -0.375))
    assert torch.equal(got, out) and torch.equal(got2, out) and none is None
    assert (lo, hi) == (lo2, hi2) == (float(out.min()), float(out.max())) and lo < 0 < hi
    t = out.double() * 0.8125 + -0.375 + ident.double()          # the block tail's value, exact in double
    assert ends == (float(t.min()), float(t.max()), float(t.abs().max()))


@needs_direct
@pytest.mark.parametrize("use_amx", [False, pytest.param(True, marks=needs_amx)])
def test_conv_store_sums_the_output(use_amx):
    """direct.conv_sum: the conv's output and its sum as sum_f32 forms it, bit for bit (5x7: AMX blocks
    overlap and must not count a value twice); with an addend, max|out + addend| in double as
    fx_sum's max pass finds it (+inf for a NaN)."""
    g = torch.Generator().manual_seed(11)
    kern = direct.module()
    a, wc = codes(2, 5, 7, 32, gen=g), codes(48, 32, 3, 3, gen=g)
    dw = direct.weights(wc)
    with amx_switch(use_amx):
        out, _ = direct.conv(kern, a, dw.fwd, dw.fwd_corr, 3, 3, 1, -6)
        got, s, none = direct.conv_sum(kern, a, dw.fwd, dw.fwd_corr, 3, 3, 1, -6)
        addend = torch.randn(out.shape, generator=g) * 1000
        got2, s2, amax = direct.conv_sum(kern, a, dw.fwd, dw.fwd_corr, 3, 3, 1, -6, addend)
    assert torch.equal(got, out) and torch.equal(s, kern.sum_f32(out)) and none == -1.0
    assert float(s) == float(out.double().sum())
    assert torch.equal(got2, out) and torch.equal(s2, s)
    assert amax == float((out.double() + addend.double()).abs().max())      # fx_sum's max pass, in double
    addend[1, 2, 3, 4] = float("nan")
    assert direct.conv_sum(kern, a, dw.fwd, dw.fwd_corr, 3, 3, 1, -6, addend)[2] == float("inf")


@needs_direct
@pytest.mark.parametrize("c,pad", [(16, 1), (3, 1), (32, 0), (20, 2)])
@pytest.mark.parametrize("affine", [{}, {"bias": 0.3125}, {"bias": 0.25, "relu_pre": -0.5}])
def test_quantizer_writes_the_padded_input(c, pad, affine):
    """Q.sq_integer_padded == the direct kernels' padding (pad_u8) of sq_integer's nearest codes: the
    same bytes (code + 128, 128 in the border and the extra channels) and exponent, with a known
    range too."""
    from eoq.quant import quantizers as Q
    g = torch.Generator().manual_seed(c * 10 + pad)
    x = (torch.randn(3, c, 5, 7, generator=g) * 3).contiguous(memory_format=torch.channels_last)
    kern = direct.module()
    cp = direct.channels_padded(c)
    codes, lsb = Q.sq_integer(x, 8, "nearest", **affine)
    ref = direct.pad_input(kern, IE.to_nhwc(codes.to(torch.int8)), pad)
    for known in ({}, {"arange": (float(x.min()), float(x.max()))}):
        xu, lsb2 = Q.sq_integer_padded(x, 8, pad, cp, **affine, **known)
        assert lsb2 == lsb and torch.equal(xu, ref)

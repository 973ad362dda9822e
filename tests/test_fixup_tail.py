"""The fused Fixup block tail relu(x * s + b + identity): kernel vs torch's float32 ops on values
where every rounding matters, and its backward vs autograd of the separate ops."""
import pytest
import torch

from eoq import kernels
from eoq.nn.fixup_tail import _FixupTailFn, _tail
from eoq.nn.layers import QConv2d
from eoq.nn.prepare import prepare
from eoq.quant import quantizers as Q
from eoq.quant.presets import get_preset
from eoq.quant.spec import TensorQuant


def floats(shape, seed, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g))   # wide range
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@pytest.mark.parametrize("shape", [(4, 16, 9, 9), (1, 3, 1, 5), (2, 64, 8, 8)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_kernel_equals_torch_ops(shape, channels_last):
    if kernels.load() is None:
        pytest.skip("kernels not built")
    x, identity = floats(shape, 1, channels_last), floats(shape, 2, channels_last)
    s, b = torch.tensor([0.8134765625 + 1e-5]), torch.tensor([-0.3017])   # not dyadic: rounding shows
    x[0, 0, 0, :3] = torch.tensor([float("nan"), -0.0, 1e-38])[:shape[3]]
    y = _tail(x, s, b, identity)
    ref = torch.relu(x * s + b + identity)
    assert y.stride() == ref.stride()
    assert torch.equal(y.nan_to_num(7.0), ref.nan_to_num(7.0)) and y.isnan().sum() == ref.isnan().sum() == 1
    # a reassociated sum differs on these values, so the comparison above can fail
    assert not torch.equal(torch.relu(x * s + (b + identity)).nan_to_num(7.0), ref.nan_to_num(7.0))


def test_mixed_layouts_take_the_torch_path():
    x, identity = floats((2, 8, 5, 5), 3), floats((2, 8, 5, 5), 4, channels_last=True)
    s, b = torch.tensor([1.1]), torch.tensor([0.01])
    assert torch.equal(_tail(x, s, b, identity), torch.relu(x * s + b + identity))


@pytest.mark.parametrize("engine", ["sim", "int"])
@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_backward_equals_autograd_of_the_separate_ops(engine, rounding):
    layer = QConv2d(8, 8, 3, padding=1)
    spec = get_preset("eoq").with_changes(E=TensorQuant(bits=8, rounding=rounding))
    prepare(layer, spec, torch.Generator().manual_seed(0), engine=engine)
    x, identity = floats((2, 8, 6, 6), 5), floats((2, 8, 6, 6), 6)
    grad = floats((2, 8, 6, 6), 7)
    s, b = torch.tensor([0.9]), torch.tensor([0.05])
    ins = [t.clone().requires_grad_() for t in (x, s, b, identity)]
    layer.generator = torch.Generator().manual_seed(9)
    _FixupTailFn.apply(*ins, layer, None, None, None).backward(grad)
    ref = [t.clone().requires_grad_() for t in (x, s, b, identity)]
    torch.relu(ref[0] * ref[1] + ref[2] + ref[3]).backward(grad)
    for a, r in zip(ins[1:], ref[1:]):                          # d s, d b, d identity
        assert torch.equal(a.grad, r.grad)
    gx = ins[0].grad
    gen = torch.Generator().manual_seed(9)
    g = torch.ops.aten.threshold_backward(grad, torch.relu(x * s + b + identity), 0)
    if engine == "sim":      # E(grad * s), quantized by the tail for the conv
        assert torch.equal(gx, Q.sq(ref[0].grad, 8, rounding, gen))
    else:                    # left to the integer conv's E quantizer, which multiplies on the fly
        assert torch.equal(gx, g) and torch.equal(g * s, ref[0].grad)


@pytest.mark.parametrize("engine", ["sim", "int"])
def test_exact_tail_equals_float64_autograd_of_the_separate_ops(engine):
    """With a fixed-point stream (spec stream_bits) the tail is exact: its output is the float64
    ops' result rounded once to the 16-bit stream, the scalar gradients are float64 sums rounded
    once, E(g * s) the rounding of the exact product. The float32 ops round these values (checked),
    so the comparison can fail."""
    layer = QConv2d(8, 8, 3, padding=1)
    prepare(layer, get_preset("eoq"), torch.Generator().manual_seed(0), engine=engine)
    x, identity = floats((2, 8, 6, 6), 5), floats((2, 8, 6, 6), 6)
    grad = floats((2, 8, 6, 6), 7).double()
    s, b = torch.tensor([0.8125]), torch.tensor([0.046875])
    ins = [t.clone().requires_grad_() for t in (x, s, b, identity)]
    layer.generator = torch.Generator().manual_seed(9)
    y = _FixupTailFn.apply(*ins, layer, 16, None, None)
    ref = [t.clone().double().requires_grad_() for t in (x, s, b, identity)]
    y_ref = torch.relu(ref[0] * ref[1] + ref[2] + ref[3])
    assert not torch.equal(torch.relu(x * s + b + identity).double(), y_ref)   # float32 rounds
    assert y.dtype == torch.float32 and torch.equal(y, Q.round_fixed(y_ref, 16)[0])
    assert Q.round_fixed(y_ref, 16)[0].unique().numel() > 200      # not a degenerate case
    grad = Q.round_fixed(grad, 16)[0]                           # the error stream arrives rounded
    y.backward(grad)
    y_ref.backward(grad.double())
    for a, r in zip(ins[1:], ref[1:]):                          # d s, d b, d identity
        assert torch.equal(a.grad, r.grad.float())
    g = torch.ops.aten.threshold_backward(grad.double(), y_ref, 0)
    if engine == "sim":
        assert torch.equal(ins[0].grad, Q.sq(g * 0.8125, 8, "stochastic", torch.Generator().manual_seed(9)).float())
    else:
        assert torch.equal(ins[0].grad, g.float())


def test_masked_sums_of_an_error_in_the_other_memory_order():
    """The tail's backward with the error NCHW and x channels-last (the pooling head's error reaches
    the last block so): the kernel on a copy in x's order, the same g, sums and max as the torch ops."""
    from eoq import kernels
    from eoq.nn import mask
    from eoq.nn.fixup_tail import masked_exact_sums
    from eoq.quant import fusion
    from eoq.quant.quantizers import round_fixed
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable")
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(4, 16, 4, 4, generator=g) * 100).contiguous(memory_format=torch.channels_last)
    live = mask.greater(x, 0.0)
    grad = round_fixed(torch.randn(4, 16, 4, 4, generator=g), 16)[0]          # NCHW
    got = masked_exact_sums(grad, live, x, x.stride())
    bools = mask.bools(live, x.shape, x.stride())
    with kernels.disabled():
        ref = masked_exact_sums(grad, bools, x, x.stride())
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1]) and torch.equal(got[2], ref[2])
    assert got[0].stride() == x.stride() and fusion.known_max(got[0]) == float(ref[0].abs().max())

"""Quantized layers against PyTorch's own autograd on the quantized tensors (same random bits)."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from eoq.nn.batchnorm import QBatchNorm2d
from eoq.nn.layers import FixupScalar, QConv2d, QLinear
from eoq.quant import quantizers as Q
from eoq.quant.spec import LayerQuant, TensorQuant

Q8N = TensorQuant(bits=8)
Q8S = TensorQuant(bits=8, rounding="stochastic")


def quantized(layer, seed=3, **kinds):
    layer.quant = LayerQuant(**kinds)
    layer.generator = torch.Generator().manual_seed(seed)
    return layer


@pytest.mark.parametrize("stride,padding,k", [(1, 1, 3), (2, 1, 3), (1, 0, 1), (2, 0, 1)])
def test_qconv_forward_and_backward_match_reference(stride, padding, k):
    torch.manual_seed(0)
    conv = quantized(QConv2d(5, 7, k, stride=stride, padding=padding), W=Q8N, A=Q8N, E=Q8S, G=Q8S)
    x = torch.randn(3, 5, 9, 9, requires_grad=True)
    out = conv(x)
    go = torch.randn_like(out)
    out.backward(go)

    # reference: float autograd on SQ-quantized inputs, E and G quantized with the same bits
    gen = torch.Generator().manual_seed(3)
    xq = Q.sq(x.detach(), 8).requires_grad_()
    wq = Q.sq(conv.weight.detach(), 8).requires_grad_()
    ref = F.conv2d(xq, wq, None, stride, padding)
    assert torch.equal(out.detach(), ref.detach())
    e = Q.sq(go, 8, "stochastic", gen)
    ref.backward(e)
    assert torch.allclose(x.grad, xq.grad, rtol=0, atol=1e-6)
    g = Q.sq(wq.grad, 8, "stochastic", gen)
    assert torch.equal(conv.weight.grad, g)


def test_qlinear_matches_reference():
    torch.manual_seed(1)
    fc = quantized(QLinear(6, 4), W=Q8N, A=Q8N, E=Q8S, G=Q8S)
    x = torch.randn(5, 6, requires_grad=True)
    out = fc(x)
    go = torch.randn_like(out)
    out.backward(go)
    gen = torch.Generator().manual_seed(3)
    xq, wq = Q.sq(x.detach(), 8), Q.sq(fc.weight.detach(), 8)
    assert torch.allclose(out, xq @ wq.t() + fc.bias, atol=1e-6)
    e = Q.sq(go, 8, "stochastic", gen)
    assert torch.allclose(x.grad, e @ wq, atol=1e-6)
    assert torch.equal(fc.weight.grad, Q.sq(e.t() @ xq, 8, "stochastic", gen))
    assert torch.allclose(fc.bias.grad, e.sum(0))


def test_float_spec_is_plain_pytorch():
    torch.manual_seed(2)
    conv = QConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    assert torch.equal(conv(x), F.conv2d(x, conv.weight, None, 1, 1))


def test_error_quantization_is_unbiased_on_average():
    """With stochastic E, the mean of many backward passes approaches the float gradient."""
    torch.manual_seed(4)
    conv = quantized(QConv2d(2, 2, 3, padding=1), seed=11, E=Q8S)
    x = torch.randn(1, 2, 6, 6)
    go = torch.randn(1, 2, 6, 6) * torch.rand(1, 2, 6, 6) ** 4   # heavy-tailed errors
    wgrad = torch.zeros_like(conv.weight)
    n = 2000
    for _ in range(n):
        conv.weight.grad = None
        conv(x).backward(go)
        wgrad += conv.weight.grad
    x_ = x.clone()
    w_ = conv.weight.detach().clone().requires_grad_()
    F.conv2d(x_, w_, None, 1, 1).backward(go)
    err = (wgrad / n - w_.grad).abs().max()
    assert err < 0.02 * w_.grad.abs().max()


def test_scalar_modes_and_fake_quant():
    b, s = FixupScalar("bias"), FixupScalar("scale")
    x = torch.ones(3)
    with torch.no_grad():
        b.value.fill_(0.3)
    assert torch.allclose(b(x), x + 0.3) and torch.equal(s(x), x)
    b.quant = TensorQuant(bits=4)
    assert torch.equal(b(x), x + Q.sq(torch.tensor([0.3]), 4))
    with pytest.raises(ValueError):
        FixupScalar("shift")


def test_qbatchnorm_without_bits_is_batchnorm():
    torch.manual_seed(5)
    x = torch.randn(8, 4, 5, 5)
    ours, ref = QBatchNorm2d(4), torch.nn.BatchNorm2d(4)
    assert torch.allclose(ours(x), ref(x))
    ours.stat_bits, ours.value_bits, ours.affine_bits = 16, 8, 8
    y = ours(x)
    mean, std = x.mean((0, 2, 3)), (x.var((0, 2, 3), unbiased=False) + 1e-5).sqrt()
    xhat = Q.sq((x - Q.sq(mean, 16)[None, :, None, None]) / Q.sq(std, 16)[None, :, None, None], 8)
    gamma = Q.sq(torch.ones(4), 8)            # SQ clips 1.0 to 127/128
    assert gamma[0].item() == 127 / 128
    assert torch.allclose(y, xhat * gamma[None, :, None, None], atol=1e-6)
    # running statistics follow nn.BatchNorm2d's update (two training forwards so far in each)
    ref(x)
    assert torch.allclose(ours.running_mean, ref.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, ref.running_var, atol=1e-6)


class _NullObserver:
    def after(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_fused_bias_input_quantization_equals_the_plain_path(rounding):
    """Fixup bias + A quantization fused (one pass), and bias + ReLU + bias + A inside a branch,
    == the separate ops, then A (taken while an observer is attached): outputs, input gradients
    and every parameter gradient, bit for bit."""
    from eoq.models import build_model
    from eoq.nn.prepare import prepare
    from eoq.quant.observe import observing
    from eoq.quant.presets import get_preset

    spec = get_preset("eoq").with_changes(A=TensorQuant(bits=8, rounding=rounding))

    def run(observe):
        torch.manual_seed(0)
        model = build_model("resnet20", "fixup", num_classes=10)
        prepare(model, spec, torch.Generator().manual_seed(3))
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():   # Fixup's zero-initialised layers would make most gradients zero
            for m in model.modules():
                if isinstance(m, FixupScalar):    # distinct values: a swapped bias would show
                    k = int(torch.randint(-8, 9, (1,), generator=g))
                    m.value.fill_(k / 64 if m.mode == "bias" else 1.0 + k / 16)
                elif isinstance(m, (QConv2d, QLinear)):
                    w = torch.randn(m.weight.shape, generator=g) * 2.0 ** (float(m.weight_exp) + 5)
                    m.weight.copy_(Q.fixed_grid(w, int(m.weight_exp), 8))
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(4), requires_grad=True)
        ctx = observing(_NullObserver()) if observe else contextlib.nullcontext()
        with ctx:
            out = model(x)
            out.square().sum().backward()
        return out, x.grad, [p.grad for p in model.parameters()]

    fused, plain = run(False), run(True)
    assert torch.equal(fused[0], plain[0]) and torch.equal(fused[1], plain[1])
    assert all(torch.equal(a, b) for a, b in zip(fused[2], plain[2]))
    assert all(float(p.abs().sum()) > 0 for p in fused[2])          # every gradient is exercised

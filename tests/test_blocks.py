"""The option-A shortcut inside the fixed-point stream (eoq/models/blocks.py, _ExactShortcutAFn):
its one-pass kernels (csrc/shortcut.cpp) against the torch ops it replaces, bit for bit."""
import pytest
import torch

from eoq import kernels
from eoq.models.blocks import _ExactShortcutAFn
from eoq.quant.quantizers import round_fixed


def _run(x, b, stride, pad, grad):
    x = x.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    y = _ExactShortcutAFn.apply(x, b, stride, pad)
    y.backward(grad)
    return y.detach(), x.grad, b.grad


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("hw", [(8, 8), (7, 9)])
def test_kernel_equals_the_torch_ops(stride, channels_last, hw):
    """y = pad(x[:, :, ::s, ::s] + b) in float64 and its backward (x's error scattered to every
    s-th pixel in x's layout, b's error summed exactly) against the torch reference, on stream
    values (16-bit fixed point) and odd sizes; the layouts of y and x's error as the reference's."""
    if kernels.load() is None:
        pytest.skip("the compiled kernels are unavailable here")
    g = torch.Generator().manual_seed(3)
    x = round_fixed(torch.randn(3, 5, *hw, generator=g) * 4, 16)[0]
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    b = torch.tensor([0.375])
    pad = 4
    ho, wo = -(-hw[0] // stride), -(-hw[1] // stride)
    grad = round_fixed(torch.randn(3, 5 + pad, ho, wo, generator=g), 16)[0].double()
    grad = grad.contiguous(memory_format=torch.channels_last) if channels_last else grad
    got = _run(x, b, stride, pad, grad)
    with kernels.disabled():
        want = _run(x, b, stride, pad, grad)
    for a, w in zip(got, want):
        assert a.dtype == w.dtype and torch.equal(a, w)
    assert got[0].stride() == want[0].stride() and got[1].stride() == want[1].stride()
    # by hand: the kept pixels carry x + b, the padded channels 0, the error lands on the kept pixels
    assert torch.equal(got[0][:, :5], x[:, :, ::stride, ::stride].double() + 0.375)
    assert not got[0][:, 5:].any()
    assert torch.equal(got[1][:, :, ::stride, ::stride], grad[:, :5].float())
    assert float(got[1].abs().sum()) == float(grad[:, :5].abs().sum())
    assert float(got[2]) == float(grad[:, :5].sum())


def test_backward_takes_an_error_of_any_strides():
    """autograd may hand the backward an error whose layout is not y's: the kernel reads any strides."""
    if kernels.load() is None:
        pytest.skip("the compiled kernels are unavailable here")
    x = round_fixed(torch.randn(2, 4, 6, 6), 16)[0].contiguous(memory_format=torch.channels_last)
    grad = round_fixed(torch.randn(2, 8, 3, 3), 16)[0].double()          # NCHW, y is channels-last
    got = _run(x, torch.tensor([0.5]), 2, 4, grad)
    with kernels.disabled():
        want = _run(x, torch.tensor([0.5]), 2, 4, grad)
    for a, w in zip(got, want):
        assert torch.equal(a, w)

"""ReLU masks kept as bits (eoq/nn/mask.py, csrc/stream.cpp) against torch's bool masks."""
import pytest
import torch

from eoq import kernels
from eoq.nn import mask


@pytest.fixture(autouse=True)
def _kernels():
    if kernels.load() is None:
        pytest.skip("compiled kernels unavailable (the masks are then torch bools, tested throughout)")


def test_bit_layout_by_hand():
    """Element i in bit i & 7 of byte i >> 3: 1,-1,2,0,3,-2,5,6 | 7 > 0 -> 0b11010101, 0b1."""
    live = mask.greater(torch.tensor([1.0, -1, 2, 0, 3, -2, 5, 6, 7]), 0.0)
    assert live.dtype == torch.uint8 and live.tolist() == [0b11010101, 1]


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 16, 8, 8), (1, 1, 1, 1)])
def test_greater_and_where_equal_torch(shape, channels_last):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(shape, generator=g)
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    t = -0.25
    live = mask.greater(x, t)
    assert live.numel() == (x.numel() + 7) // 8
    assert torch.equal(mask.bools(live, x.shape, x.stride()), x > t)
    grad = torch.randn(shape, generator=g)
    special = torch.tensor([-0.0, float("nan"), float("inf")])[:grad.numel()]
    grad.view(-1)[:len(special)] = special
    grad = grad.contiguous(memory_format=torch.channels_last) if channels_last else grad
    want = torch.where(x > t, grad, 0.0)
    got = mask.where(grad, live, x.stride())
    assert torch.equal(torch.signbit(got), torch.signbit(want)) and torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0))
    other = grad.contiguous() if channels_last else grad.contiguous(memory_format=torch.channels_last)
    got2 = mask.where(other, live, x.stride())            # grad in another layout than the mask's source
    assert torch.equal(got2.nan_to_num(7.0), want.nan_to_num(7.0))


def test_a_bool_mask_passes_through():
    x = torch.randn(10)
    assert torch.equal(mask.bools(x > 0, x.shape, x.stride()), x > 0)
    assert torch.equal(mask.where(x, x > 0, x.stride()), torch.relu(x))


def test_the_tail_sums_read_bits_from_any_chunk_start():
    """masked_sums splits its range among threads at element counts that are not multiples of 8
    (98,283 elements on 2 threads: the second chunk starts at 49,142): the bits are read there as
    well, and g and both sums equal the bool-mask torch path."""
    from eoq.nn.fixup_tail import exact_tail, masked_exact_sums
    from eoq.quant.quantizers import round_fixed

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        g = torch.Generator().manual_seed(11)
        x = torch.randn(1, 3, 181, 181, generator=g) * 100
        y, live = exact_tail(x, torch.tensor([0.75]), torch.tensor([0.5]), None, 16)
        grad = round_fixed(torch.randn(x.shape, generator=g), 16)[0]
        got = masked_exact_sums(grad, live, x, x.stride())
        with kernels.disabled():
            _, live_t = exact_tail(x, torch.tensor([0.75]), torch.tensor([0.5]), None, 16)
            want = masked_exact_sums(grad, live_t, x, x.stride())
    finally:
        torch.set_num_threads(threads)
    assert mask.packed(live) and not mask.packed(live_t)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_relu_bias_backward_in_one_pass_equals_the_three_passes(channels_last, threads, monkeypatch):
    """The backward of relu(x + b_out) + b_in (layers._relu_bias_backward): the one-pass kernel
    (masked_grad_sums) against the bool-mask torch path: g bit for bit, and both bias gradients
    (sum g, sum grad) against float64 sums of the same tensors (odd sizes: tails and chunk starts
    that are not multiples of 8)."""
    from eoq.nn import layers
    from eoq.nn.layers import _relu_bias_backward
    from eoq.quant.quantizers import round_fixed

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(5)
        x = torch.randn(3, 7, 61, 59, generator=g)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        grad = round_fixed(torch.randn(x.shape, generator=g), 16)[0]
        grad = grad.contiguous(memory_format=torch.channels_last) if channels_last else grad
        pre = 0.125

        class Ctx:
            saved_tensors = (mask.greater(x, -pre),)
            shapes, strides = ((1,), (1,)), x.stride()
            needs_input_grad = (True, True, True)

        calls = []

        class Spy:                       # the kernel module, counting the one-pass calls
            def __getattr__(self, name):
                if name == "masked_grad_sums":
                    calls.append(name)
                return getattr(kernels.load(), name)

        monkeypatch.setattr(layers.kernels, "usable", lambda t: Spy())
        gx, g_pre, g_bias = _relu_bias_backward(Ctx, grad)
        monkeypatch.undo()
        ctx_t = type("CtxT", (Ctx,), {"saved_tensors": (x > -pre,)})
        want_gx, want_pre, want_bias = _relu_bias_backward(ctx_t, grad)     # the bool mask: torch ops
    finally:
        torch.set_num_threads(before)
    assert calls == ["masked_grad_sums"]
    assert torch.equal(gx, want_gx) and gx.stride() == grad.stride()
    assert torch.equal(g_pre, want_pre) and torch.equal(g_bias, want_bias)
    wx = torch.where(x > -pre, grad, 0.0)
    assert float(g_pre) == float(wx.double().sum()) and float(g_bias) == float(grad.double().sum())


def test_the_masked_kernels_hand_out_max_abs_g():
    """masked_sums / masked_grad_sums mark g with max|g| (eoq.quant.fusion.known_max), the value the
    quantizers' own max pass finds; a NaN gives +inf (the quantizer then raises as before)."""
    from eoq.nn.fixup_tail import exact_tail, masked_exact_sums
    from eoq.quant import fusion
    from eoq.quant.quantizers import round_fixed

    if kernels.load() is None:
        pytest.skip("the compiled kernels are unavailable here")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 17, 19, generator=g)
    _, live = exact_tail(x, torch.tensor([0.5]), torch.tensor([0.25]), None, 16)
    grad = round_fixed(torch.randn(x.shape, generator=g), 16)[0]
    out, _, _ = masked_exact_sums(grad, live, x, x.stride())
    assert fusion.known_max(out) == float(out.abs().max()) > 0
    kx, _, _, amax = kernels.load().masked_grad_sums(grad, live)
    assert amax == float(kx.abs().max())
    grad[0, 0, 0, 0] = float("nan")
    live = mask.greater(torch.ones_like(x), 0.0)       # every element live: the NaN reaches g
    assert kernels.load().masked_grad_sums(grad, live)[3] == float("inf")


def test_a_known_max_is_dropped_once_the_tensor_is_written():
    from eoq.quant import fusion

    t = torch.randn(10)
    assert fusion.known_max(t) is None
    fusion.know_max(t, 3.0)
    view = fusion.know_max(t.view_as(t), fusion.known_max(t))
    assert fusion.known_max(t) == fusion.known_max(view) == 3.0
    t.add_(1.0)                                        # autograd may add a second error in place
    assert fusion.known_max(t) is None and fusion.known_max(view) is None

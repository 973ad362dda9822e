"""The fixed-point residual stream (eoq/nn/stream.py, spec stream_bits): FX rounding, the exact
error sum at a block boundary, and whole steps that stay on the 16-bit grid in both engines."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

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


def test_the_boundary_sums_the_two_errors_exactly_before_rounding():
    """e_branch + e_identity in float32 loses the 2^-40 (below its last bit) and ties to even; the
    boundary's exact sum rounds up. Forward: the stream is rounded to 16 bits."""
    x = torch.tensor([3.0, 1.0 + 2.0 ** -20], requires_grad=True)
    a, b = stream_split(x, 16)
    assert a.tolist() == [3.0, 1.0] and b.tolist() == [3.0, 1.0]      # LSB 2^-13 for max 3
    lsb = 2.0 ** -14                                                  # for max 1.5
    g_branch = torch.tensor([1.5, 2.5 * lsb])
    g_identity = torch.tensor([0.0, 2.0 ** -40])
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

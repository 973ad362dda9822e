"""The float32 route of the int8 GEMM against int64 products and ``torch._int_mm``, bit for bit."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq.engine import int_gemm
from eoq.engine import intengine as IE
from eoq.models import build_model
from eoq.nn.prepare import prepare
from eoq.quant.presets import get_preset
from eoq.training.loop import train_step
from eoq.training.optimizer import EOQSGD


def _codes(*shape, gen, lo=-128, hi=127):
    return torch.randint(lo, hi + 1, shape, generator=gen, dtype=torch.int8)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 40), st.integers(1, 3 * int_gemm.F32_CHUNK + 7), st.integers(1, 24), st.integers(0, 2 ** 31))
def test_float_route_equals_int64_products(m, k, n, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = _codes(m, k, gen=g), _codes(k, n, gen=g)
    got = int_gemm.float_mm(a, b)
    assert got.dtype == torch.int32
    assert torch.equal(got.long(), a.long() @ b.long())


def test_float_route_at_the_chunks_worst_case():
    """Chunks of F32_CHUNK products of -128 * -128 sum to exactly 2^24, the largest magnitude the
    float32 chunks must hold; the odd total above 2^24 is one no single float32 GEMM can hold."""
    k = 3 * int_gemm.F32_CHUNK
    a = torch.full((2, k), -128, dtype=torch.int8)
    b = torch.full((k, 3), -128, dtype=torch.int8)
    a[:, 0], b[0, :] = 1, 1
    ref = a.long() @ b.long()
    assert ref[0, 0] == 1 + (k - 1) * 128 * 128 and ref[0, 0] > 2 ** 24
    assert torch.equal(int_gemm.float_mm(a, b).long(), ref)
    whole = (a.float() @ b.float()).long()
    assert not torch.equal(whole, ref)


def test_reduced_float32_precision_takes_float64(monkeypatch):
    """With torch's float32 matmul precision lowered (bfloat16 allowed), the route uses float64."""
    g = torch.Generator().manual_seed(0)
    a, b = _codes(9, 2500, gen=g), _codes(2500, 5, gen=g)
    calls = []
    real = torch.mm

    def spy(x, y, *args, **kw):
        calls.append(x.dtype)
        return real(x, y, *args, **kw)

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")
        monkeypatch.setattr(torch, "mm", spy)
        got = int_gemm.float_mm(a, b)
    finally:
        torch.set_float32_matmul_precision(before)
    assert calls == [torch.float64]
    assert torch.equal(got.long(), a.long() @ b.long())


def test_int_mm_takes_the_route_and_agrees_with_torch_int_mm():
    g = torch.Generator().manual_seed(1)
    a, b = _codes(70, 300, gen=g, lo=-127), _codes(300, 24, gen=g, lo=-127)
    with int_gemm.using("int8"):
        assert int_gemm.route() is int_gemm.Route.INT8
        via_int8 = IE.int_mm(a, b)
    with int_gemm.using("float32"):
        assert int_gemm.route() is int_gemm.Route.FLOAT32
        via_f32 = IE.int_mm(a, b, pooled=True)
    assert torch.equal(via_int8, torch._int_mm(a, b))
    assert torch.equal(via_f32, via_int8)
    with int_gemm.using("auto"):
        expected = int_gemm.Route.INT8 if int_gemm.has_int8_dot() else int_gemm.Route.FLOAT32
        assert int_gemm.route() is expected


def test_a_bad_route_in_the_environment_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("EOQ_INT_GEMM", "fp16")
    with pytest.raises(ValueError, match="unknown EOQ_INT_GEMM 'fp16'; choose one of: auto, int8, float32"):
        int_gemm._route_from_env()


def test_a_training_step_is_the_same_on_both_routes():
    """Two integer-engine EOQ steps of ResNet-20 (batch 4) with every GEMM on torch._int_mm and
    with every GEMM in float32 chunks: identical weights, scalars and optimizer state."""
    states = []
    for chosen in ("int8", "float32"):
        with int_gemm.using(chosen):
            torch.manual_seed(0)
            net = build_model("resnet20", "fixup", num_classes=10)
            gen = torch.Generator().manual_seed(1)
            spec = get_preset("eoq")
            prepare(net, spec, gen, engine="int")
            opt = EOQSGD(net, spec, lr=0.1, momentum=0.875, generator=gen)
            data = torch.Generator().manual_seed(2)
            for _ in range(2):
                train_step(net, opt, torch.randn(4, 3, 32, 32, generator=data),
                           torch.randint(0, 10, (4,), generator=data))
            states.append(net.state_dict())
    for (name, ta), tb in zip(states[0].items(), states[1].values()):
        assert torch.equal(ta, tb), name

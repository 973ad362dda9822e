"""EOQ optimizer: weights stay on their int8 grid, updates are int8 and unbiased, float path is SGD."""
import contextlib
import math

import pytest
import torch
import torch.nn.functional as F

from eoq import kernels
from eoq.models import build_model
from eoq.nn.layers import QLinear
from eoq.nn.prepare import grid_params, prepare
from eoq.quant.presets import get_preset
from eoq.quant.spec import SpecError, TensorQuant, WeightPolicy
from eoq.training.loop import train_step
from eoq.training.loss import step_loss
from eoq.training.optimizer import EOQSGD, fixed_point, momentum_shift, pow2_round


def train_steps(model, opt, steps, seed=0, batch=16):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(batch, 3, 32, 32, generator=gen)
        y = torch.randint(0, 10, (batch,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def assert_on_grid(model):
    grids = grid_params(model)
    assert grids
    for g in grids:
        codes = g.param.detach() / torch.exp2(g.exponent)
        assert torch.equal(codes, codes.round()), g.name
        assert codes.abs().max() <= 2 ** (g.bits - 1) - 1, g.name


@pytest.mark.parametrize("preset", ["eoq", "eoq-float-ends", "eoq-shift"])
def test_weights_stay_on_int8_grid_and_updates_are_int8(preset):
    torch.manual_seed(0)
    model = build_model("resnet20", "fixup")
    gen = torch.Generator().manual_seed(0)
    spec = get_preset(preset)
    prepare(model, spec, gen)
    assert_on_grid(model)
    opt = EOQSGD(model, spec, lr=0.5, generator=gen)
    for step in range(6):
        train_steps(model, opt, 1, seed=step)
        assert_on_grid(model)
        for g in grid_params(model):
            u = opt.state[g.param]["last_update"]
            assert u.dtype == torch.int8 and u.abs().max() <= 2 ** (spec.U.bits - 1) - 1
    moved = sum(int(opt.state[g.param]["last_update"].count_nonzero()) for g in grid_params(model))
    assert moved > 0
    # no float master copy: the optimizer keeps only the momentum buffer and the last int8 update
    for g in grid_params(model):
        state = opt.state[g.param]
        if spec.wd_bits:            # the all-integer update: M's codes at their width (int8 for M8)
            assert set(state) == {"momentum_codes", "momentum_exponent", "last_update"}
            assert state["momentum_codes"].dtype == torch.int8 and state["momentum_codes"].shape == g.param.shape
            values = state["momentum_codes"].double() * 2.0 ** int(state["momentum_exponent"])
            assert torch.equal(opt.momentum_values(g.param).double(), values)
        else:
            assert set(state) == {"momentum_buffer", "last_update"}


def single_layer(value: float, exponent: int, n: int = 200_000, policy=WeightPolicy(saturate_frac=0.5),
                 u_bits: int = 8):
    layer = QLinear(n, 1, bias=False)
    spec = get_preset("eoq").with_changes(lr_pow2=False, weight_policy=policy,
                                          G=TensorQuant(), W=TensorQuant(bits=8),
                                          U=TensorQuant(bits=u_bits, rounding="stochastic"))
    gen = torch.Generator().manual_seed(0)
    prepare(layer, spec, gen)
    with torch.no_grad():
        layer.weight_exp.fill_(exponent)
        layer.weight.fill_(value)
    return layer, EOQSGD(layer, spec, lr=1.0, momentum=0.0, weight_decay=0.0, generator=gen)


def test_update_is_unbiased_in_expectation():
    """delta = 0.3 LSB: U = SR(0.3) in {0, 1}, mean 0.3 within 5 standard errors."""
    lsb = 2.0 ** -8
    layer, opt = single_layer(10 * lsb, -8)
    layer.weight.grad = torch.full_like(layer.weight, 0.3 * lsb)
    opt.step()
    u = opt.state[layer.weight]["last_update"].float()
    n = u.numel()
    assert set(u.unique().tolist()) == {0.0, 1.0}
    assert abs(float(u.mean()) - 0.3) < 5 * math.sqrt(0.21 / n)
    assert torch.equal(layer.weight.detach(), (10 - u) * lsb)


@pytest.mark.parametrize("u_bits,limit", [(8, 127), (6, 31)])
def test_large_update_clamped_to_its_range_and_codes_to_grid(u_bits, limit):
    """An update of 500 LSBs is clamped to the U range: +-127 (eoq-shift), +-31 (eoq's 6-bit U)."""
    lsb = 2.0 ** -8
    layer, opt = single_layer(0.0, -8, n=10, u_bits=u_bits)
    layer.weight.grad = torch.full_like(layer.weight, 500 * lsb)
    opt.step()
    u = opt.state[layer.weight]["last_update"]
    assert u.dtype == torch.int8 and set(u.flatten().tolist()) == {limit}
    # codes 0 - U; at -127 every code saturates and the policy halves them (SR): within one new LSB
    assert torch.all((layer.weight.detach() + limit * lsb).abs() <= 2.0 ** float(layer.weight_exp))
    assert float(layer.weight_exp) == (-9 if limit == 31 else -7)     # max code 31 < 32: one bit down, exact


def test_eoq_preset_clamps_updates_to_31_and_holds_the_lr_in_8_bit_fixed_point():
    spec = get_preset("eoq")
    assert spec.U.bits == 6 and not spec.lr_pow2 and spec.lr_bits == 8
    shift = get_preset("eoq-shift")
    assert shift.U.bits == 8 and shift.lr_pow2 and shift.lr_bits is None
    assert spec.with_changes(name="x", description="", U=shift.U, lr_pow2=True, lr_bits=None, wd_bits=None) == \
        shift.with_changes(name="x", description="")          # nothing else differs


def test_exponent_moves_up_on_saturation_and_down_when_underused():
    lsb = 2.0 ** -8
    layer, opt = single_layer(120 * lsb, -8, n=1000, policy=WeightPolicy(saturate_frac=0.01))
    layer.weight.grad = torch.full_like(layer.weight, -20 * lsb)   # pushes codes to +140 -> clamp 127
    opt.step()
    assert float(layer.weight_exp) == -7
    codes = layer.weight.detach() / 2 ** -7
    assert torch.equal(codes, codes.round()) and set(codes.unique().tolist()) <= {63.0, 64.0}
    layer, opt = single_layer(20 * lsb, -8, n=1000)
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()                                                     # max code 20 < 32: one bit down, exact
    assert float(layer.weight_exp) == -9
    assert torch.equal(layer.weight.detach(), torch.full_like(layer.weight, 20 * lsb))


@pytest.mark.parametrize("nesterov", [False, True])
def test_float_params_follow_torch_sgd(nesterov):
    torch.manual_seed(0)
    a = build_model("resnet20", "bn")
    b = build_model("resnet20", "bn")
    b.load_state_dict(a.state_dict())
    prepare(a, get_preset("fp32"))
    ours = EOQSGD(a, get_preset("fp32"), lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=nesterov)
    decay = [p for p in b.parameters() if p.dim() > 1]
    rest = [p for p in b.parameters() if p.dim() <= 1]
    ref = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": rest, "weight_decay": 0.0}],
                          lr=0.1, momentum=0.9, nesterov=nesterov)
    train_steps(a, ours, 3)
    train_steps(b, ref, 3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_nesterov_is_refused_for_integer_updates():
    model = build_model("resnet20", "fixup")
    prepare(model, get_preset("eoq"))
    with pytest.raises(SpecError, match="Nesterov"):
        EOQSGD(model, get_preset("eoq"), lr=0.125, momentum=0.9375, nesterov=True)


def test_label_smoothing_loss_matches_hand_formula():
    """train_step's loss = -(1 - eps) log p_y - (eps / K) sum_k log p_k, in float64 by hand."""
    torch.manual_seed(0)
    model = build_model("resnet20", "bn")
    prepare(model, get_preset("fp32"))
    opt = EOQSGD(model, get_preset("fp32"), lr=1e-9)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    model.eval()
    with torch.no_grad():
        logp = torch.log_softmax(model(x).double(), 1)
    model.train()
    eps = 0.2
    want = (-(1 - eps) * logp.gather(1, y[:, None]).squeeze(1) - eps / 10 * logp.sum(1)).mean()
    model.eval()                                   # same logits as above (no BN batch statistics)
    loss, _ = train_step(model, opt, x, y, label_smoothing=eps)
    assert abs(float(loss.detach()) - float(want)) < 1e-5
    plain = (-logp.gather(1, y[:, None])).mean()
    assert abs(float(want) - float(plain)) > 1e-3   # the smoothing changes the loss


def test_fixup_scalars_use_a_tenth_of_the_lr():
    model = build_model("resnet20", "fixup")
    prepare(model, get_preset("fp32"))
    opt = EOQSGD(model, get_preset("fp32"), lr=0.1)
    scal = [g for g in opt.param_groups if g["lr_scale"] == 0.1]
    assert len(scal) == 1 and scal[0]["weight_decay"] == 0 and len(scal[0]["params"]) == 9 * 5 + 2
    prepare(model, get_preset("eoq"))
    opt = EOQSGD(model, get_preset("eoq"), lr=0.1)
    scalars = [g for g in opt.grid.values() if g.name.endswith("value")]
    assert len(scalars) == 47 and all(g.lr_scale == 0.1 and not g.weight_decay for g in scalars)


def test_momentum_must_be_a_shift_for_integer_updates():
    assert momentum_shift(0.875) == 3 and momentum_shift(0.0) is None
    model = build_model("resnet20", "fixup")
    prepare(model, get_preset("eoq"))
    with pytest.raises(SpecError, match="1 - 2\\^-s"):
        EOQSGD(model, get_preset("eoq"), lr=0.1, momentum=0.9)


def test_pow2_round():
    assert pow2_round(0.1) == 0.125 and pow2_round(0.2) == 0.25 and pow2_round(0.02) == 1 / 64
    assert pow2_round(0.0) == 0.0


def test_bad_hyperparameters():
    model = build_model("resnet20", "fixup")
    for kw in ({"lr": 0}, {"lr": -1}, {"lr": 0.1, "momentum": 1.0}, {"lr": 0.1, "weight_decay": -1}):
        with pytest.raises(ValueError):
            EOQSGD(model, get_preset("fp32"), **kw)


@pytest.mark.skipif(kernels.load() is None, reason="fused kernels not built here")
@pytest.mark.parametrize("preset", ["eoq", "eoq-float-ends", "eoq-shift", "eoq+lr_bits=16", "eoq+lr_bits=4",
                                    "eoq+M=8", "eoq+momentum=0", "eoq+lr=4", "eoq+lr=0.002",
                                    "eoq+lr=4+momentum=0"])
def test_fused_kernels_give_the_reference_result_bit_for_bit(preset):
    """Whole ResNet-20 EOQ steps with the fused kernels == the torch reference (kernels disabled):
    weights, exponents, momentum buffers and update codes, across exponent moves (high lr); lrs
    from 2e-3 to 4 put the update's rounding shifts on both sides of 16 (the kernel's branches)."""
    def run(use_kernels):
        with contextlib.nullcontext() if use_kernels else kernels.disabled():
            return steps()

    def steps():
        torch.manual_seed(0)
        model = build_model("resnet20", "fixup", num_classes=10)
        gen = torch.Generator().manual_seed(1)
        name, *changes = preset.split("+")
        fields = dict(c.split("=") for c in changes)
        spec = get_preset(name)
        for field in ("lr_bits", "M"):
            if field in fields:
                spec = spec.with_changes(**{field: int(fields[field])})
        prepare(model, spec, gen)
        start = [float(g.exponent) for g in grid_params(model)]
        opt = EOQSGD(model, spec, lr=float(fields.get("lr", 0.5)), momentum=0.0 if "momentum" in fields else 0.875,
                     generator=gen)
        data = torch.Generator().manual_seed(2)
        for _ in range(3):
            x = torch.randn(8, 3, 32, 32, generator=data)
            y = torch.randint(0, 10, (8,), generator=data)
            train_step(model, opt, x, y)
        if "lr" not in fields or float(fields["lr"]) >= 0.5:
            assert any(float(g.exponent) != e for g, e in zip(grid_params(model), start))  # policy acted
        return model, opt
    fast_model, fast_opt = run(True)
    ref_model, ref_opt = run(False)
    moved = 0
    def same_bits(a, b):            # torch.equal takes -0.0 for 0.0: compare the bytes
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
            a.reshape(-1).contiguous().view(torch.uint8), b.reshape(-1).contiguous().view(torch.uint8)) \
            if a.is_floating_point() else \
            torch.equal(a, b)

    for (name, a), b in zip(fast_model.state_dict().items(), ref_model.state_dict().values()):
        if preset == "eoq-shift" and a.is_floating_point():
            assert torch.equal(a, b), name           # the float-sum update keeps torch's signed zeros
        else:
            assert same_bits(a, b), name
    for g_fast, g_ref in zip(grid_params(fast_model), grid_params(ref_model)):
        sa, sb = fast_opt.state[g_fast.param], ref_opt.state[g_ref.param]
        assert set(sa) == set(sb)
        for key in ("momentum_codes", "momentum_exponent"):
            if key in sa:
                assert same_bits(sa[key], sb[key]), g_fast.name
        if "momentum_buffer" in sa:
            assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"]), g_fast.name
            if preset.startswith("eoq+") or preset in ("eoq", "eoq-float-ends"):
                assert same_bits(sa["momentum_buffer"], sb["momentum_buffer"]), g_fast.name
        assert torch.equal(sa["last_update"], sb["last_update"]), g_fast.name
        moved += int(sa["last_update"].count_nonzero())
    assert moved > 0


def test_fixed_point_learning_rate_hand_worked():
    """0.2 = 0b0.0011001100.. : 4 bits -> 13 * 2^-6 = 0.203125; 8 bits -> 205 * 2^-10; a value
    that rounds up to the next power of two gets the mantissa 2^(bits-1); powers of two are exact."""
    assert fixed_point(0.2, 4) == (13, 6)
    assert fixed_point(0.2, 8) == (205, 10)
    assert fixed_point(0.2, 16) == (52429, 18)
    assert fixed_point(0.99, 4) == (8, 3)                   # 15.84 -> 16 = 2^4: 8 * 2^-3 = 1.0
    assert fixed_point(0.125, 4) == (8, 6)
    assert fixed_point(3.0, 1) == (1, -2)                   # 1-bit mantissa: 3 -> 4 (half to even)
    for bits in (1, 4, 8, 16, 24):
        for x in (1e-6, 0.0123, 0.2, 0.5, 0.75, 7.3):
            mant, s = fixed_point(x, bits)
            assert 2 ** (bits - 1) <= mant < 2 ** bits
            assert abs(mant * 2.0 ** -s - x) <= 2.0 ** -s / 2          # nearest: within half an LSB


def test_fixed_point_lr_update_is_the_integer_product_and_shift():
    """With lr_bits the update is U = SR(L * v_code * 2^(e_v - s - e)): check against that integer
    formula computed here in Python integers (momentum 0, so v is the 16-bit G code tensor)."""
    from eoq.quant import rng

    layer, opt = single_layer(0.0, -8, n=1000, u_bits=6)
    opt.spec = opt.spec.with_changes(lr_bits=8)
    g_codes = torch.randint(-2 ** 15 + 1, 2 ** 15, (1, 1000), generator=torch.Generator().manual_seed(3))
    layer.weight.grad = g_codes.float() * 2.0 ** -20          # exactly representable
    lr = 4.7                          # updates of up to about 37 LSBs: some clamped at 31
    for group in opt.param_groups:
        group["lr"] = lr
    same = torch.Generator()
    same.set_state(opt.generator.get_state())
    keys = rng.draw_keys(same, 1, 4)                         # the keys the step will draw
    opt.step()
    u = opt.state[layer.weight]["last_update"].flatten().tolist()
    mant, s = fixed_point(lr, 8)
    shift = s + (-8) - (-20)          # y = L * code * 2^(-20 - s + 8): a right shift by s - 12
    bits = rng.random_bits((1000,), tuple(keys[0][2].tolist()), torch.device("cpu"), 0).tolist()
    for j, code in enumerate(g_codes.flatten().tolist()):
        prod = mant * code                                   # the integer product
        y16 = prod * 2 ** 16 // 2 ** shift if shift >= 0 else prod * 2 ** (16 - shift)   # 16 fraction bits, floor
        want = (y16 + bits[j]) // 2 ** 16                    # SR: add 16 random bits, floor
        assert u[j] == max(-31, min(31, want)), j
    assert max(map(abs, u)) == 31 and len(set(u)) > 40


def test_plan_columns_agree_with_the_kernel_header():
    """PlanCol (Python) and enum PlanCol (csrc/common.h) name the same columns with the same numbers."""
    import re
    from pathlib import Path

    from eoq.training.optimizer import PlanCol

    header = (Path(kernels.__file__).parent / "csrc" / "common.h").read_text()
    body = re.search(r"enum PlanCol : int \{(.*?)\};", header, re.S).group(1)
    cpp = {name: int(value) for name, value in re.findall(r"PLAN_([A-Z_]+) = (\d+)", body)}
    assert cpp.pop("COLUMNS") == len(PlanCol)
    assert cpp == {c.name: c.value for c in PlanCol}


@pytest.mark.parametrize("engine", ["int", "sim"])
def test_packed_gradient_step_equals_the_float_gradient_step(engine):
    """train_step keeps the layers' G as int8 codes (no float32 .grad); three steps give the same
    weights, exponents and optimizer state, bit for bit, as backward + step on float32 .grad."""
    runs = []
    for packed in (True, False):
        torch.manual_seed(0)
        net = build_model("resnet20", "fixup", num_classes=10)
        gen = torch.Generator().manual_seed(1)
        spec = get_preset("eoq")
        prepare(net, spec, gen, engine=engine)
        opt = EOQSGD(net, spec, lr=0.2, momentum=0.875, generator=gen)
        data = torch.Generator().manual_seed(2)
        for _ in range(5):
            x = torch.randn(4, 3, 32, 32, generator=data).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (4,), generator=data)
            if packed:
                train_step(net, opt, x, y)
            else:
                opt.zero_grad()
                step_loss(net(x), y, spec).backward()
                weights = [g.param for g in grid_params(net) if g.name.endswith("weight")]
                assert all(p.grad is not None for p in weights)
                opt.step()
        if packed:       # the integer engine's layer gradients were packed: no float32 .grad kept
            conv = [g for g in grid_params(net) if g.name.endswith("convs.0.weight")][0]
            assert (conv.param.grad is None) == (engine == "int") == (id(conv.param) in opt.packed)
        runs.append((net, opt))
    (a, oa), (b, ob) = runs
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(ta, tb), name
    sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for key in sa[i]:
            assert torch.equal(sa[i][key], sb[i][key]), (i, key)


def test_gradient_reads_packed_codes_as_values():
    """Within packed_gradients the layers' weight gradients are int8 codes (.grad None) and
    gradient() gives the values plain backward puts in .grad (same rounding bits)."""
    torch.manual_seed(0)
    net = build_model("resnet20", "fixup", num_classes=10)
    spec = get_preset("eoq")
    gen = torch.Generator()
    prepare(net, spec, gen, engine="int")
    opt = EOQSGD(net, spec, lr=0.1, generator=gen)
    for m in net.modules():                         # non-zero errors reach every layer
        if hasattr(m, "mode") and m.mode == "scale":
            with torch.no_grad():
                m.value.fill_(1.0)
    x = torch.randn(2, 3, 32, 32)
    gen.manual_seed(5)
    step_loss(net(x), torch.tensor([1, 2]), spec).backward()
    plain = {id(g.param): g.param.grad.clone() for g in grid_params(net) if g.param.grad is not None}
    opt.zero_grad()
    gen.manual_seed(5)
    with opt.packed_gradients():
        step_loss(net(x), torch.tensor([1, 2]), spec).backward()
    assert opt.packed                               # some weights' gradients were packed
    for g in grid_params(net):
        if id(g.param) in opt.packed:
            assert g.param.grad is None
            assert torch.equal(opt.gradient(g.param), plain[id(g.param)]), g.name
    # a second backward before zero_grad adds to the packed values, as autograd accumulates .grad
    gen.manual_seed(5)
    step_loss(net(x), torch.tensor([1, 2]), spec).backward()
    for g in grid_params(net):
        if id(g.param) in plain:
            assert torch.equal(opt.gradient(g.param), plain[id(g.param)] + plain[id(g.param)]), g.name
    assert not opt.packed


def _linear_steps(use_kernels, rows, cols, momentum, lr, weights, gradient, spec=None):
    """Three EOQSGD steps (wd 5e-4) of a QLinear(cols, rows), fused kernel or torch reference:
    ``weights(layer)`` may set its weights, ``gradient(step)`` gives each step's gradient; ``spec``
    (default eoq); returns (weights, exponent, the optimizer's tensors)."""
    with contextlib.nullcontext() if use_kernels else kernels.disabled():
        torch.manual_seed(0)                          # nn.Linear's initial weights
        layer = QLinear(cols, rows, bias=False)
        spec = spec or get_preset("eoq")
        prepare(layer, spec, torch.Generator().manual_seed(0))
        weights(layer)
        opt = EOQSGD(layer, spec, lr=lr, momentum=momentum, weight_decay=5e-4,
                     generator=torch.Generator().manual_seed(3))
        for step in range(3):
            layer.weight.grad = gradient(step)
            opt.step()
        state = opt.state[layer.weight]
        return layer.weight.detach().clone(), float(layer.weight_exp), {k: v.clone() for k, v in state.items()
                                                                          if isinstance(v, torch.Tensor)}


def _assert_fused_is_the_reference(**steps) -> dict:
    """The fused kernel's weights, exponent and optimizer tensors equal the reference's; returns the latter's."""
    w_fast, e_fast, s_fast = _linear_steps(True, **steps)
    w_ref, e_ref, s_ref = _linear_steps(False, **steps)
    assert torch.equal(w_fast, w_ref) and e_fast == e_ref
    assert s_fast.keys() == s_ref.keys() and all(torch.equal(s_fast[k], s_ref[k]) for k in s_fast)
    return s_ref


@pytest.mark.skipif(kernels.load() is None, reason="fused kernels not built here")
@pytest.mark.parametrize("momentum", [0.875, 0.0])
def test_fused_update_on_a_grid_coarser_than_the_update_matches_the_reference(momentum):
    """Weights at 2^-30 and gradients near 1: the update's rounding shift is negative (U saturates),
    the branch whole-network steps never reach; fused kernel == torch reference, bit for bit."""
    @torch.no_grad()
    def weights(layer):
        layer.weight_exp.fill_(-30)
        layer.weight.copy_(torch.randint(-127, 128, (4, 16), generator=torch.Generator().manual_seed(1))
                           .float() * 2.0 ** -30)

    def gradient(step):
        return torch.randint(-127, 128, (4, 16), generator=torch.Generator().manual_seed(5 + step)).float() * 2.0 ** -7

    _assert_fused_is_the_reference(rows=4, cols=16, momentum=momentum, lr=0.1, weights=weights, gradient=gradient)


@pytest.mark.skipif(kernels.load() is None, reason="fused kernels not built here")
@pytest.mark.parametrize("rows", [4, 520])
def test_fused_update_of_a_large_tensor_matches_the_reference(rows):
    """The kernel keeps the update's sum S between its two passes for tensors of at most 2^17 weights
    and forms it twice, a block at a time, for larger ones (520 x 256 = 133,120 > 2^17 = 131,072,
    with a last block shorter than the rest): both give the torch reference's weights, momentum codes
    and update codes, bit for bit, with weight decay, momentum and gradients spanning 2^-14 .. 2^-4."""
    def gradient(step):
        gen = torch.Generator().manual_seed(5 + step)
        scale = torch.exp2(torch.randint(-14, -3, (rows, 1), generator=gen).float())
        return torch.randint(-127, 128, (rows, 256), generator=gen).float() * scale

    state = _assert_fused_is_the_reference(rows=rows, cols=256, momentum=0.875, lr=0.3, weights=lambda layer: None,
                                           gradient=gradient)
    assert int(state["last_update"].count_nonzero()) > 0


@pytest.mark.skipif(kernels.load() is None, reason="fused kernels not built here")
@pytest.mark.parametrize("lr", [0.3, 2.0 ** -20])
def test_fused_update_in_the_widest_formats_matches_the_reference(lr):
    """24-bit weights, updates (int32) and momentum codes and a 24-bit lr mantissa, the widest a spec
    takes: the kernel's int32 weight loop and its 32 x 32-bit product of M codes and the lr mantissa
    hold them (codes and updates below 2^23, the mantissa below 2^24); fused == reference, bit for
    bit, with large updates (lr 0.3) and small ones (2^-20)."""
    wide = get_preset("eoq").with_changes(name="eoq-24", store_bits=24, W=24, U=24, M=24, lr_bits=24)

    def gradient(step):
        gen = torch.Generator().manual_seed(7 + step)
        return torch.randint(-127, 128, (8, 64), generator=gen).float() * 2.0 ** -6

    state = _assert_fused_is_the_reference(rows=8, cols=64, momentum=0.875, lr=lr, weights=lambda layer: None,
                                           gradient=gradient, spec=wide)
    assert state["last_update"].dtype == torch.int32 and int(state["last_update"].abs().max()) > 127

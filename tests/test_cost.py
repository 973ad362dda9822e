"""Cost model: GEMM MACs against FlopCounterMode, BN against a hand count, tables, CLI."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from analysis.cost.counter import CostTally, count_bn, count_training_step
from analysis.cost.tables import TableError, load_tables
from eoq.cli import main
from eoq.models import build_model
from eoq.nn.batchnorm import QBatchNorm2d
from eoq.nn.prepare import prepare
from eoq.quant.presets import get_preset
from eoq.training.optimizer import EOQSGD


def flops(model, x, y, backward: bool) -> float:
    fc = FlopCounterMode(display=False)
    with fc:
        loss = F.cross_entropy(model(x), y)
        if backward:
            loss.backward()
    model.zero_grad(set_to_none=True)
    return fc.get_total_flops()


@pytest.mark.parametrize("name,norm,preset", [("resnet20", "bn", "fp32"), ("resnet20", "fixup", "eoq"),
                                              ("resnet18", "fixup", "eoq"), ("resnet18", "bn", "fp32")])
def test_gemm_macs_equal_flop_counter(name, norm, preset):
    torch.manual_seed(0)
    model = build_model(name, norm)
    spec = get_preset(preset)
    prepare(model, spec, torch.Generator().manual_seed(0))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    fwd = flops(model, x, y, backward=False)
    total = flops(model, x, y, backward=True)
    tally = count_training_step(model, EOQSGD(model, spec, lr=0.1), x, y)
    assert tally.macs("forward") == fwd / 2
    assert tally.macs(("backward_error", "weight_grad")) == (total - fwd) / 2
    assert tally.macs("weight_grad") == tally.macs("forward")       # every weight gets a gradient
    assert tally.macs("backward_error") < tally.macs("forward")     # the input image needs no error


def test_bn_counts_of_one_layer_equal_a_hand_count():
    """BN over (N, C, H, W) = (2, 3, 4, 4): m = 32 values per channel, mC = 96, C = 3.

    forward adds: sum for the mean 96, x - mu 96, sum of squares 96, + beta 96, + eps 3,
                  running mean/var 6                                                  = 393
    forward mults: squares 96, x_hat = (x - mu) * (1/std) 96, gamma * x_hat 96, running stats 15 = 303
    forward div: mean 3, variance 3, 1/std 3 = 9;  sqrt: 3
    weight grad: dbeta adds 96; dgamma mults 96 + adds 96                       adds 192, mults 96
    input grad: (dy - dbeta/m - x_hat dgamma/m) adds 192; x_hat * (dgamma/m) 96 and * gamma/std 96
                mults, plus gamma * (1/std) per channel 3                       adds 192, mults 195
                dbeta/m and dgamma/m: div 6
    """
    t = CostTally()
    count_bn(t, "bn", (2, 3, 4, 4), QBatchNorm2d(3), needs_input_grad=True)
    got = {}
    for (_, _, phase, op, fmt), n in t.counts.items():
        if op not in ("read", "write"):
            assert fmt == "fp32"
            got[(phase, op)] = got.get((phase, op), 0) + n
    assert got == {("forward", "add"): 393, ("forward", "mult"): 303, ("forward", "div"): 9,
                   ("forward", "sqrt"): 3, ("weight_grad", "add"): 192, ("weight_grad", "mult"): 96,
                   ("backward_error", "add"): 192, ("backward_error", "mult"): 195,
                   ("backward_error", "div"): 6}


def test_norm_part_of_eoq_has_no_sqrt_or_division():
    torch.manual_seed(0)
    model = build_model("resnet20", "fixup")
    spec = get_preset("eoq")
    prepare(model, spec)
    t = count_training_step(model, EOQSGD(model, spec, lr=0.1), torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    ops = {(op, fmt) for (_, cat, _, op, fmt), _ in t.select(category="norm")}
    assert not any(op in ("sqrt", "div") for op, _ in ops)
    assert not any(fmt.startswith("fp") for op, fmt in ops if op not in ("read", "write"))


def test_fixup_block_tail_is_counted_although_a_kernel_fuses_it():
    """EOQ Fixup ResNet-20, batch 2: every block ends with y = relu(x * s + b + identity), which
    training runs as one fused kernel. The count must still hold, per block with output
    (2, C, H, W) = (2, 16 * 2^i, 32 / 2^i, 32 / 2^i) in stage i: n mults for s, n adds for b,
    forward and weight-grad; n mults for s backward; the residual add and ReLU in the block."""
    torch.manual_seed(0)
    model = build_model("resnet20", "fixup")
    spec = get_preset("eoq")
    prepare(model, spec)
    t = count_training_step(model, EOQSGD(model, spec, lr=0.1), torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))

    def ops(layer, phase, op):
        return sum(n for _, n in t.select(layer=layer, phase=phase, op=op))

    for i in range(3):
        n = 2 * (16 << i) * (32 >> i) ** 2
        for j in range(3):
            block = f"stages.{i}.{j}"
            assert ops(f"{block}.scale", "forward", "mult") == n
            assert ops(f"{block}.scale", "weight_grad", "mult") == n
            assert ops(f"{block}.scale", "backward_error", "mult") == n
            assert ops(f"{block}.biases_out.1", "forward", "add") == n
            assert ops(f"{block}.biases_out.1", "weight_grad", "add") == n
            assert ops(block, "forward", "add") >= n            # the residual add


def test_tables_override_and_errors(tmp_path):
    energy, cycles = load_tables()
    assert energy["add"]["fp32"] == 0.9 and energy["mult"]["int8"] == 0.2 and energy["mult"]["int32"] == 3.1
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"energy_pj": {"sqrt": {"fp32": 99}}, "cycles": {"div": {"fp32": 7}}}))
    energy, cycles = load_tables(str(path))
    assert energy["sqrt"]["fp32"] == 99 and cycles["div"]["fp32"] == 7 and energy["add"]["fp32"] == 0.9
    for bad in ({"energy_pj": {"sqr": {"fp32": 1}}}, {"energy_pj": {"sqrt": {"fp64": 1}}},
                {"energy_pj": {"sqrt": {"fp32": -1}}}, {"power": {}}):
        path.write_text(json.dumps(bad))
        with pytest.raises(TableError):
            load_tables(str(path))


def test_cost_command_ends_with_the_two_ratio_lines(capsys, tmp_path):
    assert main(["cost", "--model", "resnet20", "--batch-size", "4", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("norm power ratio (fp32 BN / EOQ Fixup) = ")
    assert lines[-1].startswith("norm speed ratio (fp32 BN / EOQ Fixup) = ")
    assert float(lines[-2].split("=")[1]) > 1 and float(lines[-1].split("=")[1]) > 1
    assert any(l.startswith("inference, BN as written: power ratio") and "(paper: >70x, >18x)" in l for l in lines)
    assert any(l.startswith("inference, BN folded: power ratio") for l in lines)
    assert (tmp_path / "cost_energy_resnet20.png").exists() and (tmp_path / "cost_resnet20.md").exists()
    assert main(["cost", "--model", "resnet21"]) == 2


@pytest.mark.parametrize("lr_pow2,lr_bits", [(True, None), (False, None), (False, 8)])
def test_integer_update_counts_lr_as_a_shift_only_when_it_is_a_power_of_two(lr_pow2, lr_bits):
    """Hand count of one integer-updated linear layer's step (analysis.cost.count_update): n = 40
    codes, weight decay on: momentum shift (+ lr shift), 3n adds, decay multiply (+ lr multiply);
    a fixed-point lr (lr_bits) is the integer multiply and one more shift (its 2^-s)."""
    from analysis.cost.counter import count_update
    from eoq.nn.layers import QLinear
    for m_bits, mult_format in ((16, "int16"), (8, "int8")):    # an 8-bit M: 8 x 8 multiplies, S still 16-bit
        layer = QLinear(8, 5, bias=False)
        spec = get_preset("eoq").with_changes(lr_pow2=lr_pow2, lr_bits=lr_bits, wd_bits=8 if lr_bits else None,
                                              M=m_bits)
        prepare(layer, spec, torch.Generator().manual_seed(0))
        opt = EOQSGD(layer, spec, lr=0.1, momentum=0.875, weight_decay=5e-4)
        t = CostTally()
        count_update(t, layer, opt)
        got = {op: sum(n for (_, _, _, o, f), n in t.select(phase="update", op=op)
                       if f == (mult_format if op == "mult" else "int16")) for op in ("shift", "mult", "add")}
        assert got == {"shift": 80.0 if lr_pow2 or lr_bits else 40.0, "mult": 40.0 if lr_pow2 else 80.0,
                       "add": 120.0}, m_bits


@pytest.mark.parametrize("folded", [False, True])
def test_inference_bn_counts_of_one_layer_equal_a_hand_count(folded):
    """Inference BN over (2, 3, 4, 4): mC = 96 values, C = 3 channels, fp32.
    As written, (x - mu) / sqrt(var + eps) * gamma + beta: adds 96 (x - mu) + 96 (+ beta) + 3 (var + eps)
    = 195, divisions 96, mults 96, square roots 3. Folded, a x + b: 96 mults, 96 adds."""
    from analysis.cost.counter import count_bn_inference

    t = CostTally()
    count_bn_inference(t, "bn", (2, 3, 4, 4), folded=folded)
    got = {op: n for (_, _, phase, op, fmt), n in t.counts.items() if op not in ("read", "write")}
    assert all(phase == "forward" and fmt == "fp32" for (_, _, phase, _, fmt) in t.counts if fmt != "byte")
    assert got == ({"mult": 96, "add": 96} if folded else {"add": 195, "div": 96, "mult": 96, "sqrt": 3})


def test_inference_count_is_the_forward_pass_with_bn_in_its_inference_form():
    from analysis.cost.report import count_config

    t = count_config("resnet20", "bn", "fp32", batch=2, inference="bn")
    assert {k[2] for k in t.counts} == {"forward"}
    train = count_config("resnet20", "bn", "fp32", batch=2)
    assert t.macs() == train.macs("forward")
    norm = {op: n for (_, cat, _, op, _), n in t.select(category="norm")}
    assert norm["div"] > 0 and norm["sqrt"] < norm["div"]          # per element division, per channel sqrt


def test_parallel_latency_of_one_layer_by_hand():
    """One layer-phase: 1024 int8 mults and 1024 int32 adds, 6 fp32 divisions, 4096 bytes.
    Units (default datapath): int8 mult 256 lanes -> 4 cycles; int32 add 64 lanes -> 16; fp32 div,
    4 unpipelined units of 20 cycles -> 6 * 20 / 4 = 30: the busiest unit takes 30 cycles, plus the
    pipeline latency max(1 int8 mult, 1 int32 add) = 1 -> 31; memory 4096 / 64 = 64 cycles: the
    layer-phase takes max(31, 64) = 64. The serial model: 1024 * 1 + 1024 * 1 + 6 * 20 = 2168."""
    from analysis.cost.tables import DATAPATHS, DEFAULT_CYCLES, load_datapath

    t = CostTally()
    t.add("conv", "gemm", "forward", "mult", "int8", 1024)
    t.add("conv", "gemm", "forward", "add", "int32", 1024)
    t.add("conv", "gemm", "forward", "div", "fp32", 6)
    t.add("conv", "gemm", "forward", "read", "byte", 4096)
    assert t.latency(DEFAULT_CYCLES, load_datapath()) == 64
    assert t.latency(DEFAULT_CYCLES, DATAPATHS["serial"]) == 2168 == t.cycles(DEFAULT_CYCLES)
    t.counts[("conv", "gemm", "forward", "read", "byte")] = 64            # now compute-bound
    assert t.latency(DEFAULT_CYCLES, load_datapath()) == 31
    t.add("fc", "gemm", "forward", "add", "int32", 640)                    # another layer: 10 + 1, in sequence
    assert t.latency(DEFAULT_CYCLES, load_datapath()) == 31 + 11


def test_datapath_overrides_and_errors(tmp_path):
    from analysis.cost.tables import TableError, load_datapath

    good = tmp_path / "t.json"
    good.write_text('{"datapath": {"lanes": {"div": {"fp32": 16}}, "bytes_per_cycle": null}}')
    d = load_datapath(str(good))
    assert d["lanes"]["div"]["fp32"] == 16 and d["bytes_per_cycle"] is None and d["lanes"]["div"]["int8"] == 4
    for bad in ('{"datapath": {"lanes": {"sin": {"fp32": 1}}}}', '{"datapath": {"lanes": {"div": {"fp32": 0}}}}',
                '{"datapath": {"pipelined": {"div": "yes"}}}', '{"datapath": {"width": 3}}'):
        good.write_text(bad)
        with pytest.raises(TableError):
            load_datapath(str(good))


def test_step_table_lists_exactly_what_the_cost_model_counts_and_the_readme_holds_it():
    """One source of truth: every (phase, category, op) the cost model counts for an EOQ ResNet-20
    step has a row in STEP_OPS and every STEP_OPS row is counted; README's table is the rendering."""
    from analysis.cost import step_table as st
    tally = st.resnet20_step()
    counted = {(p, c, o) for (p, c, o, _f) in st.counted(tally)}
    listed = [(s.phase, s.category, s.op) for s in st.STEP_OPS]
    assert len(set(listed)) == len(listed)
    assert counted - set(listed) == set(), "counted but not in the step table"
    assert set(listed) - counted == set(), "in the step table but not counted"
    rows = st.step_rows(tally)
    assert sum(r.count for r in rows if r.op == "mult" and "A codes x W codes" in r.what) == tally.macs("forward")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert st.replace_block(readme, st.markdown(rows)) == readme, \
        "README's step table is stale: python -m analysis.cost.step_table --write README.md"

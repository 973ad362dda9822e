"""The all-integer update (eoq.training.int_update, spec.wd_bits): fixed-point weight decay, the exact
momentum sum and its one rounding, the integer saturation test; against hand-worked numbers, a
big-integer (Fraction) reference, the NumPy reference, and CPU independence of golden files."""
import os
import re
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from eoq.cli import main
from eoq.nn.layers import QLinear
from eoq.nn.prepare import prepare
from eoq.quant import rng
from eoq.quant.presets import get_preset
from eoq.quant.spec import QuantSpec, SpecError
from eoq.training import golden, int_update
from eoq.training.optimizer import EOQSGD, fixed_weight_decay

REF = golden.reference()


def test_fixed_point_weight_decay_hand_worked():
    """An 8-bit mantissa lies in [128, 256): 5e-4 * 2^18 = 131.07 -> 131 * 2^-18; 1e-4 * 2^21 = 209.7 -> 210 * 2^-21."""
    assert fixed_weight_decay(5e-4, 8) == (131, 18)
    assert fixed_weight_decay(1e-4, 8) == (210, 21)
    assert fixed_weight_decay(5e-4, 4) == (8, 14)                   # 8.19 -> 8: 2^-11
    assert REF.fixed_point(5e-4, 8) == (131, 18)                    # the reference's own definition
    for wd in (0.0, -1e-4, 1.0, 2.0 ** -49, float("nan")):
        if wd == 0.0:
            continue
        with pytest.raises(SpecError, match="weight decay"):
            fixed_weight_decay(wd, 8)


def test_saturation_test_is_an_integer_comparison_at_exactly_five_percent():
    """32 of 640 codes saturated is exactly 5%: not more, so the exponent stays (float32 32/640 =
    0.05000000074505806 > 0.05 said otherwise); 33 of 640 moves it."""
    assert int_update.saturation_ratio(0.05) == (1, 20) and int_update.saturation_ratio(0.001) == (1, 1000)
    assert not int_update.saturated(32, 640, 0.05) and int_update.saturated(33, 640, 0.05)
    assert float(np.float32(32) / np.float32(640)) > 0.05               # the old float comparison
    assert REF.ratio(0.05) == (1, 20)


@pytest.mark.parametrize("use_kernel", [False, True])
@pytest.mark.parametrize("saturated,moves", [(32, False), (33, True)])
def test_policy_at_exactly_five_percent_in_every_path(saturated, moves, use_kernel):
    """fc.weight-like 640 codes, `saturated` of them pushed to +127: the torch update (eoq) and the
    fused kernel (eoq-shift's float update path, where the kernel runs) decide alike."""
    from eoq import kernels
    name = "eoq-shift" if use_kernel else "eoq"
    if use_kernel and kernels.load() is None:
        pytest.skip("fused kernels not built here")
    layer = QLinear(64, 10, bias=False)
    spec = get_preset(name)
    prepare(layer, spec, torch.Generator().manual_seed(0))
    lsb = 2.0 ** -8
    codes = torch.zeros(10, 64)
    codes.view(-1)[:saturated] = 127
    codes.view(-1)[saturated:] = 60
    with torch.no_grad():
        layer.weight_exp.fill_(-8)
        layer.weight.copy_(codes * lsb)
    opt = EOQSGD(layer, spec, lr=1e-6, momentum=0.0, weight_decay=0.0, generator=torch.Generator().manual_seed(1))
    layer.weight.grad = torch.zeros_like(layer.weight)
    opt.step()
    assert (float(layer.weight_exp) == -7) == moves


def _bigint_sum(terms):
    """Exact value of a list of (float32 tensor, mult, shift) as Fractions."""
    n = terms[0][0].numel()
    out = [Fraction(0)] * n
    for x, mult, shift in terms:
        for i, v in enumerate(x.flatten().tolist()):
            out[i] += Fraction(v) * mult / Fraction(2) ** shift
    return out


@settings(max_examples=60, deadline=None)
@given(st.integers(-30, -5), st.integers(-12, 12), st.integers(-12, 4), st.integers(0, 2 ** 31 - 1),
       st.sampled_from([1, 2, 3, 4]))
def test_accumulate_is_the_exact_sum(eg, dw, dv, seed, s_mu):
    """g (8-bit codes), wd w (131 x 8-bit codes x 2^-18), mu v ((2^s - 1) x 16-bit codes x 2^-s): S * 2^E0
    equals the Fraction sum exactly while every term lies on the accumulator's grid (the weights'
    and the buffer's exponents within 12 bits of the gradient's: the largest term's top and the
    finest grid less than 60 bits apart; test_accumulate_floors... covers the other case)."""
    ew, ev = eg + dw, eg + dv
    gen = torch.Generator().manual_seed(seed)
    g = torch.randint(-127, 128, (50,), generator=gen).float() * 2.0 ** eg
    w = torch.randint(-127, 128, (50,), generator=gen).float() * 2.0 ** ew
    v = torch.randint(-32767, 32768, (50,), generator=gen).float() * 2.0 ** ev
    terms = [(g, 1, 0), (w, 131, 18), (v, (1 << s_mu) - 1, s_mu)]
    acc, e0 = int_update.accumulate(terms)
    want = _bigint_sum(terms)
    got = [Fraction(int(a)) * Fraction(2) ** e0 for a in acc.tolist()]
    assert got == want


def test_accumulate_floors_terms_below_its_lsb_and_never_overflows():
    """A term 2^70 below the largest one: the accumulator's LSB is 2^(T+2-62); the small term's bits
    under it are dropped by floor (-tiny -> -1 LSB, +tiny -> 0), the large one enters exactly."""
    big = torch.tensor([100.0, -100.0, 3.0])
    tiny = torch.tensor([2.0 ** -70, -(2.0 ** -70), 0.0])
    acc, e0 = int_update.accumulate([(big, 1, 0), (tiny, 1, 0)])
    assert e0 == 7 + 2 - 62                                          # 100 < 2^7
    assert acc.tolist() == [100 * 2 ** 53, -100 * 2 ** 53 - 1, 3 * 2 ** 53]
    assert int(acc.abs().max()) < 2 ** 62


def _momentum_after_one_step(m_bits: int, v=(1000.0, -7.0)):
    """One update of a 2-weight layer with v codes ``v`` at 2^-20 (loaded as a checkpoint's buffer), mu = 7/8, g codes (12, -3) at
    2^-14, w codes (100, -50) at 2^-8, wd 5e-4 = 131 x 2^-18; (new buffer values, M's random bits)."""
    spec = get_preset("eoq").with_changes(name=f"eoq-m{m_bits}", M=m_bits)
    layer = QLinear(2, 1, bias=False)
    prepare(layer, spec, torch.Generator().manual_seed(0))
    with torch.no_grad():
        layer.weight_exp.fill_(-8)
        layer.weight.copy_(torch.tensor([[100.0, -50.0]]) * 2.0 ** -8)
    opt = EOQSGD(layer, spec, lr=0.1, momentum=0.875, weight_decay=5e-4, generator=torch.Generator().manual_seed(3))
    opt.load_state_dict({**opt.state_dict(), "state": {0: {"momentum_buffer": torch.tensor([v]) * 2.0 ** -20}}})
    layer.weight.grad = torch.tensor([[12.0, -3.0]]) * 2.0 ** -14
    keys = rng.draw_keys(torch.Generator().manual_seed(3), 1, 4)[0]
    opt.step()
    b = rng.random_bits((2,), tuple(keys[1].tolist())).tolist()
    return opt.momentum_values(layer.weight).flatten(), b


def test_integer_momentum_sum_hand_worked():
    """mu v = (7000, -49) at 2^-23; g codes (12, -3) at 2^-14 = (6144, -1536) at 2^-23; wd w = 131 x
    (100, -50) at 2^(-8-18) = (13100, -6550) at 2^-26 = (1637.5, -818.75) at 2^-23.
    S = (7000 + 6144 + 1637.5, -49 - 1536 - 818.75) x 2^-23 = (14781.5, -2403.75) x 2^-23;
    max 14781.5 * 2^-23 = 0.00176, log2 = -9.15 -> R = 2^-9.
    SQ16: LSB 2^-24, codes = SR(29563, -4807.5) = (29563, -4808 + [b >= 2^15]).
    SQ8 (eoq's M) keeps 8-bit codes, so it starts from v = (1000, -8) x 2^-20 = (125, -1) x 2^-17:
    S = (14781.5, -56 - 1536 - 818.75 = -2410.75) x 2^-23, the same max, LSB 2^-16, codes =
    SR(115 + 31488/2^16, -19 + 10880/2^16) = (115 + [b >= 34048], -19 + [b >= 54656])."""
    m, b = _momentum_after_one_step(16)
    assert (m * 2.0 ** 24).tolist() == [29563.0, -4808.0 + (b[1] >= 2 ** 15)]
    m, b = _momentum_after_one_step(8, v=(1000.0, -8.0))
    assert (m * 2.0 ** 16).tolist() == [115.0 + (b[0] >= 34048), -19.0 + (b[1] >= 54656)]


def test_momentum_codes_from_a_checkpoints_values():
    """A float buffer (a checkpoint's) becomes M-bit codes and their LSB exactly; values that no
    M-bit grid holds are refused (one clear error), and codes -> values -> codes is the identity."""
    from eoq.training.int_update import momentum_codes
    codes, lsb = momentum_codes(torch.tensor([125.0, -1.0, 0.0]) * 2.0 ** -17, 8)
    assert codes.dtype == torch.int8 and lsb == -17 and codes.tolist() == [125, -1, 0]
    codes, lsb = momentum_codes(torch.tensor([3.0, -1.0]) * 2.0 ** -30, 8)      # a small max: a fine grid
    assert (codes.double() * 2.0 ** lsb).tolist() == [3 * 2.0 ** -30, -(2.0 ** -30)]
    codes, lsb = momentum_codes(torch.zeros(4), 16)
    assert codes.dtype == torch.int16 and codes.tolist() == [0, 0, 0, 0]
    with pytest.raises(SpecError, match="not on a 8-bit grid"):
        momentum_codes(torch.tensor([1000.0, -7.0]) * 2.0 ** -20, 8)
    with pytest.raises(SpecError, match="NaN or Inf"):
        momentum_codes(torch.tensor([float("nan")]), 8)


def test_no_momentum_update_is_one_rounding_of_the_exact_sum():
    """momentum 0: U = SR(L (g + wd w) / 2^(sl + ew)), L = 205, sl = 10 (lr 0.2); against Fractions."""
    spec = get_preset("eoq")
    layer = QLinear(40, 1, bias=False)
    prepare(layer, spec, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(5)
    wc = torch.randint(-127, 128, (1, 40), generator=gen).float()
    gc = torch.randint(-127, 128, (1, 40), generator=gen).float()
    with torch.no_grad():
        layer.weight_exp.fill_(-7)
        layer.weight.copy_(wc * 2.0 ** -7)
    layer.weight.grad = gc * 2.0 ** -12
    opt = EOQSGD(layer, spec, lr=0.2, momentum=0.0, weight_decay=5e-4, generator=torch.Generator().manual_seed(9))
    keys = rng.draw_keys(torch.Generator().manual_seed(9), 1, 4)[0]
    opt.step()
    b = rng.random_bits((40,), tuple(keys[2].tolist())).tolist()
    u = opt.state[layer.weight]["last_update"].flatten().tolist()
    for j in range(40):
        delta = Fraction(205, 2 ** 10) * (Fraction(int(gc[0, j]), 2 ** 12) + Fraction(131, 2 ** 18) *
                                          Fraction(int(wc[0, j]), 2 ** 7)) * 2 ** 7
        want = (int(delta * 2 ** 16 // 1) + b[j]) // 2 ** 16             # floor(floor(y 2^16) + b) / 2^16)
        assert u[j] == max(-31, min(31, want)), j


@pytest.mark.parametrize("spec_file,momentum", [(None, 0.875), ("m16", 0.875), (None, 0.0)])
def test_golden_m8_m16_and_no_momentum_agree_with_the_reference(tmp_path, capsys, spec_file, momentum):
    preset = "eoq"                              # its M: 8 bits
    if spec_file:
        preset = str(tmp_path / "m16.json")
        (tmp_path / "m16.json").write_text('{"base": "eoq", "name": "eoq-m16", "M": 16}')
    out = tmp_path / "g"
    assert main(["golden", "--data", "embedded", "--batch-size", "4", "--steps", "3", "--after", "6",
                 "--preset", preset, "--momentum", str(momentum), "--out", str(out)]) == 0     # 0: none differ
    checked = int(re.search(r"(\d+) tensors recomputed from the inputs, 0 differ", capsys.readouterr().out)[1])
    assert checked > 500
    import json
    manifest = json.loads((out / "manifest.json").read_text())
    with np.load(out / "golden.npz") as z:
        for e in manifest["tensors"]:           # every integer tensor within its declared width
            if e["bits"] and e["bits"] < 32:
                assert np.abs(z[e["name"]].astype(np.int64)).max(initial=0) <= 2 ** (e["bits"] - 1) - 1, e["name"]
    with np.load(out / "golden.npz") as z:
        if momentum:
            bits = 16 if spec_file else 8
            m = z["s1/conv1.weight.M"]
            assert np.abs(m).max() <= 2 ** (bits - 1) - 1 and np.abs(m).max() >= 2 ** (bits - 3)
        else:
            assert "s1/conv1.weight.M" not in z.files


def test_golden_is_the_same_on_any_cpu_capability(tmp_path):
    """One golden file with ATEN_CPU_CAPABILITY=default (scalar float kernels), one with this CPU's
    best: byte for byte the same (fused-kernel-free path, so nothing is compiled for the test)."""
    outs = []
    for cap in ("default", None):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"}
        env.update(EOQ_KERNELS="0", OMP_NUM_THREADS="1")
        if cap:
            env["ATEN_CPU_CAPABILITY"] = cap
        out = tmp_path / (cap or "best")
        r = subprocess.run([sys.executable, "-m", "eoq.cli", "golden", "--data", "embedded", "--batch-size", "4",
                            "--steps", "2", "--after", "3", "--no-verify", "--out", str(out)], env=env,
                           capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0 and "not checked (--no-verify)" in r.stdout, r.stderr[-2000:]
        outs.append(out)
    for f in ("golden.npz", "manifest.json"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes(), f


@pytest.mark.parametrize("change,message", [
    ({"wd_bits": 0}, "wd_bits must be an integer in \\[1, 16\\]"),
    ({"wd_bits": 17}, "wd_bits must be an integer in \\[1, 16\\]"),
    ({"M": 25}, "bit width must be an integer in \\[2, 24\\]"),
    ({"M": 1}, "bit width must be an integer in \\[2, 24\\]"),
    ({"M": None}, "needs M as SQ with stochastic rounding"),
    ({"lr_bits": None}, "needs a fixed-point learning rate"),
])
def test_bad_widths_are_refused_with_one_line(change, message):
    with pytest.raises(SpecError, match=message):
        QuantSpec.from_dict({**get_preset("eoq").to_dict(), **change})


def test_unrepresentable_weight_decay_is_one_error_line(tmp_path, capsys):
    code = main(["train", "--data", "embedded", "--model", "resnet20", "--preset", "eoq", "--epochs", "1",
                 "--train-limit", "256", "--val", "0", "--test-limit", "64", "--weight-decay", "1e-20",
                 "--no-progress", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "weight decay" in err[0] and "2^-48" in err[0]
    assert not (tmp_path / "r" / "checkpoint.pt").exists()

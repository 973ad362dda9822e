"""Golden vectors (eoq golden) and the NumPy reference (eoq/reference/numpy_step.py): the reference
recomputes every tensor of two ResNet-20 integer-engine steps bit for bit from the golden file's
inputs; the simulator records the same tensors; the compiled kernels reach the same weights; the
reference's primitives against hand-worked numbers; the datapath bounds with adversarial codes."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from eoq.cli import main
from eoq.engine import intengine
from eoq.nn.fixup_tail import exact_tail
from eoq.nn.stream import fx_sum
from eoq.quant import rng
from eoq.quant.presets import get_preset
from eoq.training import golden
from eoq.training.loop import train_step
from eoq.training.setup import setup
from eoq import kernels

REF = golden.reference()
B, STEPS, AFTER = 4, 2, 3
INPUTS = (".codes", ".lr", ".key", ".M_in", "/labels", "/dlogits", "/conv1.A", "optimizer.keys")


@pytest.fixture(scope="module")
def data():
    from eoq.training.batches import epoch_order, to_float
    from eoq.training.data import default_val, load_cifar10

    d = load_cifar10("embedded")
    d = d.hold_out(default_val(len(d.train_y)))
    idx = epoch_order(len(d.train_x), 0, 0)[:B * (STEPS + AFTER)]       # what eoq golden takes
    return to_float(torch.from_numpy(d.train_x)[idx]), torch.from_numpy(d.train_y)[idx]


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    assert main(["golden", "--batch-size", str(B), "--steps", str(STEPS), "--after", str(AFTER),
                 "--data", "embedded", "--out", str(out)]) == 0
    return out


def _load(folder):
    with np.load(folder / "golden.npz") as z:
        arrays = {k: z[k] for k in z.files}
    return arrays, json.loads((folder / "manifest.json").read_text())


def test_manifest_lists_every_tensor_in_op_order(golden_dir):
    arrays, manifest = _load(golden_dir)
    names = [e["name"] for e in manifest["tensors"]]
    assert names == manifest["order"] and set(names) == set(arrays) and len(names) == len(set(names))
    for e in manifest["tensors"]:
        assert list(arrays[e["name"]].shape) == e["shape"] and str(arrays[e["name"]].dtype) == e["dtype"]
    config = json.loads(str(arrays["config"]))
    convs = [n[:-len(".weight")] for n in config["stored"] if n.endswith(".weight") and n != "fc.weight"]
    assert len(convs) == 19
    for s in range(STEPS):
        pos = {n: i for i, n in enumerate(names) if n.startswith(f"s{s}/")}
        for c in convs:                  # forward before backward, E before G, every quantizer's key beside it
            for kind in ("A", "acc", "E", "E.key", "dW_acc", "G", "G.key"):
                assert f"s{s}/{c}.{kind}" in pos, (c, kind)
            assert pos[f"s{s}/{c}.acc"] < pos[f"s{s}/logits"] < pos[f"s{s}/dlogits"] < pos[f"s{s}/{c}.E"]
            assert pos[f"s{s}/{c}.E"] < pos[f"s{s}/{c}.G"] < pos[f"s{s}/optimizer.keys"]
        assert sum(n.endswith(".stream") for n in pos) == 10 and sum(n.endswith(".dstream") for n in pos) == 10
        for name in config["stored"]:
            for kind in ("codes", "lr", "M", "U", "new_codes"):
                assert f"s{s}/{name}.{kind}" in pos
        assert arrays[f"s{s}/stages.2.2.convs.1.stream"].dtype == np.int16
        assert arrays[f"s{s}/stages.0.0.convs.0.E"].dtype == np.int8
        assert np.abs(arrays[f"s{s}/stages.0.0.convs.0.E"]).max() > 0        # errors reach the first block


def test_numpy_reference_recomputes_every_tensor_bit_for_bit(golden_dir):
    result = out, arrays, manifest, gaps, reached = REF.recompute(golden_dir)
    assert REF.compare(golden_dir, result) == []
    computed = {n for n in arrays if not n.endswith(INPUTS) and n != "config"}
    assert computed <= set(out)                                  # nothing left out
    assert max(gaps) < 1e-6                                      # the float op, checked loosely
    declared = {e["name"].rsplit(".", 1)[-1]: e["bits"] for e in manifest["tensors"] if e["name"].startswith("s0/")}
    for op, (used, bits) in reached.items():                     # the reference's own widths, within
        assert used <= bits and declared[op] == bits, op         # them, and the file declares the same
    assert {"A", "acc", "E", "dX_acc", "dW_acc", "G", "stream", "dstream", "pre", "S", "M", "U",
            "stepped", "policy", "new_codes"} <= set(reached)
    moved = [n for n in arrays if n.startswith("s0/") and n.endswith(".policy") and arrays[n][0] != 0]
    assert moved                   # step 1 starts from exponents the policy moved: both steps checked
    # the file alone, without torch
    run = subprocess.run([sys.executable, str(golden.REFERENCE), str(golden_dir)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 differ" in run.stdout and "torch imported: False; eoq imported: False" in run.stdout


@pytest.mark.parametrize("change", ["key", "weight"])
def test_the_reference_notices_a_changed_input(golden_dir, tmp_path, change):
    arrays, manifest = _load(golden_dir)
    if change == "key":                   # another key for one error quantizer: its codes change
        name, first = "s0/stages.1.1.convs.1.E.key", "s0/stages.1.1.convs.1.E"
        arrays[name] = arrays[name] ^ np.uint32(1)
    else:                                 # one weight code one LSB up: its accumulator changes
        name, first = "s0/stages.2.0.convs.0.weight.codes", "s0/stages.2.0.convs.0.acc"
        arrays[name] = arrays[name].copy()
        arrays[name].flat[7] += 1 if arrays[name].flat[7] < 127 else -1
    np.savez(tmp_path / "golden.npz", **arrays)
    shutil.copy(golden_dir / "manifest.json", tmp_path / "manifest.json")
    bad = REF.compare(tmp_path)
    assert bad and bad[0] == first


def test_simulator_records_the_same_tensors_and_kernels_reach_the_same_weights(golden_dir, data):
    arrays, manifest = _load(golden_dir)
    exps = {e["name"]: e["exponent"] for e in manifest["tensors"]}
    x, y = data
    sim = golden.record("resnet20", B, STEPS, x, y, after=AFTER, engine="sim")
    common = [n for n in sim.arrays if n != "config"]
    assert len(common) > 1200 and all(n in arrays for n in common)   # all but the accumulators
    sim_exps = {e["name"]: e["exponent"] for e in sim.entries}
    bad = [n for n in common if not np.array_equal(sim.arrays[n], arrays[n]) or sim_exps[n] != exps[n]]
    assert bad == []
    # the compiled kernels, no observer: the same steps reach the golden file's new codes
    s = setup("resnet20", "fixup", "eoq", seed=0, engine="int", lr=0.1, channels_last=True)
    order = [B * STEPS + k * B for k in range(AFTER)] + [k * B for k in range(STEPS)]
    for lo in order:
        train_step(s.model, s.optimizer, x[lo:lo + B].contiguous(memory_format=torch.channels_last), y[lo:lo + B])
    for name, grid in golden.stored_tensors(s.optimizer):
        e = int(grid.exponent)
        assert e == exps[f"s{STEPS - 1}/{name}.new_codes"], name
        codes = (grid.param.detach().double() * 2.0 ** -e).round().numpy()
        assert np.array_equal(codes, arrays[f"s{STEPS - 1}/{name}.new_codes"]), name


def test_reference_primitives_hand_worked():
    assert REF.exponent_of(181, 0) == 7 and REF.exponent_of(182, 0) == 8     # log2: 7.4998, 7.5078
    assert REF.exponent_of(3, -10) == -8 and REF.exponent_of(0, 5) == 0
    assert REF.round_shift(np.array([5, 7, -5, 6, -7]), 1).tolist() == [2, 4, -2, 3, -4]   # ties to even
    codes, e = REF.fx((np.array([40000, -3]), 0))           # 16 bits hold 40000 at 2^1; -1.5 -> -2
    assert e == 1 and codes.tolist() == [20000, -2]
    codes, lsb = REF.sq((np.array([1000, -3]), 0), 8)      # round(log2 1000) = 10 -> LSB 2^3
    assert lsb == 3 and codes.tolist() == [125, 0]
    key = (123456789, 987654321)
    b = REF.random_bits(1001, key)                         # the engine's counter hash (torch ops)
    assert b.tolist() == rng.random_bits((1001,), key).tolist()
    v = np.full(1001, 3)                                   # SR(3 / 4): 1 exactly when b >= 2^14
    assert (REF.sr_shift(v, 2, key) == (b >= 2 ** 14)).all()
    assert REF.f32_of(2 ** 24 + 1, 0) == 2 ** 24 and REF.f32_of(2 ** 24 + 3, 0) == 2 ** 24 + 4
    assert REF.f32_of(-(2 ** 25 + 6), -3) == -(2 ** 25 + 8) / 8


def test_reference_update_hand_worked():
    """One stored tensor, codes (100, -3) at 2^-8, its layer's G codes (12000, -6) at 2^-16, no
    momentum buffer yet, lr 205 * 2^-10, no decay. M = SQ16: max 12000 * 2^-16 = 0.183, round(log2)
    = -2 (12000 / 2^14 = 0.73 >= 2^-1/2), LSB 2^-17, codes (24000, -12) exact. The update in units of
    the weight LSB is M * 205 * 2^(-17 - 10 + 8): 24000 * 205 = 4,920,000 -> floor(x 2^16) = 615,000,
    so U = 9 + [615000 mod 2^16 + b >= 2^16] = 9 + [25,176 + b >= 65,536]; -12 * 205 = -2460 ->
    floor(-2460 / 8) = -308, U = -1 + [b >= 308]. New codes 100 - U, -3 - U (max 91: no rescale)."""
    keys = np.array([[[1, 2], [3, 4], [5, 6], [7, 8]]], dtype=np.uint32)
    cfg = {"momentum": 0.875, "weight_decay": 0.0, "stored": ["w.weight"],
           "preset": {k: {"bits": b} for k, b in (("A", 8), ("E", 8), ("G", 8), ("U", 6), ("M", 16))}}
    cfg["preset"].update(stream_bits=16, weight_policy={"saturate_frac": 0.05, "shrink_bits": 2, "min_exponent": -40})
    state = {"w.weight": {"codes": np.array([100, -3]), "exp": -8, "bits": 8, "m": None}}
    step = REF.Step({"s0/optimizer.keys": keys, "s0/w.weight.lr": np.array([205, 10])}, 0, state, cfg)
    step.grads, step.sgrads = {"w.weight": (np.array([12000, -6]), -16)}, {}
    step.update()
    m, em = step.out["s0/w.weight.M"]
    assert em == -17 and m.tolist() == [24000, -12]
    b = REF.random_bits(2, (5, 6))
    u = [9 + int(25_176 + b[0] >= 65_536), -1 + int(b[1] >= 308)]
    assert step.out["s0/w.weight.U"][0].tolist() == u
    assert state["w.weight"]["codes"].tolist() == [100 - u[0], -3 - u[1]] and state["w.weight"]["exp"] == -8


# ---------------------------------------------------------------------------- datapath bounds
def test_accumulators_pass_between_layers_exactly_at_the_largest_resnet20_k():
    """|acc| <= 127^2 K = 9,290,304 < 2^24 for K = 3 * 3 * 64: all codes at +-127 (adversarial), the
    int32 GEMM and its float32 hand-off are exact, as the reference's int64 sum."""
    a = torch.full((1, 4, 4, 64), 127, dtype=torch.int8)                 # NHWC codes
    w = torch.full((64, 64, 3, 3), -127, dtype=torch.int8)
    acc, _ = intengine.conv_forward(a, w, 1, 1)
    want = REF.conv(a.permute(0, 3, 1, 2).numpy(), w.numpy(), 1, 1)
    assert int(acc.abs().max()) == 127 ** 2 * 576 < 2 ** 24
    assert np.array_equal(acc.permute(0, 3, 1, 2).numpy(), want)
    out = intengine._to_float_nchw(acc, -20, False)
    assert np.array_equal(out.double().numpy() * 2.0 ** 20, want.astype(np.float64))


def _tail_case(bias_exponent):
    """x = (2^20, 160) on the stream grid 2^6 (FX16 of 2^20: LSB 64): 160 is the tie 2.5 LSB, so
    the exact x + b with a tiny positive bias rounds up to 192, x alone to even, 128."""
    x = torch.tensor([2.0 ** 20, 160.0]).view(1, 2, 1, 1)
    s, b = torch.ones(1), torch.tensor([2.0 ** bias_exponent])
    exact = REF.fx(REF.add((np.array([2 ** 20, 160]), 0), (np.array([1]), bias_exponent)))
    return x, s, b, exact


@pytest.mark.parametrize("use_kernel", [True, False])
def test_tail_sum_is_exact_within_53_bits_and_the_floor_keeps_it_there(use_kernel):
    """The tail's v = x * s + b + identity is formed in double: exact while its terms span at most
    53 bits. The eoq preset keeps every stored exponent >= -40, so a Fixup bias is never finer
    than 2^-40 while ResNet-20's sums reach at most about 2^12: the worst case here (2^20 down to
    2^-30) is exact; a bias at 2^-50 (what an unfloored exponent reaches) is lost to rounding and
    the result differs from the exact integer sum (the reason for the floor)."""
    assert get_preset("eoq").weight_policy.min_exponent == -40
    ctx = kernels.disabled() if not use_kernel else torch.no_grad()
    with ctx:
        x, s, b, (codes, e) = _tail_case(-30)
        y, _ = exact_tail(x, s, b, torch.zeros_like(x), 16)
        assert e == 6 and codes.tolist() == [16384, 3]
        assert (y.flatten().double() * 2.0 ** -e).tolist() == codes.tolist()
        x, s, b, (codes, e) = _tail_case(-50)
        y, _ = exact_tail(x, s, b, torch.zeros_like(x), 16)
        assert codes.tolist() == [16384, 3] and (y.flatten().double() * 2.0 ** -e).tolist() == [16384, 2]


@pytest.mark.parametrize("use_kernel", [True, False])
def test_error_sum_at_a_block_input_is_exact_for_int32_and_int16_terms(use_kernel):
    """FX16(dX + e_identity): dX an input-gradient accumulator (|dX| < 2^24, float32-exact) and the
    identity's 16-bit stream error, their LSBs up to 29 bits apart: within 53 bits, exact. Adversarial:
    dX = 2^24 - 1 and identity errors of +-1 LSB at 2^-29, which decide the ties of the rounding."""
    ctx = kernels.disabled() if not use_kernel else torch.no_grad()
    with ctx:
        a = torch.tensor([2.0 ** 24 - 1, 2.0 ** 24 - 1, 2560.0, 1536.0]).view(1, 4, 1, 1)   # ties: 2.5, 1.5 LSB
        b = torch.tensor([2.0 ** -29, -(2.0 ** -29), 2.0 ** -29, -(2.0 ** -29)]).view(1, 4, 1, 1)
        y = fx_sum(a, b, 16)
        ints = np.array([(2 ** 24 - 1) * 2 ** 29 + 1, (2 ** 24 - 1) * 2 ** 29 - 1, 2560 * 2 ** 29 + 1,
                         1536 * 2 ** 29 - 1], dtype=object)
        codes, e = REF.fx((ints, -29))
        assert e == 10 and (y.flatten().double() * 2.0 ** -e).tolist() == codes.tolist()
        assert codes.tolist() == [16384, 16384, 3, 1]


def test_golden_command_refuses_bad_input(tmp_path, capsys):
    assert main(["golden", "--model", "resnet7", "--out", str(tmp_path)]) == 2
    assert main(["golden", "--batch-size", "0", "--out", str(tmp_path)]) == 2
    assert main(["golden", "--after", "-1", "--data", "embedded", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("eoq: error:") == 3 and "--after" in err
    assert not list(tmp_path.iterdir())                 # nothing written


def _doc_fields(section: str) -> set:
    import re
    from pathlib import Path
    doc = (Path(__file__).resolve().parents[1] / "docs" / "golden.md").read_text()
    body = doc.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", body, re.M))


def test_the_schema_document_lists_exactly_the_written_fields(golden_dir):
    arrays, manifest = _load(golden_dir)
    assert _doc_fields("Manifest fields") == set(manifest)
    assert _doc_fields("Tensor entry fields") == {k for e in manifest["tensors"] for k in e}
    written = {e["name"].rsplit("/", 1)[-1].rsplit(".", 1)[-1] for e in manifest["tensors"]}
    assert _doc_fields("Tensor names (suffixes)") == written


def test_widths_and_scales_of_the_manifest(golden_dir):
    """bits beside dtype; U's exponent is its weight's (value = U * 2^e_w); layer geometry given."""
    arrays, manifest = _load(golden_dir)
    for e in manifest["tensors"]:            # the widest value reached, beside the declared width
        if e["bits"] is None:
            assert e["reached"] is None
        else:
            top = int(np.abs(arrays[e["name"]].astype(np.int64)).max()) if arrays[e["name"]].size else 0
            assert e["reached"] == top.bit_length() + 1 <= e["bits"], e["name"]
    with pytest.raises(RuntimeError, match="wider than its declared 8"):
        golden.Golden().put("s0/x.A", np.array([128]), 0, bits=8)
    by = {e["name"]: e for e in manifest["tensors"]}
    u, codes = by["s0/conv1.weight.U"], by["s0/conv1.weight.codes"]
    assert u["bits"] == 6 and u["dtype"] == "int8" and u["exponent"] == codes["exponent"]
    assert by["s0/conv1.acc"]["bits"] == 32 and by["s0/stages.0.0.convs.0.dW_acc"]["bits"] == 64
    assert by["s1/conv1.weight.M_in"]["dtype"] == "int8" and by["s1/conv1.weight.M_in"]["bits"] == 8     # eoq: M8
    for e in manifest["tensors"]:
        if e["bits"]:
            a = arrays[e["name"]]
            assert np.abs(a.astype(np.int64)).max(initial=0) <= 2 ** (e["bits"] - 1) - 1 or e["bits"] >= 32, e["name"]
    assert manifest["layers"]["conv1"] == {"kind": "conv", "in": 3, "out": 16, "kernel": [3, 3], "stride": 1,
                                           "padding": 1}
    assert manifest["layers"]["stages.1.0"]["shortcut"].startswith("option A")
    assert manifest["weight_decay"] == [131, 18]


@pytest.mark.parametrize("damage,message", [
    ("truncate", "corrupt or truncated"), ("garbage", "corrupt or truncated"), ("format", "manifest format"),
    ("missing", "lacks 1 tensor"), ("no_manifest", "no manifest.json"), ("bad_json", "not valid JSON"),
    ("wide_input", "s0/conv1.weight.codes: an input wider than its 8 bits"),
])
def test_a_bad_golden_folder_is_one_line_and_exit_2(golden_dir, tmp_path, damage, message):
    d = tmp_path / "g"
    shutil.copytree(golden_dir, d)
    npz, man = d / "golden.npz", d / "manifest.json"
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    elif damage == "garbage":
        npz.write_bytes(b"not a zip file at all")
    elif damage == "format":
        man.write_text(man.read_text().replace('"eoq-golden-2"', '"eoq-golden-1"'))
    elif damage == "missing":
        m = json.loads(man.read_text())
        m["tensors"].append({**m["tensors"][-1], "name": "s9/nothing.U"})
        man.write_text(json.dumps(m))
    elif damage == "no_manifest":
        man.unlink()
    elif damage == "bad_json":
        man.write_text("{ not json")
    elif damage == "wide_input":            # a stored weight code of 200: not an 8-bit code
        arrays, _ = _load(d)
        arrays["s0/conv1.weight.codes"] = arrays["s0/conv1.weight.codes"].astype(np.int16)
        arrays["s0/conv1.weight.codes"].flat[0] = 200
        np.savez_compressed(npz, **arrays)
    r = subprocess.run([sys.executable, str(golden.REFERENCE), str(d)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]


def test_imagenet_resnet18_stem_maxpool_and_projections_bit_for_bit(tmp_path, capsys):
    """ResNet-18 in the ImageNet layout (7x7/2 stem, 3x3/2 max-pool, 1x1 projection shortcuts) at 64x64."""
    code = main(["golden", "--model", "resnet18", "--stem", "imagenet", "--image-size", "64", "--data", "embedded",
                 "--batch-size", "1", "--steps", "2", "--after", "3", "--out", str(tmp_path / "g")])
    out = capsys.readouterr().out
    assert code == 0 and "tensors recomputed from the inputs, 0 differ" in out
    arrays, manifest = _load(tmp_path / "g")
    moved = [n for n in arrays if n.startswith("s0/") and n.endswith(".policy") and arrays[n][0] != 0]
    assert moved                              # step 1 starts from exponents the policy has moved
    assert manifest["layers"]["maxpool"] == {"kind": "maxpool", "kernel": 3, "stride": 2, "padding": 1}
    assert manifest["layers"]["conv1"]["kernel"] == [7, 7] and manifest["layers"]["conv1"]["stride"] == 2
    names = {e["name"] for e in manifest["tensors"]}
    assert {"s0/stages.1.0.shortcut.G", "s0/stages.1.0.shortcut.dstream", "s0/conv1.stream"} <= names


def test_bottleneck_blocks_bit_for_bit(data, tmp_path):
    """Bottleneck blocks (1x1-3x3/2-1x1, projection shortcuts) behind the ImageNet stem: a narrow
    two-stage ResNet-50-style net, two steps, so the update and the policy run on them too."""
    from eoq.models import Bottleneck, ResNet
    torch.manual_seed(0)
    net = ResNet(Bottleneck, (1, 1), (8, 16), "fixup", 10, shortcut="B", stem="imagenet")
    x = torch.nn.functional.interpolate(data[0], size=(64, 64), mode="bilinear", align_corners=False)
    g = golden.record(net, B, STEPS, x, data[1], after=AFTER)
    golden.write(g, tmp_path)
    checked, bad = golden.verify(tmp_path)
    assert bad == [] and checked > 200
    kinds = {d["kind"] for d in g.layers.values()}
    assert kinds == {"conv", "linear", "maxpool", "block"}
    assert [d["convs"] for d in g.layers.values() if d["kind"] == "block"] == [3, 3]
    assert np.abs(g.arrays["s1/stages.1.0.convs.2.G"]).max() > 0      # the errors reached the last branch conv


def test_a_layout_the_reference_does_not_cover_is_refused(golden_dir, tmp_path):
    bad = tmp_path / "g"
    shutil.copytree(golden_dir, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["layers"]["stages.0.0"]["shortcut"] = "option C"
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(REF.NotCovered, match="option C"):
        golden.verify(bad)
    r = subprocess.run([sys.executable, str(golden.REFERENCE), str(bad)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "option C" in r.stderr


def test_each_operation_of_the_reference_asserts_its_declared_width():
    step = REF.Step({}, 0, {}, {"preset": get_preset("eoq").to_dict()})
    assert step.widths["A"] == 8 and step.widths["acc"] == 32 and step.widths["stream"] == 16
    for op, bits in step.widths.items():
        top = (1 << (bits - 1)) - 1
        step.put(f"x.{op}", np.array([-top, top], dtype=object if bits > 63 else np.int64))
        with pytest.raises(REF.WidthError, match=f"the {bits} bits its operation \\({op}\\)"):
            step.put(f"y.{op}", np.array([0, top + 1], dtype=object if bits > 62 else np.int64))
    assert step.reached == step.widths


def test_widths_are_reported_and_a_hand_made_overflow_fails(golden_dir):
    import re
    manifest = {"tensors": [{"name": "s0/c.A", "bits": 8}, {"name": "s0/c.acc", "bits": 32},
                            {"name": "s0/w.U", "bits": 6}]}
    used = REF.widths({"s0/c.A": (np.array([-127, 5]), -3), "s0/c.acc": (np.array([1 << 20]), 0),
                       "s0/w.U": (np.array([31]), -7)}, manifest)
    assert used == {"A": (8, 8), "acc": (22, 32), "U": (6, 6)}
    for name, value in (("s0/c.A", 128), ("s0/w.U", -32), ("s0/c.acc", 1 << 31)):
        with pytest.raises(REF.WidthError, match=re.escape(name)):
            REF.widths({name: (np.array([0, value]), 0)}, manifest)
    r = subprocess.run([sys.executable, str(golden.REFERENCE), str(golden_dir)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and "widest value reached / declared width per operation, bits: A 8/8" in r.stdout


def test_goldens_exercise_every_branch_of_the_weight_policy_and_a_rounding_tie(data, tmp_path, monkeypatch):
    """lr 2 and an exponent floor at -8: in two recorded steps some tensor's exponent moves up (more
    than 5% of its codes saturated), some moves down (codes below 2^5), some sits at the floor with
    small codes; nearest rounding meets exact ties (half to even). The reference agrees throughout."""
    g = golden.record("resnet20", B, STEPS, *data, after=AFTER, lr=2.0,
                      preset={"base": "eoq", "weight_policy": {"min_exponent": -8}})
    golden.write(g, tmp_path)
    exps = {e["name"]: e["exponent"] for e in g.entries}
    moves = {"up": 0, "down": 0, "floor": 0}
    for t in range(STEPS):
        for name in json.loads(str(g.arrays["config"]))["stored"]:
            before, after = exps[f"s{t}/{name}.codes"], exps[f"s{t}/{name}.new_codes"]
            codes = np.abs(g.arrays[f"s{t}/{name}.new_codes"]).astype(int)
            if after > before:
                moves["up"] += 1
                assert np.mean(np.abs(g.arrays[f"s{t}/{name}.codes"].astype(int) - g.arrays[f"s{t}/{name}.U"]) >= 127) > 0.05
            elif after < before:
                moves["down"] += 1
                assert codes.max() < 64 and np.all(codes % 2 == 0)          # codes below 2^5, doubled
            elif after == -8 and 0 < codes.max() < 32:
                moves["floor"] += 1
    assert all(moves.values()), moves
    ties = []
    shift = REF.round_shift

    def counting(v, s):
        if s > 0:
            r = np.asarray(v) - ((np.asarray(v) >> s) << s)
            ties.append(int(np.count_nonzero(r == 1 << (s - 1))))
        return shift(v, s)

    monkeypatch.setattr(REF, "round_shift", counting)
    checked, bad = golden.verify(tmp_path)
    assert bad == [] and checked > 500 and sum(ties) > 0

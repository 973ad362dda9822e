"""Specs and presets: validation, per-layer overrides, round trips, what `eoq presets` prints."""
import json

import pytest
import torch

from eoq.models import build_model
from eoq.nn.layers import QConv2d, QLinear
from eoq.nn.prepare import grid_params, prepare
from eoq.quant.presets import PRESETS, describe, get_preset, load_spec
from eoq.quant.spec import FLOAT, QuantSpec, SpecError, TensorQuant


def test_presets_exist_and_are_complete():
    assert set(PRESETS) == {"fp32", "eoq", "eoq-float-ends", "eoq-shift", "wageubn"}
    eoq = get_preset("eoq")
    for kind in "WAGES":
        assert getattr(eoq, kind).bits == 8, kind
    assert eoq.U.bits == 6                        # int8 update codes clamped to +-31
    assert eoq.store_bits == 8 and eoq.U.rounding == "stochastic" and not eoq.layers
    assert not get_preset("fp32").quantized
    assert get_preset("wageubn").store_bits == 24 and get_preset("wageubn").bn_stat_bits == 16


@pytest.mark.parametrize("name", list(PRESETS))
def test_round_trip_through_json(name):
    spec = PRESETS[name]
    again = QuantSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again.to_dict() == spec.to_dict()
    assert again.layer("conv1") == spec.layer("conv1") and again.layer("fc") == spec.layer("fc")


def test_per_layer_overrides_resolve_in_order():
    spec = get_preset("eoq").with_changes(layers=(("stages.*", {"E": 6}), ("stages.2.*", "float")))
    assert spec.layer("conv1").E.bits == 8
    assert spec.layer("stages.0.1.convs.0").E.bits == 6
    assert spec.layer("stages.0.1.convs.0").W.bits == 8
    assert spec.layer("stages.2.0.convs.1").any is False


def test_float_ends_preset_on_a_model():
    model = build_model("resnet20", "fixup")
    prepare(model, get_preset("eoq-float-ends"))
    assert model.conv1.quant.any is False and model.fc.quant.any is False
    assert model.blocks()[0].convs[0].quant.W.bits == 8
    names = {g.name for g in grid_params(model)}
    assert "conv1.weight" not in names and "fc.weight" not in names
    assert "stages.0.0.convs.0.weight" in names
    prepare(model, get_preset("eoq"))
    names = {g.name for g in grid_params(model)}
    assert {"conv1.weight", "fc.weight", "fc.bias"} <= names


@pytest.mark.parametrize("data,match", [
    ({"Wbits": 8}, "unknown key 'Wbits'"),
    ({"store_bit": 8}, "did you mean 'store_bits'"),
    ({"W": {"bit": 8}}, "did you mean 'bits'"),
    ({"W": 1}, "bit width"),
    ({"W": 40}, "bit width"),
    ({"E": {"bits": 8, "rounding": "up"}}, "rounding"),
    ({"G": {"bits": 8, "quantizer": "lsq"}}, "quantizer"),
    ({"U": 8}, "store_bits"),
    ({"store_bits": 8}, "U is float"),
    ({"store_bits": 4, "U": 8, "W": 8}, "cannot exceed"),
    ({"layers": {"fc": {"Q": 8}}}, "unknown key 'Q'"),
    ({"weight_policy": {"saturate": 0.1}}, "did you mean 'saturate_frac'"),
    ({"weight_policy": {"saturate_frac": 2}}, "saturate_frac"),
])
def test_bad_specs_are_rejected_with_the_field_named(data, match):
    with pytest.raises(SpecError, match=match):
        QuantSpec.from_dict(data)


def test_load_spec_from_json_file(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({"base": "eoq", "name": "eoq-e6", "E": {"bits": 6, "rounding": "stochastic"}}))
    spec = load_spec(str(path))
    assert spec.E.bits == 6 and spec.W.bits == 8 and spec.name == "eoq-e6"
    with pytest.raises(SpecError, match="unknown preset"):
        load_spec("eoq8")
    with pytest.raises(SpecError, match="not found"):
        load_spec(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(SpecError, match="not valid JSON"):
        load_spec(str(tmp_path / "bad.json"))


def test_describe_prints_every_kind():
    text = describe(get_preset("eoq"))
    for kind in "WAGEUSM":
        assert f"  {kind}: " in text
    assert "8-bit integer codes" in text


def test_prepare_puts_initial_weights_on_grid_without_saturation():
    torch.manual_seed(0)
    model = build_model("resnet20", "fixup")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    prepare(model, get_preset("eoq"))
    for g in grid_params(model):
        codes = g.param.detach() / torch.exp2(g.exponent)
        assert codes.abs().max() <= 127
        lsb = float(torch.exp2(g.exponent))
        assert (g.param.detach() - before[g.name]).abs().max() <= lsb / 2 + 1e-12
        if before[g.name].abs().max() > 0:   # the exponent fits the initial scale: codes use >= 6 bits
            assert codes.abs().max() >= 64
    assert FLOAT.enabled is False and TensorQuant(bits=8).enabled
    assert all(isinstance(m, (QConv2d, QLinear)) for m in [model.conv1, model.fc])


def test_base_override_merges_field_by_field(tmp_path):
    """{"base": "eoq", "E": 6, "G": {"quantizer": "fq"}} once loaded G as float with quantizer fq and E
    with nearest rounding: a kind's override now changes only what it names."""
    from eoq.quant.presets import load_spec

    path = tmp_path / "spec.json"
    path.write_text('{"base": "eoq", "E": 6, "G": {"quantizer": "fq"}, "weight_policy": {"shrink_bits": 3}}')
    spec, eoq = load_spec(str(path)), get_preset("eoq")
    assert (spec.G.bits, spec.G.quantizer, spec.G.rounding) == (8, "fq", eoq.G.rounding)
    assert (spec.E.bits, spec.E.rounding, spec.E.quantizer) == (6, "stochastic", "sq")
    assert spec.weight_policy.saturate_frac == eoq.weight_policy.saturate_frac and spec.weight_policy.shrink_bits == 3
    assert (spec.W, spec.A, spec.U) == (eoq.W, eoq.A, eoq.U)


def test_a_quantizer_without_bits_is_an_error(tmp_path):
    from eoq.quant.presets import load_spec

    path = tmp_path / "spec.json"
    path.write_text('{"base": "fp32", "G": {"quantizer": "fq"}}')
    with pytest.raises(SpecError, match="no bits"):
        load_spec(str(path))
    with pytest.raises(SpecError, match="no bits"):
        QuantSpec.from_dict({"G": {"rounding": "stochastic"}})


def test_training_configuration_takes_a_spec_object():
    """A QuantSpec passed as the preset (once: AttributeError 'QuantSpec' object has no attribute
    'endswith') is kept as plain data, and loads back to the same spec."""
    from eoq.quant.presets import load_spec
    from eoq.training.config import TrainConfig

    mine = get_preset("eoq").with_changes(name="mine", E=TensorQuant(bits=6, rounding="stochastic"))
    cfg = TrainConfig(preset=mine).validate()
    assert isinstance(cfg.preset, dict) and load_spec(cfg.preset) == mine
    json.dumps(cfg.to_dict())

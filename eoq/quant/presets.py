"""Named quantization presets (SPEC section 2). ``eoq presets`` prints them in full.

The EOQ recipe is a reconstruction from the paper's abstract and the authors' predecessor code
(WAGEUBN), WAGE and Fixup; every choice is a field of :class:`~eoq.quant.spec.QuantSpec`, so a user can
switch it from a JSON spec or per layer.
"""
from __future__ import annotations

import json

from .spec import KINDS, QuantSpec, SpecError, TensorQuant, WeightPolicy

_8N = TensorQuant(bits=8, rounding="nearest")
_8S = TensorQuant(bits=8, rounding="stochastic")
# EOQ's 8-bit weights: the exponent goes up only when more than 5% of the codes saturate. A finer
# grid with some clipping trained better than no clipping (5-epoch ResNet-20, the same settings
# otherwise: 0.1% -> 67.44%, 1% -> 69.54%, 5% -> 71.01%; reports/comparison/exponent-policy-ablation-5ep/).
# Exponents go down no further than 2^-40: a Fixup bias finer than that (|b| < 127 * 2^-40) would
# make the elementwise sums wider than 53 bits (see WeightPolicy).
_EOQ_POLICY = WeightPolicy(saturate_frac=0.05, min_exponent=-40)
# EOQ's update codes: int8, stochastic rounding, clamped to +-31 LSBs. At a high learning rate one
# batch's gradient spike, applied in full (up to 127 LSBs, a weight's whole range), collapsed a run
# to chance; the clamp prevents it (reports/comparison/defaults-5ep/).
_U31 = TensorQuant(bits=6, rounding="stochastic")
# EOQ's learning rate: a fixed-point number with an 8-bit mantissa (an integer multiply and a shift
# in hardware); at 5 epochs it cost nothing against the float lr on validation, seeds 0-1
# (reports/lr_format/).
_LR_BITS = 8
# EOQ's weight decay: a fixed-point number with an 8-bit mantissa too (5e-4 = 131 * 2^-18), so that
# mu v + g + wd w is an exact sum of integers rounded once to the momentum buffer (int_update).
_WD_BITS = 8
# The residual stream and its error between blocks in 16-bit fixed point, every elementwise op in
# between exact: an integer datapath's registers (QuantSpec.stream_bits).
_STREAM_BITS = 16

# EOQ's momentum buffer: 8-bit codes (SQ, stochastic rounding, a per-tensor power-of-two exponent),
# so that every tensor of the training state is 8 bits: 16 bits per weight with the weight codes. In
# ResNet-20 30-epoch runs on the integer engine it cost 0.18 points of mean validation accuracy
# against a 16-bit buffer (85.25 +- 0.48% vs 85.43 +- 0.40%, seeds 0-2), within the 0.3 points the
# choice allowed; no momentum at all never learnt (reports/momentum/).
_M8 = TensorQuant(bits=8, rounding="stochastic")

_EOQ = QuantSpec(
    name="eoq",
    W=_8N, A=_8N, G=_8S, E=_8S, U=_U31, S=_8S,
    M=_M8,
    store_bits=8, lr_pow2=False, lr_bits=_LR_BITS, wd_bits=_WD_BITS, stream_bits=_STREAM_BITS, weight_policy=_EOQ_POLICY,
    description=("Full 8-bit EOQ (reconstruction): int8 weight codes with a per-layer power-of-two "
                 "exponent and no float master copy; A by SQ nearest; E and G by SQ with stochastic "
                 "rounding; int8 update codes U in units of the weight LSB by stochastic rounding, "
                 "clamped to +-31 (a gradient spike cannot move a weight across its range in one "
                 "step); Fixup scalars on their own 8-bit grids; momentum buffer 8-bit (SQ, stochastic "
                 "rounding, its own exponent: 16 bits of training state per weight), momentum a "
                 "shift; the learning rate is a fixed-point number with an 8-bit mantissa (L * 2^-s) "
                 "that multiplies the momentum codes exactly (not rounded to a power of two: see "
                 "eoq-shift); the residual stream and its error between blocks in 16-bit fixed point, "
                 "every elementwise operation between the convolutions exact. First conv and "
                 "classifier are 8-bit too."))

PRESETS: dict[str, QuantSpec] = {
    "fp32": QuantSpec(
        name="fp32",
        description="No quantization: float32 weights, activations, gradients, errors and SGD updates."),
    "eoq": _EOQ,
    "eoq-float-ends": _EOQ.with_changes(
        name="eoq-float-ends", layers=(("conv1", "float"), ("fc", "float")),
        description="eoq with the first conv and the classifier kept in float32, as WAGEUBN did."),
    "eoq-shift": _EOQ.with_changes(
        name="eoq-shift", U=_8S, lr_pow2=True, lr_bits=None, wd_bits=None,
        description=("SPEC section 2 to the letter: eoq with the learning rate rounded to a power of two "
                     "(a shift) and update codes in the full int8 range +-127: the earlier definition of "
                     "eoq (5-epoch ResNet-20, seeds 0-2: 70.20% with its own default schedule).")),
    "wageubn": QuantSpec(
        name="wageubn",
        W=_8N, A=_8N, G=TensorQuant(bits=8, quantizer="cq", cq_c=128), E=_8S,
        U=TensorQuant(bits=24, rounding="stochastic"),
        store_bits=24, bn_stat_bits=16, bn_value_bits=8, bn_affine_bits=8,
        layers=(("conv1", "float"), ("fc", "float")),
        description=("WAGEUBN-style (reconstruction): BN kept and quantized (16-bit mean and std, 8-bit "
                     "normalized value, gamma, beta), 8-bit W/A/E, CQ gradients, weights accumulated "
                     "in 24 bits; first conv and classifier in float. Use with --norm bn.")),
}


def get_preset(name: str) -> QuantSpec:
    """The named preset (``PRESETS``: fp32, eoq, eoq-float-ends, eoq-shift, wageubn) as a frozen
    :class:`~eoq.quant.spec.QuantSpec`; change a copy with ``.with_changes(...)``. Unknown names raise
    SpecError listing the presets.

    >>> get_preset("eoq").M.bits
    8
    >>> get_preset("eoq").with_changes(name="eoq-m16", M=16).M.bits
    16
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise SpecError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def load_spec(name_or_path) -> QuantSpec:
    """A QuantSpec (returned as it is), a preset name, or a path to a JSON file holding a spec,
    optionally ``{"base": preset, ...}``: the given fields then change the base's field by field
    (``"E": 6`` keeps E's rounding and quantizer and changes its bits; ``"G": {"quantizer": "fq"}``
    keeps G's bits)."""
    if isinstance(name_or_path, QuantSpec):
        return name_or_path
    if isinstance(name_or_path, dict):          # {"base": preset, ...} as in a JSON file, or QuantSpec.to_dict
        data = dict(name_or_path)
        if "base" in data:
            data = merge_onto(get_preset(data.pop("base")), data)
        return QuantSpec.from_dict(data)
    if not isinstance(name_or_path, str):
        raise SpecError(f"a spec is a QuantSpec, a preset name or a JSON file, got {type(name_or_path).__name__}")
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if not name_or_path.endswith(".json"):
        return get_preset(name_or_path)
    try:
        with open(name_or_path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise SpecError(f"spec file {name_or_path!r} not found") from None
    except json.JSONDecodeError as err:
        raise SpecError(f"spec file {name_or_path!r} is not valid JSON: {err}") from None
    if isinstance(data, dict) and "base" in data:
        data = merge_onto(get_preset(data.pop("base")), data)
    return QuantSpec.from_dict(data)


def merge_onto(base: QuantSpec, changes: dict) -> dict:
    """``base`` as a dict with ``changes`` applied field by field: a tensor kind given as a bit
    width or a mapping changes only what it names (null makes the kind float); the weight policy
    likewise; every other field is replaced."""
    out = base.to_dict()
    for key, value in changes.items():
        if key in KINDS and value is not None and isinstance(out.get(key), dict):
            given = {"bits": value} if isinstance(value, int) and not isinstance(value, bool) else value
            if isinstance(given, dict):
                if out[key]["bits"] is None and given.get("bits") is None and given:
                    raise SpecError(f"spec.{key} sets {', '.join(given)} but {key} has no bits (it is float in "
                                    f"{base.name!r}): give its bits too")
                out[key] = {**out[key], **given}
                continue
        if key == "weight_policy" and isinstance(value, dict):
            out[key] = {**out[key], **value}
            continue
        out[key] = value
    return out


def describe(spec: QuantSpec) -> str:
    """A readable, complete listing of one spec."""
    lines = [f"[{spec.name}]  {spec.description}"]
    for kind in ("W", "A", "G", "E", "U", "S", "M"):
        q = getattr(spec, kind)
        if not q.enabled:
            what = "float32"
        elif kind == "U":
            m = 2 ** (q.bits - 1) - 1
            what = f"integer codes in [-{m}, {m}] ({q.bits}-bit) in units of the weight LSB, {q.rounding} rounding"
        elif q.quantizer == "cq":
            what = f"{q.bits}-bit CQ(c={q.cq_c}), stochastic rounding"
        else:
            what = f"{q.bits}-bit {q.quantizer.upper()}, {q.rounding} rounding"
        lines.append(f"  {kind}: {what}")
    storage = "float32 (SGD)" if spec.store_bits is None else f"{spec.store_bits}-bit integer codes"
    lines.append(f"  weight storage: {storage}")
    if spec.bn_stat_bits or spec.bn_value_bits or spec.bn_affine_bits:
        lines.append(f"  BN: mean/std {spec.bn_stat_bits}-bit, normalized {spec.bn_value_bits}-bit, "
                     f"gamma/beta {spec.bn_affine_bits}-bit")
    lines.append(f"  learning rate rounded to power of two: {spec.lr_pow2}")
    if spec.lr_bits:
        lines.append(f"  learning rate in fixed point: {spec.lr_bits}-bit mantissa x 2^-s")
    if spec.wd_bits:
        lines.append(f"  weight decay in fixed point: {spec.wd_bits}-bit mantissa x 2^-s; mu v + g + wd w an exact "
                     f"integer sum, rounded once (SR) to the {spec.M.bits}-bit momentum buffer")
    if spec.stream_bits:
        lines.append(f"  residual and error stream between blocks: {spec.stream_bits}-bit fixed point, "
                     "elementwise operations exact")
    if spec.store_bits is not None:
        wp = spec.weight_policy
        lines.append(f"  exponent policy: up one bit when > {wp.saturate_frac:g} of codes saturate, "
                     f"down when 0 < max|code| < 2^(k-1-{wp.shrink_bits}), not below 2^{wp.min_exponent}")
    for pattern, override in spec.layers:
        lines.append(f"  layer {pattern}: {override}")
    return "\n".join(lines)

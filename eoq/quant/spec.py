"""Quantization spec: bits, rounding and quantizer per tensor kind, with per-layer overrides.

Tensor kinds (SPEC section 2):
    W  weights as used in the forward pass        A  layer inputs (activations)
    G  weight gradients                           E  errors arriving at a layer's output
    U  weight updates, in units of the weight LSB S  Fixup scalars (biases, multiplier)
    M  optimizer momentum buffer
``bits = None`` keeps a kind in float32. A spec is plain data: it round-trips through
``to_dict``/``from_dict`` (and so through JSON and checkpoints), and unknown keys are rejected
with the closest valid name so that a typo never silently trains something else.
"""
from __future__ import annotations

import difflib
import enum
import fnmatch
from dataclasses import asdict, dataclass, field, fields, replace

from .formats import MIN_EXPONENT, QuantizationError, QuantizerKind, Rounding, check_bits

QUANTIZERS = QuantizerKind.values()
KINDS = ("W", "A", "G", "E", "U", "S", "M")
LAYER_KINDS = ("W", "A", "G", "E", "U")


class SpecError(ValueError):
    """A quantization spec that cannot be used; the message names the field and the fix."""


def _reject_unknown(given, allowed, where: str) -> None:
    for key in given:
        if key not in allowed:
            hint = [a for a in allowed if str(a).lower() == str(key).lower()] or \
                difflib.get_close_matches(str(key), list(allowed), n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SpecError(f"unknown key {key!r} in {where}{did}; valid keys: {', '.join(allowed)}")


def _plain(value):
    """``value`` with every enum member replaced by its string."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    return value.value if isinstance(value, enum.Enum) else value


@dataclass(frozen=True)
class TensorQuant:
    """How one tensor kind is quantized. bits=None means float32 (no quantization)."""

    bits: int | None = None
    rounding: Rounding = Rounding.NEAREST      # given as the string or the member
    quantizer: QuantizerKind = QuantizerKind.SQ
    cq_c: int = 128

    def __post_init__(self):
        try:
            if self.bits is not None:
                check_bits(self.bits)
        except QuantizationError as err:
            raise SpecError(str(err)) from None
        # parsed once here: from now on rounding and quantizer are enum members (and still strings)
        object.__setattr__(self, "rounding", Rounding.parse(self.rounding, SpecError, "rounding"))
        object.__setattr__(self, "quantizer", QuantizerKind.parse(self.quantizer, SpecError, "quantizer"))

    @property
    def enabled(self) -> bool:
        return self.bits is not None

    @classmethod
    def from_value(cls, value, where: str) -> TensorQuant:
        if isinstance(value, TensorQuant):
            return value
        if value is None:
            return cls()
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(bits=value)
        if isinstance(value, dict):
            _reject_unknown(value, [f.name for f in fields(cls)], where)
            if value.get("bits") is None:
                set_ = [k for k, d in (("rounding", "nearest"), ("quantizer", "sq"), ("cq_c", 128))
                        if value.get(k, d) != d]
                if set_:
                    raise SpecError(f"{where} sets {', '.join(set_)} but no bits: give its bits, or leave "
                                    "it float (null)")
            return cls(**value)
        raise SpecError(f"{where} must be null, a bit width or a mapping, got {value!r}")


FLOAT = TensorQuant()


@dataclass(frozen=True)
class LayerQuant:
    """The resolved quantization of one conv/linear layer."""

    W: TensorQuant = FLOAT
    A: TensorQuant = FLOAT
    G: TensorQuant = FLOAT
    E: TensorQuant = FLOAT
    U: TensorQuant = FLOAT
    any: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # whether any kind is quantized; computed once (checked on every forward and backward)
        object.__setattr__(self, "any", any(getattr(self, k).enabled for k in LAYER_KINDS))


@dataclass(frozen=True)
class WeightPolicy:
    """How the power-of-two exponent of stored integer weights is chosen and moved.

    At init the LSB exponent is round(log2 max|w|) + 1 - store_bits (SQ's rule); a layer that
    starts at zero (Fixup's last branch conv, the classifier) uses the max a He-initialised layer
    of the same shape would have (3 standard deviations, times the Fixup branch factor). After
    every update: if more than ``saturate_frac`` of the codes sit at +-(2^(k-1)-1), the exponent
    goes up by one and the codes are halved with stochastic rounding; if 0 < max|code| <
    2^(k-1-shrink_bits) the exponent goes down by one (codes doubled, exact), but not below
    ``min_exponent``. An all-zero tensor keeps its exponent.

    The floor matters for the Fixup scalar biases: a bias that training pushes towards zero keeps
    a few small codes while its exponent walks down one bit per step (to -65 within 400 steps of
    ResNet-20), and the exact sum of a 16-bit stream value and such a bias no longer fits a 53-bit
    (double) or any fixed-width adder. With the floor every forward sum of ResNet-20 spans fewer
    than 53 bits, so the engine's float64 elementwise ops stay exact (eoq/reference/numpy_step.py).
    """

    saturate_frac: float = 0.001
    shrink_bits: int = 2
    min_exponent: int = MIN_EXPONENT

    def __post_init__(self):
        if not 0 <= self.saturate_frac < 1:
            raise SpecError(f"saturate_frac must be in [0, 1), got {self.saturate_frac}")
        if not 1 <= self.shrink_bits <= 4:
            raise SpecError(f"shrink_bits must be in [1, 4], got {self.shrink_bits}")
        if isinstance(self.min_exponent, bool) or not isinstance(self.min_exponent, int) \
                or not MIN_EXPONENT <= self.min_exponent <= 0:
            raise SpecError(f"min_exponent must be an integer in [{MIN_EXPONENT}, 0], got {self.min_exponent!r}")


@dataclass(frozen=True)
class QuantSpec:
    """A full training-quantization recipe.

    store_bits: bits of the stored integer weights (8 for EOQ: no master copy; 24 for WAGEUBN's
    accumulator); None trains float weights. The forward uses W bits of them.
    bn: bits of the BN mean and standard deviation, the normalised value and gamma/beta
    (WAGEUBN; only used by models with norm='bn').
    lr_pow2: learning rates of integer-updated tensors are rounded to a power of two (a shift).
    lr_bits: learning rates of integer-updated tensors are fixed-point numbers L * 2^-s with an
    unsigned ``lr_bits``-bit mantissa L (top bit set), so that the update is an integer product
    of L and the momentum codes and a shift before its stochastic rounding (None: a float lr).
    wd_bits: the all-integer update (eoq.training.int_update): the weight decay of integer-stored
    tensors is a fixed-point number Lw * 2^-sw with a ``wd_bits``-bit mantissa, mu v + g + wd w is an
    exact integer sum rounded once (SR) to M's width, and the update is formed from M's codes
    exactly. Needs lr_bits and an SQ stochastic M (None: weight decay and the momentum sum in float32).
    stream_bits: a Fixup ResNet's residual stream (the block outputs and the stem's output) and
    its error stream (the error at the block boundaries) are held in ``stream_bits``-bit fixed
    point (quantizers.round_fixed: the smallest exponent that holds the max, round half to even),
    and every elementwise operation between two roundings is exact, as in an integer datapath
    (None: float32 arithmetic, each operation rounded as float32 rounds it).
    layers: per-layer overrides, {module-name glob: "float" or {kind: quant}}, applied in order.
    """

    name: str = "custom"
    W: TensorQuant = FLOAT
    A: TensorQuant = FLOAT
    G: TensorQuant = FLOAT
    E: TensorQuant = FLOAT
    U: TensorQuant = FLOAT
    S: TensorQuant = FLOAT
    M: TensorQuant = FLOAT
    store_bits: int | None = None
    bn_stat_bits: int | None = None
    bn_value_bits: int | None = None
    bn_affine_bits: int | None = None
    lr_pow2: bool = False
    lr_bits: int | None = None
    wd_bits: int | None = None
    stream_bits: int | None = None
    weight_policy: WeightPolicy = field(default_factory=WeightPolicy)
    layers: tuple = ()
    description: str = ""

    def __post_init__(self):
        if self.store_bits is not None and not 2 <= self.store_bits <= 24:
            raise SpecError(f"store_bits must be in [2, 24] (float32 holds 24-bit integers exactly), "
                            f"got {self.store_bits}")
        if self.U.enabled and self.store_bits is None:
            raise SpecError("integer updates (U bits set) need integer weight storage: set store_bits")
        if self.store_bits is not None and not self.U.enabled:
            raise SpecError("store_bits set but U is float: integer weights need integer updates (set U bits)")
        if self.W.enabled and self.store_bits is not None and self.W.bits > self.store_bits:
            raise SpecError(f"W bits ({self.W.bits}) cannot exceed store_bits ({self.store_bits})")
        if self.lr_bits is not None:
            if isinstance(self.lr_bits, bool) or not isinstance(self.lr_bits, int) or not 1 <= self.lr_bits <= 24:
                raise SpecError(f"lr_bits must be an integer in [1, 24] (the learning rate's mantissa), "
                                f"got {self.lr_bits!r}")
            if self.lr_pow2:
                raise SpecError("lr_bits and lr_pow2 both set: choose one learning-rate format (lr_pow2 is "
                                "a power of two, lr_bits a fixed-point mantissa)")
            if not self.U.enabled:
                raise SpecError("lr_bits applies to integer updates: set U bits (and store_bits)")
        if self.wd_bits is not None:
            if isinstance(self.wd_bits, bool) or not isinstance(self.wd_bits, int) or not 1 <= self.wd_bits <= 16:
                raise SpecError(f"wd_bits must be an integer in [1, 16] (the weight decay's mantissa), "
                                f"got {self.wd_bits!r}")
            if not self.lr_bits:
                raise SpecError("wd_bits (the all-integer update) needs a fixed-point learning rate: set lr_bits")
            if not (self.M.enabled and self.M.quantizer == "sq" and self.M.rounding == "stochastic"):
                raise SpecError("wd_bits (the all-integer update) needs M as SQ with stochastic rounding and its "
                                "bits (the momentum buffer's width), e.g. \"M\": {\"bits\": 8, \"rounding\": "
                                "\"stochastic\"}")
        if self.stream_bits is not None and (isinstance(self.stream_bits, bool) or not isinstance(self.stream_bits, int)
                                             or not 2 <= self.stream_bits <= 24):
            raise SpecError(f"stream_bits must be an integer in [2, 24] (float32 holds the stream exactly), "
                            f"got {self.stream_bits!r}")
        for name in ("bn_stat_bits", "bn_value_bits", "bn_affine_bits"):
            bits = getattr(self, name)
            if bits is not None:
                TensorQuant(bits=bits)
        for pattern, override in self.layers:
            if override != "float" and not isinstance(override, dict):
                raise SpecError(f"layer override for {pattern!r} must be 'float' or a mapping of kinds")
            if isinstance(override, dict):
                _reject_unknown(override, LAYER_KINDS, f"layers[{pattern!r}]")
                for kind, value in override.items():
                    TensorQuant.from_value(value, f"layers[{pattern!r}].{kind}")

    @property
    def quantized(self) -> bool:
        return any(getattr(self, k).enabled for k in KINDS) or self.store_bits is not None

    def layer(self, name: str) -> LayerQuant:
        """The quantization of the conv/linear layer called ``name`` (its module path)."""
        kinds = {k: getattr(self, k) for k in LAYER_KINDS}
        for pattern, override in self.layers:
            if fnmatch.fnmatchcase(name, pattern):
                if override == "float":
                    kinds = {k: FLOAT for k in LAYER_KINDS}
                else:
                    for kind, value in override.items():
                        kinds[kind] = TensorQuant.from_value(value, f"layers[{pattern!r}].{kind}")
        return LayerQuant(**kinds)

    def to_dict(self) -> dict:
        """Plain data (str, int, float, None, lists, dicts): JSON as it always was, and nothing a
        ``weights_only`` checkpoint load would refuse."""
        out = _plain(asdict(self))
        out["layers"] = [[p, o if o == "float" else {k: _plain(asdict(TensorQuant.from_value(v, k)))
                                                     for k, v in o.items()}] for p, o in self.layers]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> QuantSpec:
        """The spec that ``to_dict`` wrote (JSON's form: kinds as null, a bit width or a mapping;
        enums as strings). Unknown keys raise SpecError naming the closest valid one. A dict of
        changes to a preset, ``{"base": "eoq", ...}``, goes to :func:`eoq.load_spec` instead.

        >>> QuantSpec.from_dict({"name": "w8", "W": 8, "store_bits": None}).W.bits
        8
        """
        if not isinstance(data, dict):
            raise SpecError(f"a spec must be a mapping, got {type(data).__name__}")
        _reject_unknown(data, [f.name for f in fields(cls)], "spec")
        kw = dict(data)
        for kind in KINDS:
            if kind in kw:
                kw[kind] = TensorQuant.from_value(kw[kind], f"spec.{kind}")
        if "weight_policy" in kw and isinstance(kw["weight_policy"], dict):
            _reject_unknown(kw["weight_policy"], [f.name for f in fields(WeightPolicy)], "spec.weight_policy")
            kw["weight_policy"] = WeightPolicy(**kw["weight_policy"])
        if "layers" in kw:
            layers = kw["layers"]
            items = layers.items() if isinstance(layers, dict) else layers
            kw["layers"] = tuple((str(p), o) for p, o in items)
        return cls(**kw)

    def with_changes(self, **changes) -> QuantSpec:
        """A copy with ``changes``, in the forms a JSON spec takes: a tensor kind as a TensorQuant, a
        bit width (its rounding and quantizer kept), a mapping (changes only what it names) or None
        (float32); ``weight_policy`` as a WeightPolicy or a mapping of its fields; ``layers`` as a
        tuple of (glob, override) or a dict. The result is validated like any spec.

        >>> from eoq import get_preset
        >>> m8 = get_preset("eoq").with_changes(name="eoq-m8", M=8)
        >>> m8.M.bits, str(m8.M.rounding)
        (8, 'stochastic')
        """
        _reject_unknown(changes, [f.name for f in fields(self)], "with_changes")
        kw = {}
        for key, value in changes.items():
            if key in KINDS and not isinstance(value, TensorQuant):
                current = getattr(self, key)
                if isinstance(value, int) and not isinstance(value, bool) and current.enabled:
                    value = replace(current, bits=value)
                elif isinstance(value, dict) and current.enabled:
                    value = {**_plain(asdict(current)), **value}
                value = TensorQuant.from_value(value, f"with_changes {key}")
            elif key == "weight_policy" and isinstance(value, dict):
                _reject_unknown(value, [f.name for f in fields(WeightPolicy)], "with_changes weight_policy")
                value = replace(self.weight_policy, **value)
            elif key == "layers" and isinstance(value, dict):
                value = tuple((str(p), o) for p, o in value.items())
            kw[key] = value
        return replace(self, **kw)

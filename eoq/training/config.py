"""Training configuration: one validated dataclass between the CLI and the training loop."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..engine import Engine
from ..models import MODELS, NORMS
from ..quant.presets import load_spec
from ..quant.spec import QuantSpec
from .schedule import CYCLIC, SCHEDULES


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the option and the fix."""


# The default schedule by kind of update and norm; None fields of TrainConfig take these values.
# Each was chosen on 5-epoch ResNet-20 runs (how, and every run tried: reports/comparison/README.md).
# ``momentum_min`` (momentum cycling) is taken from here only together with ``momentum``:
# --momentum alone means no cycling.
DEFAULTS = {
    # float updates: peak 0.2 and a crop padded by 2 trained best (comparison/float-defaults-5ep/)
    "float": {"lr": 0.2, "momentum": 0.875, "momentum_min": None, "nesterov": False,
              "schedule": "onecycle", "warmup": 0.15, "crop_pad": 2},
    # power-of-two lr (eoq-shift): 0.15 -> 0.125, since 0.2 -> 0.25 diverged or collapsed
    # (comparison/exponent-policy-ablation-5ep/, seed-spread-5ep/)
    "pow2": {"lr": 0.15, "momentum": 0.9375, "momentum_min": None, "nesterov": False,
             "schedule": "onecycle", "warmup": 0.15, "crop_pad": 4},
}
NORM_DEFAULTS: dict[tuple[str, str], dict] = {        # (kind, norm) -> overrides of DEFAULTS[kind]
    # BN: Nesterov momentum 0.9 gained over 0.875 (comparison/float-defaults-5ep/)
    ("float", "bn"): {"momentum": 0.9, "nesterov": True},
    # Fixup: OneCycleLR's shape gained (float-defaults-5ep/); at 5 epochs flips alone beat the crop
    # by 2 over seeds 0-2 (comparison/defaults-5ep/)
    ("float", "fixup"): {"schedule": "onecycle-cos", "warmup": 0.3, "momentum": 0.95, "momentum_min": 0.85,
                         "crop_pad": 0},
}
# integer updates with a float lr (eoq, eoq-float-ends): fp32 + Fixup's schedule, the momentum cycled
# between the nearest shifts, beat eoq-shift's own schedule (comparison/defaults-5ep/)
NORM_DEFAULTS[("int", "fixup")] = {**NORM_DEFAULTS[("float", "fixup")], "momentum": 0.9375, "momentum_min": 0.875}

# Long schedules (epochs >= LONG_EPOCHS) overfit without a crop: chosen on validation at 30 epochs,
# seed 0 (comparison/resnet20-30ep/README.md). fp32+Fixup: padding 2 beat 0 and 4 (85.94% against
# 85.06% and 85.44%); eoq: peak 0.2 collapsed at padding 4, and at peak 0.1 padding 2 beat 0 and 4.
# The threshold 15 lies between the two validated lengths (5: flips alone won; 30: padding 2 won).
LONG_EPOCHS = 15
LONG_DEFAULTS: dict[tuple[str, str], dict] = {
    ("float", "fixup"): {"crop_pad": 2},
    ("int", "fixup"): {"crop_pad": 2, "lr": 0.1},
}


def defaults_for(lr_pow2: bool, norm: str, integer_updates: bool, epochs: int = 10) -> dict:
    """The defaults of a run: DEFAULTS[kind] with the (kind, norm) overrides, and from LONG_EPOCHS
    epochs on the LONG_DEFAULTS ones. Integer updates with a float lr (eoq, wageubn) start from the
    float defaults without their float-update tunings (Nesterov, momentum cycling, momenta that are
    not a shift) and take the ("int", norm) ones."""
    if integer_updates and not lr_pow2:
        kind, base = "int", {**DEFAULTS["float"], "nesterov": False, "momentum_min": None}
    else:
        kind = "pow2" if lr_pow2 else "float"
        base = DEFAULTS[kind]
    long = LONG_DEFAULTS.get((kind, norm), {}) if epochs >= LONG_EPOCHS else {}
    return {**base, **NORM_DEFAULTS.get((kind, norm), {}), **long}


@dataclass
class TrainConfig:
    """Everything one training run needs, the fields of ``eoq train`` (one flag each). Unset
    hyperparameters (None) take the defaults of ``DEFAULTS`` / ``NORM_DEFAULTS`` for the preset's
    update kind and the norm (and ``LONG_DEFAULTS`` from 15 epochs on); ``validate()`` raises
    ConfigError with one line for a bad value. Through :func:`eoq.train` every field acts, except
    ``qstats_every``, which needs its observer passed (eoq.train says so if it is missing).

    >>> cfg = TrainConfig(data="embedded", preset="eoq", epochs=1)
    >>> _ = cfg.validate()
    >>> cfg.lr, cfg.momentum, cfg.momentum_min      # eoq's defaults for a short schedule
    (0.2, 0.9375, 0.875)
    """

    model: str = "resnet20"
    norm: str = "fixup"
    preset: str | dict | QuantSpec = "eoq"   # a preset name, a JSON spec file, a dict (QuantSpec.to_dict or
    #                                 {"base": preset, ...} as in a JSON file) or a QuantSpec (kept as its dict)
    engine: str = "sim"
    channels_last: bool = False  # NHWC activations (always on with engine="int")
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None          # None (here and below): the default (DEFAULTS)
    schedule: str | None = None
    warmup: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None     # Nesterov momentum (float updates only)
    momentum_min: float | None = None  # cycle momentum down to this at the lr peak (integer updates:
                                       # rounded to 1 - 2^-s each step)
    label_smoothing: float = 0.0     # cross-entropy target (1 - eps) one-hot + eps / classes
    weight_decay: float = 5e-4
    scalar_lr_scale: float = 0.1
    seed: int = 0
    data: str | None = None
    download: bool = False
    val: int | None = None           # images held out of training for validation (None: 5,000, at most
                                     # a tenth of the training set; 0: none; eoq/training/data.py: hold_out)
    train_limit: int | None = None
    test_limit: int | None = None
    augment: bool = True
    crop_pad: int | None = None      # random-crop zero padding (0: horizontal flips only)
    out: str | None = None           # run directory; None trains in memory (no file written)
    resume: bool = False
    threads: int | None = None
    checkpoint_every: int = 0    # steps between mid-epoch checkpoints (0: only at epoch ends)
    qstats_every: int = 0        # steps between quantization-statistics samples (0: off)
    collapse_epochs: int = 2     # stop when training sits at chance this many epochs (0: never; loop.collapsed)
    progress: bool = True

    def validate(self) -> TrainConfig:
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(MODELS)}")
        if self.norm not in NORMS:
            raise ConfigError(f"unknown norm {self.norm!r}; choose one of: {', '.join(NORMS)}")
        self.engine = Engine.parse(self.engine, ConfigError, "engine").value   # plain str: saved in checkpoints
        if isinstance(self.preset, QuantSpec):      # a spec object: kept as plain data (config.json, checkpoints)
            self.preset = self.preset.to_dict()
        spec = load_spec(self.preset)
        d = defaults_for(spec.lr_pow2, self.norm, spec.U.enabled,
                         self.epochs if isinstance(self.epochs, int) else 0)
        for name in ("lr", "schedule", "warmup", "nesterov", "crop_pad"):
            if getattr(self, name) is None:
                setattr(self, name, d[name])
        if self.momentum is None:       # cycling from the table only where the schedule allows it
            self.momentum = d["momentum"]
            if self.momentum_min is None and self.schedule in CYCLIC:
                self.momentum_min = d["momentum_min"]
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"unknown schedule {self.schedule!r}; choose one of: {', '.join(SCHEDULES)}")
        for name in ("epochs", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"--warmup must be a fraction in [0, 1), got {self.warmup}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.nesterov and (spec.lr_pow2 or spec.U.enabled):
            raise ConfigError("--nesterov applies to float updates only; the integer (EOQ) update is "
                              "plain momentum as a shift")
        if self.momentum_min is not None:
            if not 0 <= self.momentum_min <= self.momentum:
                raise ConfigError(f"--momentum-min must be in [0, momentum={self.momentum}], got {self.momentum_min}")
            if self.schedule not in CYCLIC:
                raise ConfigError(f"--momentum-min needs one of the schedules {', '.join(CYCLIC)}")
        if self.weight_decay < 0 or self.scalar_lr_scale <= 0:
            raise ConfigError("--weight-decay must be >= 0 and --scalar-lr-scale > 0")
        if self.val is not None and (not isinstance(self.val, int) or self.val < 0):
            raise ConfigError(f"--val must be an integer >= 0, got {self.val!r}")
        for name in ("train_limit", "test_limit", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
        if not isinstance(self.crop_pad, int) or not 0 <= self.crop_pad <= 16:
            raise ConfigError(f"--crop-pad must be an integer in [0, 16], got {self.crop_pad!r}")
        if self.checkpoint_every < 0:
            raise ConfigError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.collapse_epochs < 0:
            raise ConfigError(f"--collapse-epochs must be >= 0, got {self.collapse_epochs}")
        if self.qstats_every < 0:
            raise ConfigError(f"--qstats-every must be >= 0, got {self.qstats_every}")
        return self

    # what must match for a checkpoint to be resumed into this configuration
    IDENTITY = ("model", "norm", "preset", "batch_size", "seed", "val", "train_limit")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

"""One call from a model name and a preset to everything a training step needs.

    s = setup("resnet20", "fixup", "eoq", seed=0, lr=0.1)
    loss, logits = train_step(s.model, s.optimizer, x, y)

The order is the training loop's, so a given seed gives the same initial weights and the same
random bits everywhere: torch.manual_seed(seed) -> build_model -> a generator for stochastic
rounding (seeded ``rounding_seed``, default ``seed + 7919`` as ``eoq train``) -> prepare -> EOQSGD.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ..models import build_model
from ..nn.prepare import prepare
from ..quant.presets import load_spec
from ..quant.spec import QuantSpec
from .optimizer import EOQSGD

ROUNDING_SEED_OFFSET = 7919       # the generator of a run with seed s is seeded s + 7919


@dataclass
class Setup:
    """A prepared model, its spec, optimizer and stochastic-rounding generator."""

    model: nn.Module
    spec: QuantSpec
    optimizer: EOQSGD
    generator: torch.Generator


def setup(model: str | nn.Module = "resnet20", norm: str = "fixup", preset: QuantSpec | str | dict = "eoq", *,
          seed: int = 0, rounding_seed: int | None = None, engine: str = "sim", lr: float = 0.1,
          momentum: float = 0.875, weight_decay: float = 5e-4, scalar_lr_scale: float = 0.1,
          nesterov: bool = False, num_classes: int = 10, channels_last: bool = False,
          small_input: bool = True) -> Setup:
    """Build (or take) a model, bind ``preset`` (a preset name, a JSON spec file or a QuantSpec)
    on ``engine`` and make its optimizer. ``norm``, ``num_classes`` and ``small_input`` (an
    ImageNet-layout net's 3x3/1 stem without max-pool; False: its 7x7/2 stem and 3x3/2 max-pool)
    apply to a model name only;
    ``channels_last`` converts the model before the optimizer sees its parameters (NHWC weights
    take the optimizer's unfused path, about 30 ms a ResNet-20 step: eoq train keeps the weights
    contiguous and gives the layers NHWC inputs instead)."""
    spec = load_spec(preset)
    torch.manual_seed(seed)
    if isinstance(model, str):
        model = build_model(model, norm, num_classes=num_classes, small_input=small_input)
    generator = torch.Generator().manual_seed(seed + ROUNDING_SEED_OFFSET if rounding_seed is None else rounding_seed)
    prepare(model, spec, generator, engine=engine)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = EOQSGD(model, spec, lr=lr, momentum=momentum, weight_decay=weight_decay,
                       scalar_lr_scale=scalar_lr_scale, generator=generator, nesterov=nesterov)
    return Setup(model, spec, optimizer, generator)

"""A trained run back in memory from its directory, in one call: ``eoq.load_trained(run_dir)``.

``load_state_dict`` into a fresh model is not enough: the model must first be prepared with the
spec the run trained with (integer-stored weights, their exponents, the engine), or the weights
load into an unquantized model without a word. This rebuilds the model from the checkpoint's own
configuration and spec, then loads the model, optimizer and generator states.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..quant.spec import QuantSpec
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig
from .metrics import metrics_table
from .optimizer import EOQSGD
from .setup import setup
from .table import Table


@dataclass
class TrainedRun:
    """A finished (or interrupted) run: its configuration, spec, prepared model, optimizer and
    generator as they were at the checkpoint, and its metrics."""

    cfg: TrainConfig
    spec: QuantSpec
    model: torch.nn.Module
    optimizer: EOQSGD
    generator: torch.Generator
    epoch: int
    metrics: Table


def load_trained(run_dir, checkpoint: str = "checkpoint.pt") -> TrainedRun:
    """The run in ``run_dir`` (``eoq train --out``) at its checkpoint, model in eval mode."""
    state = load_checkpoint(Path(run_dir) / checkpoint)
    try:
        cfg, spec = TrainConfig.from_dict(state["config"]), QuantSpec.from_dict(state["spec"])
        s = setup(cfg.model, cfg.norm, spec, seed=cfg.seed, engine=cfg.engine, lr=cfg.lr or 0.1,
                  momentum=cfg.momentum or 0.0, weight_decay=cfg.weight_decay, scalar_lr_scale=cfg.scalar_lr_scale,
                  nesterov=bool(cfg.nesterov), num_classes=state["model"]["fc.weight"].shape[0])
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.generator.set_state(state["generator"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{str(Path(run_dir) / checkpoint)!r} does not fit its own configuration: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    metrics = metrics_table(state.get("rows", []))
    return TrainedRun(cfg, spec, s.model.eval(), s.optimizer, s.generator, int(state["epoch"]), metrics)

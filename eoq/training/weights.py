"""A trained network's weights alone, for shipping: ``weights.pt`` and its sha256, beside a run's files.

A training checkpoint (``checkpoint.pt``) holds the optimizer state and the generator too, and is
never committed. ``export_weights(run_dir)`` writes ``weights.pt``: the run's configuration, its
spec and the model's state (weights, integer-stored tensors as exact float views of their codes
with their exponent buffers, BN running statistics): a few MB, loadable with ``weights_only=True``.
``weights.sha256`` holds its digest (``sha256sum -c`` format), checked on load. :func:`load_base`
rebuilds the prepared model from either file.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from ..quant.spec import QuantSpec
from .atomic import atomic_write
from .checkpoint import CheckpointError, load_checkpoint
from .config import TrainConfig
from .setup import setup

FORMAT = "eoq-weights-1"
WEIGHTS, DIGEST = "weights.pt", "weights.sha256"


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_weights(run_dir) -> Path:
    """``run_dir``/weights.pt (and weights.sha256) from its checkpoint.pt; returns the path."""
    run_dir = Path(run_dir)
    state = load_checkpoint(run_dir / "checkpoint.pt")
    out = run_dir / WEIGHTS
    with atomic_write(out) as fh:
        torch.save({"format": FORMAT, "config": state["config"], "spec": state["spec"], "model": state["model"],
                    "epoch": int(state["epoch"])}, fh)
    with atomic_write(run_dir / DIGEST, "w") as fh:
        fh.write(f"{sha256(out)}  {WEIGHTS}\n")
    return out


def _read(run_dir: Path) -> dict:
    """The state of weights.pt (digest checked) or, without it, of checkpoint.pt."""
    path = run_dir / WEIGHTS
    if not path.exists():
        if not (run_dir / "checkpoint.pt").exists():
            raise CheckpointError(f"{str(run_dir)!r} holds neither {WEIGHTS} nor checkpoint.pt: not a trained run "
                                  "(eoq train --out DIR writes one)")
        return load_checkpoint(run_dir / "checkpoint.pt")
    if (run_dir / DIGEST).exists():
        want = (run_dir / DIGEST).read_text().split()[0]
        if sha256(path) != want:
            raise CheckpointError(f"{str(path)!r} does not match its {DIGEST}: corrupt or changed")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:          # a corrupt or truncated file: one line
        raise CheckpointError(f"{str(path)!r} is corrupt or truncated ({type(err).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an eoq weights file ({FORMAT})")
    return state


def load_base(run_dir, lr: float = 0.01, momentum: float | None = None, weight_decay: float | None = None):
    """(TrainConfig, QuantSpec, Setup) of the trained run in ``run_dir``: its prepared model with the
    trained weights and a fresh optimizer (``lr``; momentum and weight decay the run's unless given)."""
    run_dir = Path(run_dir)
    state = _read(run_dir)
    try:
        cfg, spec = TrainConfig.from_dict(state["config"]), QuantSpec.from_dict(state["spec"])
        s = setup(cfg.model, cfg.norm, spec, seed=cfg.seed, engine=cfg.engine, lr=lr,
                  momentum=cfg.momentum if momentum is None else momentum,
                  weight_decay=cfg.weight_decay if weight_decay is None else weight_decay,
                  scalar_lr_scale=cfg.scalar_lr_scale, nesterov=bool(cfg.nesterov),
                  num_classes=state["model"]["fc.weight"].shape[0])
        s.model.load_state_dict(state["model"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise CheckpointError(f"{str(run_dir)!r}: its weights do not fit its own configuration: "
                              f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return cfg, spec, s

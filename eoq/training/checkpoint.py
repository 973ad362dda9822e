"""Checkpoints: written atomically, loaded with ``weights_only=True``, checked before use.

A checkpoint holds the model state (integer-stored weights are exact float views of their codes,
with their exponent buffers), the optimizer state, the stochastic-rounding generator state, the
position (epoch, step within the epoch), the running sums of the epoch and the metrics so far, and
the configuration it was made with.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch

from .atomic import atomic_write

FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or from another run."""


def save_checkpoint(path, state: dict) -> None:
    state = dict(state, format=FORMAT)
    with atomic_write(path) as fh:
        torch.save(state, fh)


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {str(path)!r}: nothing to resume (drop --resume, or resume=True, "
                              "to start a new run)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt or truncated ({first}); "
                              "delete it to start over") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an eoq checkpoint (format {FORMAT})")
    return state

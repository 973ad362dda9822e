"""Online adaptation: a trained network learns from a shifted stream of labelled images, a few at a time.

A device receives a network trained elsewhere (``eoq train``; its ``weights.pt`` or checkpoint) and
adapts it to what its own camera sees. Here the shift is a CIFAR-10-C-style corruption
(:mod:`eoq.training.corruptions`) of the training images; the stream is ``samples`` of them in an
order seeded by ``seed`` (each image corrupted with its own noise draw), fed ``batch_size`` at a
time with the network's own update rule (the preset's: EOQ's integer update on ``--engine int``,
SGD for fp32), at a constant ``lr``. The score is the accuracy on the corrupted test images (or,
``split="val"``, on the corrupted validation images, where the learning rate is chosen), read at
``points`` of the stream (images seen), and the clean test accuracy at the end (what adaptation
forgets). BN networks adapt with batch statistics (``bn="batch"``: train mode, as in training,
running statistics updated) or with their running statistics frozen (``bn="frozen"``: BN layers in
eval mode; weights and BN affine parameters still adapt). Every reading is recorded with the
seconds of adaptation so far (training steps only), so seconds per adapted image follow.

Resumable: a checkpoint (model, optimizer, generator, position, rows) is written atomically at every
point, and ``resume`` continues from it; a resumed adaptation equals an uninterrupted one.
"""
from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_write
from .batches import to_float
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError
from .corruptions import CorruptionError, check, corrupt_many
from .csvfile import write_rows
from .data import default_val, load_cifar10
from .loop import TrainingDiverged, evaluate, train_step
from .progress import tqdm
from .weights import load_base

POINTS = (0, 100, 250, 500, 1000, 2000)
ROUNDING_OFFSET = 104_729          # the adaptation's rounding generator: seed + this


class BNMode(str, enum.Enum):
    BATCH = "batch"      # train mode: batch statistics, running statistics updated
    FROZEN = "frozen"    # eval mode for BN: running statistics used and kept


@dataclass
class AdaptConfig:
    """One adaptation run (``eoq adapt``): see the module doc."""

    run_dir: str
    corruption: str = "gaussian_noise"
    severity: int = 3
    batch_size: int = 1
    samples: int = 1000
    lr: float = 0.01
    momentum: float | None = None        # None: the base run's
    weight_decay: float | None = None    # None: the base run's
    bn: str = "batch"
    seed: int = 0
    points: tuple = POINTS
    split: str = "test"                  # where the corrupted accuracy is read: "test" or "val"
    eval_limit: int | None = None        # the first N images of that split (class-interleaved subset)
    data: str | None = None              # None: the base run's data source
    out: str | None = None
    resume: bool = False
    threads: int | None = 1
    progress: bool = True

    def validate(self) -> None:
        try:
            check(self.corruption, self.severity)
        except CorruptionError as err:
            raise ConfigError(str(err)) from None
        if self.batch_size < 1 or self.samples < 1:
            raise ConfigError(f"--batch-size and --samples must be positive, got {self.batch_size} and {self.samples}")
        if self.batch_size > self.samples:
            raise ConfigError(f"--batch-size {self.batch_size} is larger than the stream (--samples {self.samples})")
        if not self.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if self.bn not in {m.value for m in BNMode}:
            raise ConfigError(f"--bn must be 'batch' or 'frozen', got {self.bn!r}")
        if self.split not in ("test", "val"):
            raise ConfigError(f"--split must be 'test' or 'val', got {self.split!r}")
        if self.resume and not self.out:
            raise ConfigError("--resume needs --out (where the adaptation's checkpoint is)")


@dataclass
class AdaptRun:
    """The readings of one adaptation: rows of (images, corrupted accuracy, seconds), the clean
    accuracy at the end, and seconds per adapted image."""

    cfg: AdaptConfig
    rows: list = field(default_factory=list)
    clean_acc: float = float("nan")

    @property
    def seconds_per_image(self) -> float:
        last = self.rows[-1] if self.rows else None
        return last["seconds"] / last["images"] if last and last["images"] else float("nan")


def _bn_modules(model):
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            or type(m).__name__ == "QBatchNorm2d"]


def set_mode(model: torch.nn.Module, bn: str) -> None:
    """Train mode, with BN layers in eval mode when ``bn`` is frozen (their running statistics are
    then used and never updated; their affine parameters still train)."""
    model.train()
    if bn == BNMode.FROZEN:
        for m in _bn_modules(model):
            m.eval()


def interleaved(labels: np.ndarray) -> np.ndarray:
    """Indices of ``labels`` ordered round robin over the classes (first of each class, second of
    each, ...), each class in its original order: any prefix is class-balanced."""
    rank = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((labels, rank))


def _stream(cfg: AdaptConfig, data) -> tuple[np.ndarray, np.ndarray]:
    """The corrupted stream: ``samples`` training images in the seed's order, each its own draw."""
    order = np.random.default_rng(cfg.seed).permutation(len(data.train_y))[:cfg.samples]
    if len(order) < cfg.samples:
        raise ConfigError(f"--samples {cfg.samples} is more than the {len(data.train_y)} training images")
    return corrupt_many(data.train_x[order], cfg.corruption, cfg.severity, seed=cfg.seed), data.train_y[order]


def _eval_set(cfg: AdaptConfig, data):
    x, y = (data.test_x, data.test_y) if cfg.split == "test" else (data.val_x, data.val_y)
    if cfg.eval_limit is not None:          # the arrays are sorted by class: take them interleaved
        idx = interleaved(y)[:cfg.eval_limit]
        x, y = x[idx], y[idx]
    # the evaluation images get draws of their own (seed 10^6 + i), the same for every adaptation seed
    return corrupt_many(x, cfg.corruption, cfg.severity, seed=1_000_000), y, x, y


def adapt(cfg: AdaptConfig) -> AdaptRun:
    """Run the adaptation ``cfg`` describes; see the module doc."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    base_cfg, spec, s = load_base(cfg.run_dir, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.bn == BNMode.FROZEN and not _bn_modules(s.model):
        raise ConfigError(f"--bn frozen applies to BN networks; {cfg.run_dir!r} is {base_cfg.norm}")
    s.generator.manual_seed(cfg.seed + ROUNDING_OFFSET)
    data = load_cifar10(cfg.data or base_cfg.data)
    own = cfg.data is None or cfg.data == base_cfg.data     # the base run's data: its own held-out split
    data = data.hold_out(base_cfg.val if own and base_cfg.val is not None else default_val(len(data.train_y)))
    if cfg.split == "val" and data.val_x is None:
        raise ConfigError("--split val: the base run held out no validation images")
    xs, ys = _stream(cfg, data)
    ex, ey, cx, cy = _eval_set(cfg, data)          # uint8 images: evaluate() normalises them
    fmt = torch.channels_last if base_cfg.engine == "int" or base_cfg.channels_last else torch.contiguous_format
    points = sorted({p for p in cfg.points if 0 <= p <= cfg.samples} | {cfg.samples})
    run, pos, seconds = AdaptRun(cfg), 0, 0.0
    out = Path(cfg.out) if cfg.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        if (out / "adapt.pt").exists() and not cfg.resume:
            raise ConfigError(f"{str(out)!r} holds an adaptation already: --resume to continue it, or another --out")
        with atomic_write(out / "adapt.json", "w") as fh:
            json.dump({**asdict(cfg), "base": {"model": base_cfg.model, "norm": base_cfg.norm, "spec": spec.name,
                                               "engine": base_cfg.engine}}, fh, indent=1)
    if cfg.resume and out is not None and (out / "adapt.pt").exists():
        state = load_checkpoint(out / "adapt.pt")
        if state.get("adapt") != _identity(cfg):
            raise CheckpointError(f"{str(out / 'adapt.pt')!r} is from another adaptation (different run, "
                                  "corruption, severity, batch, lr, bn or seed)")
        s.model.load_state_dict(state["model"])
        s.optimizer.load_state_dict(state["optimizer"])
        s.generator.set_state(state["generator"])
        pos, seconds, run.rows = int(state["pos"]), float(state["seconds"]), list(state["rows"])

    def read(images_seen: int) -> None:
        acc = evaluate(s.model, ex, ey, memory_format=fmt)
        run.rows.append({"images": images_seen, "acc": acc, "seconds": seconds})
        if out is not None:
            write_rows(out / "adapt.csv", run.rows, float_format=".6g")
            save_checkpoint(out / "adapt.pt", {"adapt": _identity(cfg), "model": s.model.state_dict(),
                                               "optimizer": s.optimizer.state_dict(),
                                               "generator": s.generator.get_state(), "pos": images_seen,
                                               "seconds": seconds, "rows": run.rows})

    if not run.rows and 0 in points:            # a fresh start: the base network's own accuracy
        read(0)
    bar = tqdm(total=cfg.samples, initial=pos, desc=f"adapt {cfg.corruption} {cfg.severity}",
               disable=not cfg.progress, unit="img")
    while pos < cfg.samples:
        end = min(pos + cfg.batch_size, cfg.samples)
        x = to_float(torch.from_numpy(xs[pos:end])).contiguous(memory_format=fmt)
        y = torch.from_numpy(ys[pos:end])
        set_mode(s.model, cfg.bn)
        t = time.perf_counter()
        try:
            train_step(s.model, s.optimizer, x, y)
        except TrainingDiverged as err:
            raise TrainingDiverged(f"adaptation diverged at image {end} of {cfg.samples} (lr {cfg.lr:g}): {err}; "
                                   "try a lower --lr") from None
        seconds += time.perf_counter() - t
        bar.update(end - pos)
        crossed = [p for p in points if pos < p <= end]
        pos = end
        if crossed:
            read(pos)
    bar.close()
    run.clean_acc = evaluate(s.model, cx, cy, memory_format=fmt)
    if out is not None:
        write_rows(out / "adapt.csv", [dict(r, clean_acc=run.clean_acc if r is run.rows[-1] else float("nan"))
                                       for r in run.rows], float_format=".6g")
    return run


def _identity(cfg: AdaptConfig) -> dict:
    keep = ("corruption", "severity", "batch_size", "samples", "lr", "momentum", "weight_decay", "bn", "seed",
            "split", "eval_limit")
    d = {k: v for k, v in asdict(cfg).items() if k in keep}
    d["run_dir"] = str(Path(cfg.run_dir).resolve())
    return d

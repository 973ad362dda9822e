"""The training loop: config -> data, model, spec, optimizer -> epochs -> metrics.csv + checkpoints.

Output directory layout:
    config.json      the configuration (with the resolved spec)
    metrics.csv      one row per finished epoch (see metrics.py)
    checkpoint.pt    the latest checkpoint (every epoch, and every N steps with checkpoint_every)
A run resumed with ``resume=True`` continues from the checkpoint's epoch and step; data order,
augmentation and stochastic rounding continue exactly (see augment.py), so the result is the same
as the uninterrupted run's. SIGINT/SIGTERM save a checkpoint at the next step boundary and stop.
"""
from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import allocator, distributed
from .atomic import atomic_write
from .augment import eval_batches, steps_per_epoch, train_batches
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import default_val, load_cifar10
from .metrics import write_metrics
from .models import build_model
from .observe import observing
from .optimizer import EOQSGD
from .prepare import prepare
from .presets import load_spec
from .quantizers import QuantizationError
from .schedule import lr_at, momentum_at
from .spec import QuantSpec


class TrainingDiverged(RuntimeError):
    """Loss or weights became NaN/Inf; the last good checkpoint is kept."""


class Interrupted(RuntimeError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved."""

    def __init__(self, msg: str, signum: int):
        super().__init__(msg)
        self.signum = signum


@dataclass
class Run:
    """Everything a training run holds in memory."""

    cfg: TrainConfig
    model: torch.nn.Module
    optimizer: EOQSGD
    generator: torch.Generator
    data: object
    epoch: int = 0
    step: int = 0                     # batches done in the current epoch
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0})
    rows: list = field(default_factory=list)


def build_run(cfg: TrainConfig, spec: QuantSpec | None = None) -> Run:
    """Data, model (seeded init), spec bound to the model, optimizer, RNG for stochastic rounding.
    ``spec`` (a resumed run's own) replaces the one ``cfg.preset`` names today."""
    cfg.validate()
    allocator.tune()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_cifar10(cfg.data, download=cfg.download)
    if cfg.val is None:
        cfg.val = default_val(len(data.train_y))
    data = data.hold_out(cfg.val).subset(cfg.train_limit, cfg.test_limit)
    spec = spec if spec is not None else load_spec(cfg.preset)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.norm, num_classes=len(data.classes))
    generator = torch.Generator().manual_seed(cfg.seed + 7919)
    prepare(model, spec, generator, engine=cfg.engine)
    opt = EOQSGD(model, spec, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                 scalar_lr_scale=cfg.scalar_lr_scale, generator=generator, nesterov=cfg.nesterov)
    return Run(cfg, model, opt, generator, data)


def checkpoint_state(run: Run) -> dict:
    return {"config": run.cfg.to_dict(), "spec": run.optimizer.spec.to_dict(), "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "generator": run.generator.get_state(),
            "epoch": run.epoch, "step": run.step, "sums": dict(run.sums), "rows": list(run.rows)}


def restore(run: Run, state: dict) -> None:
    saved = state.get("config", {})
    for key in TrainConfig.IDENTITY:
        if saved.get(key) != getattr(run.cfg, key):
            raise CheckpointError(f"checkpoint was made with {key}={saved.get(key)!r}, this run has "
                                  f"{key}={getattr(run.cfg, key)!r}; resume with the same settings or use another --out")
    try:
        run.model.load_state_dict(state["model"])
        run.optimizer.load_state_dict(state["optimizer"])
        run.generator.set_state(state["generator"])
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(f"checkpoint does not fit this model/preset: {str(err).splitlines()[0]}") from None
    run.epoch, run.step = int(state["epoch"]), int(state["step"])
    run.sums, run.rows = dict(state["sums"]), list(state["rows"])


def train_step(model: torch.nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor,
               label_smoothing: float = 0.0):
    """One SGD step on (x, y); returns (loss, logits). The loss is cross-entropy against
    (1 - label_smoothing) one-hot + label_smoothing / classes.

    Raises TrainingDiverged when the loss is not finite or a quantizer meets NaN/Inf."""
    try:
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()}")
        optimizer.zero_grad(set_to_none=True)
        if distributed.active():           # x, y are this process's shard (eoq/distributed.py)
            (loss / distributed.world()).backward()
            distributed.reduce_other_grads(model)
        else:
            loss.backward()
        optimizer.step()
    except QuantizationError as err:
        raise TrainingDiverged(str(err).split(":")[0]) from None
    return loss, logits


def evaluate(model: torch.nn.Module, images, labels, batch_size: int = 500,
             memory_format=torch.contiguous_format) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in eval_batches(images, labels, batch_size):
            correct += int((model(x.contiguous(memory_format=memory_format)).argmax(1) == y).sum())
    model.train()
    return 100.0 * correct / max(len(labels), 1)


class _Signals:
    """Turns SIGINT/SIGTERM into a flag checked between steps."""

    def __init__(self):
        self.received = None

    def __enter__(self):
        self.old = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


# Schedule settings a resumed run takes from its checkpoint when not given again, so that a change
# of defaults between versions cannot change a run half-way; a checkpoint made before a setting
# existed gets the value that version used.
SCHEDULE_FIELDS = {"lr": None, "schedule": "onecycle", "warmup": 0.15, "momentum": None,
                   "momentum_min": None, "nesterov": False, "crop_pad": 4}


def _schedule_from(cfg: TrainConfig, saved: dict) -> None:
    for name, before in SCHEDULE_FIELDS.items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, saved.get(name, before))


def _saved_spec(state: dict, out: Path, preset: str) -> QuantSpec | None:
    """The spec a resumed run started with (its checkpoint's, or for checkpoints that predate that,
    its config.json's), so that a preset redefined between versions cannot change a run half-way
    (the eoq preset did in the sixth session; eoq-shift is the old one)."""
    if state.get("config", {}).get("preset") != preset:
        return None                                   # restore() names the mismatch
    saved = state.get("spec")
    if saved is None and (out / "config.json").exists():
        try:
            saved = json.loads((out / "config.json").read_text()).get("spec")
        except (OSError, ValueError, AttributeError):
            saved = None
    if saved is None:
        return None
    spec = QuantSpec.from_dict(saved)
    if spec != load_spec(preset):
        print(f"eoq: resuming with the quantization spec this run started with; {preset!r} is defined "
              "differently today", file=sys.stderr)
    return spec


def train(cfg: TrainConfig, run: Run | None = None, observers: tuple = ()) -> Run:
    """Train as ``cfg`` says; returns the finished run (its ``rows`` are the metrics).

    ``observers`` are attached to the quantization hook (eoq/observe.py) for the whole run; those
    with ``step_begin(global_step)`` hear of every step, those with ``save(dir)`` save into
    ``out/qstats`` after every epoch."""
    if distributed.init_from_env() and cfg.batch_size % distributed.world():
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {distributed.world()} "
                          "processes of data-parallel training")
    lead = distributed.rank() == 0          # only the first process writes files
    out = Path(cfg.out)
    ckpt = out / "checkpoint.pt"
    state = load_checkpoint(ckpt) if cfg.resume else None
    if state is not None and run is None:
        _schedule_from(cfg, state.get("config", {}))
        run = build_run(cfg, _saved_spec(state, out, cfg.preset))
    run = run or build_run(cfg)
    if state is not None:
        restore(run, state)
    elif out.exists() and any((out / f).exists() for f in ("checkpoint.pt", "metrics.csv")):
        raise ConfigError(f"output directory {str(out)!r} holds another run: pass --resume to continue it, "
                          "or choose another --out")
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.json", "w") as fh:
            json.dump({"train": cfg.to_dict(), "spec": run.optimizer.spec.to_dict(),
                       "processes": distributed.world()}, fh, indent=1)

    data, model, opt = run.data, run.model, run.optimizer
    # NHWC activations on request, and always for the integer engine (it then needs no copies)
    layout = torch.channels_last if cfg.channels_last or cfg.engine == "int" else torch.contiguous_format

    def diverged(what, where: str) -> TrainingDiverged:
        last = f"the last good checkpoint is {str(ckpt)!r}" if ckpt.exists() else "no checkpoint was written yet"
        return TrainingDiverged(f"{what} at epoch {run.epoch + 1}, {where}; {last} "
                                "(try a lower --lr or a longer --warmup)")

    n_steps = steps_per_epoch(len(data.train_y), cfg.batch_size)
    total = n_steps * cfg.epochs
    model.train()
    with _Signals() as signals, contextlib.ExitStack() as stack:
        for obs in observers:
            stack.enter_context(observing(obs))
        while run.epoch < cfg.epochs:
            t0 = time.perf_counter()
            bar = tqdm(total=n_steps, initial=run.step, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
                       disable=not cfg.progress or not lead, leave=False, dynamic_ncols=True)
            for step, x, y in train_batches(data.train_x, data.train_y, cfg.batch_size, cfg.seed,
                                            run.epoch, run.step, cfg.augment, cfg.crop_pad):
                global_step = run.epoch * n_steps + step
                lr = lr_at(global_step, total, cfg.lr, cfg.schedule, cfg.warmup)
                mu = momentum_at(global_step, total, cfg.lr, cfg.momentum, cfg.momentum_min, cfg.schedule,
                                 cfg.warmup, shift=bool(opt.grid))
                for obs in observers:
                    if hasattr(obs, "step_begin"):
                        obs.step_begin(global_step)
                for group in opt.param_groups:
                    group["lr"], group["momentum"] = lr, mu
                if distributed.active():
                    x, y = distributed.shard(x, y)
                try:
                    loss, logits = train_step(model, opt, x.contiguous(memory_format=layout), y,
                                              cfg.label_smoothing)
                except TrainingDiverged as err:
                    raise diverged(err, f"step {step + 1}") from None
                run.step = step + 1
                run.sums["loss"] += loss.item() * len(y)
                run.sums["correct"] += int((logits.argmax(1) == y).sum())
                run.sums["seen"] += len(y)
                bar.update(1)
                bar.set_postfix(loss=f"{run.sums['loss'] / run.sums['seen']:.3f}", lr=f"{lr:.3g}")
                if signals.received is not None or (cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0
                                                    and run.step < n_steps):
                    run.sums["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    if lead:
                        save_checkpoint(ckpt, checkpoint_state(run))
                    if signals.received is not None:
                        bar.close()
                        raise Interrupted(f"interrupted at epoch {run.epoch + 1}, step {run.step}; checkpoint "
                                          f"saved to {str(ckpt)!r}; continue with --resume", signals.received)
            bar.close()
            try:
                test_acc = evaluate(model, data.test_x, data.test_y, memory_format=layout)
                val_acc = (evaluate(model, data.val_x, data.val_y, memory_format=layout)
                           if data.val_y is not None else float("nan"))
            except QuantizationError as err:
                raise diverged(str(err).split(":")[0], "in the evaluation") from None
            if distributed.active():          # every process saw its shard: add them up
                sums = torch.tensor([run.sums["loss"], run.sums["correct"], run.sums["seen"]], dtype=torch.float64)
                distributed.all_sum_(sums)
                run.sums.update(loss=float(sums[0]), correct=int(sums[1]), seen=int(sums[2]))
            seen = max(run.sums["seen"], 1)
            row = {"epoch": run.epoch + 1, "train_loss": run.sums["loss"] / seen,
                   "train_acc": 100.0 * run.sums["correct"] / seen, "val_acc": val_acc, "test_acc": test_acc,
                   "seconds": run.sums["seconds"] + time.perf_counter() - t0, "lr": lr, "steps": n_steps}
            run.rows.append(row)
            run.epoch, run.step = run.epoch + 1, 0
            run.sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            if not lead:
                continue
            save_checkpoint(ckpt, checkpoint_state(run))
            write_metrics(out / "metrics.csv", run.rows)
            for obs in observers:
                if hasattr(obs, "save"):
                    obs.save(out / "qstats")
            tqdm.write(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
                       f"val {row['val_acc']:.2f}%  test {row['test_acc']:.2f}%  {row['seconds']:.0f} s")
    return run

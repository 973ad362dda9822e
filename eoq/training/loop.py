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
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import distributed
from ..engine import allocator
from ..nn.layers import QConv2d, QLinear
from ..quant.observe import observing
from ..quant.presets import load_spec
from ..quant.quantizers import QuantizationError
from ..quant.spec import QuantSpec
from . import provenance
from .atomic import atomic_write
from .batches import eval_batches, steps_per_epoch, train_batches
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, TrainConfig
from .data import Dataset, default_val, load_cifar10
from .loss import step_loss
from .metrics import metrics_table, write_metrics
from .optimizer import EOQSGD
from .progress import tqdm
from .schedule import lr_at, momentum_at
from .setup import setup
from .table import Table


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
    data: Dataset
    epoch: int = 0
    step: int = 0                     # batches done in the current epoch
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0})
    rows: list = field(default_factory=list)   # metrics.csv rows as dicts (checkpoints hold these)

    @property
    def spec(self) -> QuantSpec:
        """The quantization spec this run trains with (``eoq presets`` lists the named ones)."""
        return self.optimizer.spec

    @property
    def metrics(self) -> Table:
        """The finished epochs as typed rows (:class:`~eoq.training.table.EpochMetrics`)."""
        return metrics_table(self.rows)


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
    s = setup(cfg.model, cfg.norm, spec if spec is not None else cfg.preset, seed=cfg.seed, engine=cfg.engine,
              lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, scalar_lr_scale=cfg.scalar_lr_scale,
              nesterov=cfg.nesterov, num_classes=len(data.classes))
    return Run(cfg, s.model, s.optimizer, s.generator, data)


def checkpoint_state(run: Run) -> dict:
    return {"config": run.cfg.to_dict(), "spec": run.optimizer.spec.to_dict(), "model": run.model.state_dict(),
            "optimizer": run.optimizer.state_dict(), "generator": run.generator.get_state(),
            "epoch": run.epoch, "step": run.step, "sums": dict(run.sums), "rows": list(run.rows)}


def restore(run: Run, state: dict) -> None:
    saved = state.get("config", {})
    for key in TrainConfig.IDENTITY:
        if saved.get(key) != getattr(run.cfg, key):
            raise CheckpointError(f"checkpoint was made with {key}={saved.get(key)!r}, this run has "
                                  f"{key}={getattr(run.cfg, key)!r}; resume with the same settings or use "
                                  "another --out")
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
    """One SGD step on (x, y); returns (loss, logits), both detached from the graph. The loss is
    cross-entropy against (1 - label_smoothing) one-hot + label_smoothing / classes (float64 inside
    for an integer datapath: eoq.training.loss).

    Raises TrainingDiverged when the loss is not finite or a quantizer meets NaN/Inf."""
    try:
        optimizer.zero_grad(set_to_none=True)  # before the forward: the last step's gradients are not
        logits = model(x)                      # held beside this step's saved activations
        loss = step_loss(logits, y, getattr(optimizer, "spec", None), label_smoothing)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"loss became {loss.item()}")
        packing = getattr(optimizer, "packed_gradients", contextlib.nullcontext)
        with packing():                    # G codes kept as int8 as they arrive (EOQSGD)
            if distributed.active():       # x, y are this process's shard (eoq/distributed.py)
                (loss / distributed.world()).backward()
                _reduce_other_grads(model)
            else:
                loss.backward()
        optimizer.step()
    except QuantizationError as err:
        raise TrainingDiverged(str(err).split(":")[0]) from None
    return loss.detach(), logits.detach()


def _reduce_other_grads(model: torch.nn.Module) -> None:
    """SUM every gradient that the quantized layers did not already reduce in their backward."""
    done = {id(m.weight) for m in model.modules() if isinstance(m, (QConv2d, QLinear)) and m.quant.any}
    distributed.all_reduce_grads(p for p in model.parameters() if p.grad is not None and id(p) not in done)


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
    (the eoq preset was redefined once; eoq-shift is its earlier definition)."""
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

    ``observers`` are attached to the quantization hook (eoq/quant/observe.py) for the whole run;
    those with ``step_begin(global_step)`` hear of every step, those with ``save(dir)`` save into
    ``out/qstats`` with every checkpoint, and on resume those with ``load(dir, before)`` take back
    what they had saved from the steps before the checkpoint's.

    ``cfg.qstats_every`` needs its observer here (this package cannot import the analysis tools):
    ``train(cfg, observers=(analysis.QStatsCollector(every=cfg.qstats_every),))``, which is what
    ``eoq train --qstats-every N`` does; without one the call is refused rather than silently
    recording nothing."""
    if cfg.qstats_every > 0 and not any(hasattr(obs, "save") and hasattr(obs, "every") for obs in observers):
        raise ConfigError(f"TrainConfig(qstats_every={cfg.qstats_every}) records statistics through an observer: "
                          f"call eoq.train(cfg, observers=(analysis.QStatsCollector(every={cfg.qstats_every}),)) "
                          "(eoq train --qstats-every attaches it), or set qstats_every=0")
    run, out = _open_run(cfg, run)
    if cfg.resume and out is not None and (out / "qstats").is_dir():
        done = run.epoch * steps_per_epoch(len(run.data.train_y), cfg.batch_size) + run.step
        for obs in observers:
            if hasattr(obs, "load"):
                obs.load(out / "qstats", before=done)
    run.model.train()
    with _Signals() as signals, contextlib.ExitStack() as stack:
        for obs in observers:
            stack.enter_context(observing(obs))
        while run.epoch < cfg.epochs:
            lr, t0 = _train_epoch(run, out, signals, observers)
            _finish_epoch(run, out, observers, lr, t0)
    return run


def _open_run(cfg: TrainConfig, run: Run | None) -> tuple[Run, Path | None]:
    """The run to train: resumed from its checkpoint (``cfg.resume``), given, or built; its
    directory created and its config.json written (first process only). ``cfg.out`` None trains
    in memory: no file is written."""
    if distributed.init_from_env() and cfg.batch_size % distributed.world():
        raise ConfigError(f"--batch-size {cfg.batch_size} must be divisible by the {distributed.world()} "
                          "processes of data-parallel training")
    if cfg.out is None:
        if cfg.resume:
            raise ConfigError("resuming needs the run's output directory (out)")
        return run or build_run(cfg), None
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
        raise ConfigError(f"output directory {str(out)!r} holds another run: pass --resume (resume=True) to continue "
                          "it, or choose another --out")
    if _lead():
        out.mkdir(parents=True, exist_ok=True)
        before = None
        if state is not None and (out / "config.json").exists():
            try:
                before = json.loads((out / "config.json").read_text()).get("code")
            except (OSError, ValueError):
                before = None
        with atomic_write(out / "config.json", "w") as fh:
            json.dump({"train": cfg.to_dict(), "spec": run.optimizer.spec.to_dict(),
                       "processes": distributed.world(), "code": provenance.merged(before, provenance.code_version())},
                      fh, indent=1)
    return run, out


def _lead() -> bool:
    """Whether this process writes files (the first of a data-parallel group, or the only one)."""
    return distributed.rank() == 0


def _layout(cfg: TrainConfig):
    """NHWC activations on request, and always for the integer engine (it then needs no copies)."""
    return torch.channels_last if cfg.channels_last or cfg.engine == "int" else torch.contiguous_format


def _diverged(run: Run, out: Path | None, what, where: str) -> TrainingDiverged:
    ckpt = out / "checkpoint.pt" if out is not None else None
    last = (f"the last good checkpoint is {str(ckpt)!r}" if ckpt is not None and ckpt.exists()
            else "no checkpoint was written yet")
    return TrainingDiverged(f"{what} at epoch {run.epoch + 1}, {where}; {last} "
                            "(try a lower --lr or a longer --warmup)")


def _train_epoch(run: Run, out: Path | None, signals: _Signals, observers: tuple) -> tuple[float, float]:
    """The rest of the current epoch from ``run.step`` on; returns the last step's lr and the
    time since which the epoch's seconds are not yet in ``run.sums``. A signal saves a checkpoint
    at the next step boundary and raises Interrupted."""
    cfg, opt, t0 = run.cfg, run.optimizer, time.perf_counter()
    n_steps = steps_per_epoch(len(run.data.train_y), cfg.batch_size)
    total, layout, lr = n_steps * cfg.epochs, _layout(cfg), 0.0
    bar = tqdm(total=n_steps, initial=run.step, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
               disable=not cfg.progress or not _lead(), leave=False, dynamic_ncols=True)
    for step, x, y in train_batches(run.data.train_x, run.data.train_y, cfg.batch_size, cfg.seed,
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
            loss, logits = train_step(run.model, opt, x.contiguous(memory_format=layout), y, cfg.label_smoothing)
        except TrainingDiverged as err:
            raise _diverged(run, out, err, f"step {step + 1}") from None
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
            if _lead() and out is not None:
                save_checkpoint(out / "checkpoint.pt", checkpoint_state(run))
                _save_observers(out, observers)
            if signals.received is not None:
                bar.close()
                saved = (f"checkpoint saved to {str(out / 'checkpoint.pt')!r}; continue with --resume "
                         "(resume=True)" if out is not None else "trained in memory: nothing saved")
                raise Interrupted(f"interrupted at epoch {run.epoch + 1}, step {run.step}; {saved}", signals.received)
    bar.close()
    return lr, t0


def _save_observers(out: Path, observers: tuple) -> None:
    """After the checkpoint (never before it: what an observer saved always precedes the step a
    resumed run goes on from)."""
    for obs in observers:
        if hasattr(obs, "save"):
            obs.save(out / "qstats")


def _finish_epoch(run: Run, out: Path | None, observers: tuple, lr: float, t0: float) -> None:
    """Evaluate on validation and test, append the epoch's metrics row, then (first process)
    save the checkpoint, metrics.csv and the observers' files."""
    cfg, data, layout = run.cfg, run.data, _layout(run.cfg)
    try:
        test_acc = evaluate(run.model, data.test_x, data.test_y, memory_format=layout)
        val_acc = (evaluate(run.model, data.val_x, data.val_y, memory_format=layout)
                   if data.val_y is not None else float("nan"))
    except QuantizationError as err:
        raise _diverged(run, out, str(err).split(":")[0], "in the evaluation") from None
    if distributed.active():          # every process saw its shard: add them up
        sums = torch.tensor([run.sums["loss"], run.sums["correct"], run.sums["seen"]], dtype=torch.float64)
        distributed.all_sum_(sums)
        run.sums.update(loss=float(sums[0]), correct=int(sums[1]), seen=int(sums[2]))
    seen = max(run.sums["seen"], 1)
    row = {"epoch": run.epoch + 1, "train_loss": run.sums["loss"] / seen,
           "train_acc": 100.0 * run.sums["correct"] / seen, "val_acc": val_acc, "test_acc": test_acc,
           "seconds": run.sums["seconds"] + time.perf_counter() - t0, "lr": lr,
           "steps": steps_per_epoch(len(data.train_y), cfg.batch_size)}
    run.rows.append(row)
    run.epoch, run.step = run.epoch + 1, 0
    run.sums = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    if not _lead():
        return
    if out is not None:
        save_checkpoint(out / "checkpoint.pt", checkpoint_state(run))
        write_metrics(out / "metrics.csv", run.rows)
        _save_observers(out, observers)
    tqdm.write(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}  train {row['train_acc']:.2f}%  "
               f"val {row['val_acc']:.2f}%  test {row['test_acc']:.2f}%  {row['seconds']:.0f} s")
    why = collapsed(run.rows, len(data.classes), cfg.collapse_epochs)
    if why:
        raise TrainingDiverged(f"{why}, stopped after epoch {run.epoch} (its metrics and checkpoint are saved); "
                               "try a lower --lr or a longer --warmup")


def collapsed(rows: list[dict], classes: int, epochs: int) -> str | None:
    """Why the run has collapsed, or None: its last ``epochs`` epochs (``epochs`` > 0) had a training
    loss within 2% of ln(classes) and training accuracy within one point of chance, after an epoch
    more than five points above chance. Such a network outputs one constant class; with integer
    updates its gradients round to zero and it never recovers (seen at 30 epochs: EOQ at 10% from
    epoch 4 to 9, reports/comparison/resnet20-30ep/). A run that never rose five points above
    chance is given four times as long (a slow start is not a collapse): its last 4 * ``epochs``
    epochs at chance stop it too (seen: integer updates without momentum at peak lr 0.8, at 10.00%
    from epoch 2 to 17, reports/momentum/)."""
    chance, flat = 100.0 / classes, 0.98 * math.log(classes)
    if epochs <= 0 or len(rows) <= epochs:
        return None
    best = max(rows, key=lambda r: r["train_acc"])
    if best["train_acc"] <= chance + 5.0:
        n = 4 * epochs
        if len(rows) >= n and all(r["train_loss"] >= flat and r["train_acc"] < chance + 1.0 for r in rows[-n:]):
            return (f"at chance ({rows[-1]['train_acc']:.1f}% train, loss {rows[-1]['train_loss']:.3f} = ln {classes}) "
                    f"for {n} epochs, never above {best['train_acc']:.1f}%")
        return None
    last, before = rows[-epochs:], rows[:-epochs]
    if not all(r["train_loss"] >= flat and r["train_acc"] < chance + 1.0 for r in last):
        return None
    best = max(before, key=lambda r: r["train_acc"])
    if best["train_acc"] <= chance + 5.0:
        return None
    return (f"collapsed to chance ({last[-1]['train_acc']:.1f}% train, loss {last[-1]['train_loss']:.3f} "
            f"= ln {classes}) for {epochs} epochs after {best['train_acc']:.1f}% at epoch {best['epoch']}")

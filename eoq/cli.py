"""The ``eoq`` command line: ``eoq train``, ``eoq presets``, ``eoq cost``, ``eoq golden``, ``eoq report``.

Every mistake a user can make (unknown names, bad numbers, missing data, bad checkpoints) ends in
one line ``eoq: error: ...`` and exit status 2; no traceback.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys

from . import distributed
from .quant.quantizers import QuantizationError
from .quant.spec import SpecError
from .training.checkpoint import CheckpointError
from .training.config import ConfigError, TrainConfig
from .training.data import DataError

USER_ERRORS = (ConfigError, SpecError, DataError, CheckpointError, QuantizationError)


def _add_train(sub):
    d = TrainConfig()
    p = sub.add_parser("train", help="train a ResNet on CIFAR-10", description="Train a ResNet on CIFAR-10.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=d.model, help="resnet20/32/44/56/110 (CIFAR) or resnet18/34/50")
    p.add_argument("--norm", default=d.norm, help="bn | fixup | none")
    p.add_argument("--preset", default=d.preset,
                   help="fp32 | eoq | eoq-shift | eoq-float-ends | wageubn, or a JSON spec file ('eoq presets')")
    p.add_argument("--engine", default=d.engine,
                   help="sim: float simulation of the integer arithmetic; int: int8 x int8 -> int32 "
                        "(direct AMX/VNNI kernels, GEMMs in torch._int_mm, or exact float32 sums on CPUs "
                        "without int8 dot products), bit-exact with sim; needs "
                        "8-bit SQ A/E/G/W, e.g. eoq")
    p.add_argument("--channels-last", action="store_true",
                   help="NHWC activations (faster on CPU; always on with --engine int)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="down to 1 (online training)")
    p.add_argument("--lr", type=float, default=None,
                   help="peak learning rate (default 0.2; 0.15 for presets with power-of-two lr, e.g. eoq-shift)")
    p.add_argument("--schedule", default=None,
                   help="onecycle | onecycle-cos | cosine | step | constant (default: per preset and norm, "
                        "eoq/training/config.py: DEFAULTS)")
    p.add_argument("--warmup", type=float, default=None, help="fraction of steps of warm-up")
    p.add_argument("--momentum", type=float, default=None,
                   help="1 - 2^-s for integer updates (default 0.875, 0.9 with BN, 0.95 cycled to 0.85 with "
                        "Fixup; 0.9375 for presets with power-of-two lr)")
    p.add_argument("--momentum-min", type=float, default=None,
                   help="cycle the momentum between --momentum (lowest lr) and this (peak lr), as "
                        "OneCycleLR's cycle_momentum (integer updates: rounded to 1 - 2^-s)")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum (float updates only)")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="cross-entropy label smoothing eps: target (1 - eps) one-hot + eps / classes")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="on conv/linear weights only")
    p.add_argument("--scalar-lr-scale", type=float, default=d.scalar_lr_scale, help="Fixup scalars' lr factor")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data", default=None, help="'embedded', an image-folder zip/dir or cifar-10-batches-py "
                                                "(default: $EOQ_DATA or the shared JPEG zip)")
    p.add_argument("--download", action="store_true", help="download official CIFAR-10 when not found")
    p.add_argument("--val", type=int, default=None,
                   help="hold N training images out for validation, class-balanced, the same for every seed and "
                        "preset (default 5000, at most a tenth of the training set; 0: none)")
    p.add_argument("--train-limit", type=int, default=None,
                   help="use only N training images (after the validation split), drawn by a fixed shuffle")
    p.add_argument("--test-limit", type=int, default=None, help="use only N test images, drawn by a fixed shuffle")
    p.add_argument("--crop-pad", type=int, default=None,
                   help="zero padding of the random crop (0: horizontal flips only; default 2 for float "
                        "updates, 4 for power-of-two-lr presets)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no crop/flip augmentation")
    p.add_argument("--out", default="runs/default", help="run directory (metrics.csv, checkpoint.pt)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps")
    p.add_argument("--qstats-every", type=int, default=0,
                   help="record quantization-error statistics every N steps into OUT/qstats (0: off)")
    p.add_argument("--collapse-epochs", type=int, default=2,
                   help="stop (exit 3, as a divergence) once training has sat at chance accuracy with loss "
                        "ln(classes) for N epochs after having learnt something (0: never)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=_train)


def _train(args) -> int:
    from .training.loop import Interrupted, TrainingDiverged, train

    keys = set(TrainConfig.__dataclass_fields__)
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in keys})
    observers = ()
    if cfg.qstats_every > 0:     # a negative value is reported by the config validation in train()
        from analysis.qstats.stats import QStatsCollector

        observers = (QStatsCollector(cfg.qstats_every),)
    try:
        run = train(cfg, observers=observers)
    except TrainingDiverged as err:
        print(f"eoq: error: {err}", file=sys.stderr)
        return _leave(3)
    except Interrupted as err:
        print(f"eoq: {err}", file=sys.stderr)
        return _leave(128 + err.signum)
    except BaseException:
        distributed.shutdown(clean=False)
        raise
    last = run.rows[-1] if run.rows else None
    if last:
        print(f"final: epoch {last['epoch']}  val_acc {last['val_acc']:.2f}%  test_acc {last['test_acc']:.2f}%  "
              f"-> {cfg.out}/metrics.csv")
    return _leave(0)


def _leave(code: int) -> int:
    """``code``; a data-parallel process leaves its process group and exits right here, skipping
    the interpreter's teardown: there, about one run in ten of a 2-process job aborted one process
    ('terminate called without an active exception', exit -6) after all its work and files were
    done, even after the group was destroyed."""
    if not distributed.active():
        return code
    distributed.shutdown(clean=code == 0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _presets(args) -> int:
    from .quant.presets import PRESETS, describe

    print("\n\n".join(describe(s) for s in PRESETS.values()))
    return 0


def _cost(args) -> int:
    from analysis.cost.report import report
    from analysis.cost.tables import TableError

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    from .models import MODELS

    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    try:
        text, r = report(args.model, args.batch_size, args.table, args.out)
    except TableError as err:
        raise ConfigError(str(err)) from None
    print(text)
    for key, label in (("inference", "inference, BN as written"), ("inference_folded", "inference, BN folded")):
        n = r[key].norm
        print(f"{label}: power ratio {n.power_ratio:.1f}x, speed ratio {n.speed_ratio:.1f}x serial, "
              f"{n.parallel_speed_ratio:.1f}x parallel datapath (paper: >70x, >18x)")
    n = r.training.norm
    print(f"training, BN with batch statistics: speed ratio {n.parallel_speed_ratio:.1f}x parallel datapath")
    print(f"norm energy ratio with SRAM traffic (fp32 BN / EOQ Fixup): {n.energy_ratio_with_memory:.1f}x; "
          "the power ratio below is the compute-only energy ratio")
    print(f"norm power ratio (fp32 BN / EOQ Fixup) = {n.power_ratio:.1f}")
    print(f"norm speed ratio (fp32 BN / EOQ Fixup) = {n.speed_ratio:.1f}")
    return 0


def _report(args) -> int:
    from pathlib import Path

    from analysis.report import build_report
    from analysis.runs import not_a_run

    for r in args.runs:
        why = not_a_run(r)
        if why:
            raise ConfigError(why)
    if args.batch_study is not None and not any(Path(args.batch_study).glob("runs*.csv")):
        raise ConfigError(f"--batch-study {args.batch_study!r} holds no runs*.csv of analysis.batch_study")
    path = build_report(args.runs, args.out, args.isometry, args.qstats, args.cost_model, args.cost_batch,
                        args.title, shlex.join(["eoq", "report"] + (args.argv or [])), args.batch_study,
                        args.memory, args.adaptation)
    print(f"report written to {path}")
    return 0


def _golden(args) -> int:
    import torch

    from .models import MODELS
    from .training import golden
    from .training.batches import epoch_order, to_float
    from .training.data import default_val, load_cifar10

    if args.model not in MODELS:
        raise ConfigError(f"unknown model {args.model!r}; choose one of: {', '.join(MODELS)}")
    if args.batch_size < 1 or args.steps < 1:
        raise ConfigError(f"--batch-size and --steps must be positive, got {args.batch_size} and {args.steps}")
    if not args.lr > 0:
        raise ConfigError(f"--lr must be > 0, got {args.lr}")
    data = load_cifar10(args.data)
    data = data.hold_out(default_val(len(data.train_y)))     # the training split of eoq train
    if args.after < 0:
        raise ConfigError(f"--after must be >= 0, got {args.after}")
    n = args.batch_size * (args.steps + args.after)
    if n > len(data.train_x):
        raise ConfigError(f"--batch-size x (--steps + --after) = {n} is more than the {len(data.train_x)} "
                          "training images")
    idx = epoch_order(len(data.train_x), args.seed, 0)[:n]       # the first batches of epoch 0, no augmentation
    images = to_float(torch.from_numpy(data.train_x)[idx])
    labels = torch.from_numpy(data.train_y)[idx]
    if args.image_size not in (32, 64):
        raise ConfigError(f"--image-size must be 32 or 64, got {args.image_size}")
    if args.image_size == 64:      # CIFAR-10 upsampled (bilinear): the ImageNet stem's 7x7/2 conv and pool at work
        images = torch.nn.functional.interpolate(images, size=(64, 64), mode="bilinear", align_corners=False)
    if not 0 <= args.momentum < 1:
        raise ConfigError(f"--momentum must be 0 or 1 - 2^-s in [0, 1), got {args.momentum}")
    g = golden.record(args.model, args.batch_size, args.steps, images, labels, seed=args.seed, lr=args.lr,
                      after=args.after, preset=args.preset, momentum=args.momentum, weight_decay=args.weight_decay,
                      stem=args.stem)
    path = golden.write(g, args.out)
    print(f"{len(g.entries)} tensors of {args.steps} step(s) written to {path} and {path.parent / 'manifest.json'}")
    if args.no_verify:
        print(f"not checked (--no-verify); check with: python {golden.REFERENCE} {args.out}")
        return 0
    ref = golden.reference()
    try:
        checked, bad = golden.verify(args.out)
    except ref.NotCovered as err:             # a layout the reference does not implement: not a pass
        print(f"eoq: error: NumPy reference: not checked: {err}", file=sys.stderr)
        return 4
    except Exception as err:                  # an error inside the reference: one line, not a pass
        print(f"eoq: error: NumPy reference failed: {err.__class__.__name__}: {str(err).splitlines()[0]}",
              file=sys.stderr)
        return 4
    print(f"NumPy reference (eoq/reference/numpy_step.py): {checked} tensors recomputed from the inputs, "
          f"{len(bad)} differ{': ' + ', '.join(bad[:5]) if bad else ''}")
    return 1 if bad else 0


def _adapt(args) -> int:
    from .training.adapt import AdaptConfig, adapt
    from .training.loop import TrainingDiverged

    points = tuple(int(p) for p in args.points.split(",")) if args.points else None
    cfg = AdaptConfig(run_dir=args.run_dir, corruption=args.corruption, severity=args.severity,
                      batch_size=args.batch_size, samples=args.samples, lr=args.lr, momentum=args.momentum,
                      weight_decay=args.weight_decay, bn=args.bn, seed=args.seed, split=args.split,
                      eval_limit=args.eval_limit, data=args.data, out=args.out, resume=args.resume,
                      threads=args.threads, progress=not args.no_progress, **({"points": points} if points else {}))
    try:
        run = adapt(cfg)
    except TrainingDiverged as err:
        print(f"eoq: error: {err}", file=sys.stderr)
        return 3
    first, last = run.rows[0], run.rows[-1]
    print(f"{args.corruption} {args.severity}, batch {args.batch_size}: corrupted {cfg.split} accuracy "
          f"{first['acc']:.2f}% at {first['images']} -> {last['acc']:.2f}% at {last['images']} images; clean test "
          f"{run.clean_acc:.2f}%; {1000 * run.seconds_per_image:.1f} ms per adapted image"
          + (f" -> {cfg.out}/adapt.csv" if cfg.out else ""))
    return 0


def _add_adapt(sub):
    from .training.adapt import POINTS
    from .training.corruptions import CORRUPTIONS

    a = sub.add_parser("adapt", help="adapt a trained network to a corrupted stream of labelled images",
                       description="Online adaptation of a trained run (eoq train --out DIR) to CIFAR-10-C-style "
                                   "corrupted training images, fed --batch-size at a time with the network's own "
                                   "update rule; accuracy on the corrupted test images read along the stream.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a.add_argument("run_dir", help="a trained run: its weights.pt or checkpoint.pt")
    a.add_argument("--corruption", default="gaussian_noise", help=f"one of: {', '.join(CORRUPTIONS)}")
    a.add_argument("--severity", type=int, default=3, help="1-5")
    a.add_argument("--batch-size", type=int, default=1)
    a.add_argument("--samples", type=int, default=1000, help="images in the stream")
    a.add_argument("--lr", type=float, default=0.01, help="constant learning rate")
    a.add_argument("--momentum", type=float, default=None, help="default: the run's")
    a.add_argument("--weight-decay", type=float, default=None, help="default: the run's")
    a.add_argument("--bn", default="batch", help="BN networks: 'batch' (train mode) or 'frozen' (running statistics)")
    a.add_argument("--seed", type=int, default=0, help="stream order, noise draws and rounding")
    a.add_argument("--points", default=None, help=f"images seen at which accuracy is read (default {POINTS})")
    a.add_argument("--split", default="test", help="'test' or 'val' (choosing the lr)")
    a.add_argument("--eval-limit", type=int, default=None, help="read accuracy on the first N images of the split")
    a.add_argument("--data", default=None, help="as eoq train --data (default: the run's)")
    a.add_argument("--out", default=None, help="adapt.csv, adapt.json and the resumable adapt.pt")
    a.add_argument("--resume", action="store_true")
    a.add_argument("--threads", type=int, default=1)
    a.add_argument("--no-progress", action="store_true")
    a.set_defaults(func=_adapt)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="eoq", description="EOQ Workbench: 8-bit integer training without BN.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_adapt(sub)
    sub.add_parser("presets", help="print every quantization preset in full").set_defaults(func=_presets)
    c = sub.add_parser("cost", help="op counts, energy and latency of a training step: fp32+BN vs EOQ+Fixup")
    c.add_argument("--model", default="resnet20")
    c.add_argument("--batch-size", type=int, default=128)
    c.add_argument("--table", default=None, help="JSON file overriding energy_pj / cycles entries")
    c.add_argument("--out", default=None, help="also write the markdown report and figures here")
    c.set_defaults(func=_cost)
    g = sub.add_parser("golden", help="golden vectors: every integer tensor of a few integer training steps",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g.add_argument("--model", default="resnet20", help="a Fixup ResNet (resnet20/32/..., resnet18/34/50)")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument("--steps", type=int, default=2)
    g.add_argument("--lr", type=float, default=0.1, help="fixed learning rate (no schedule)")
    g.add_argument("--momentum", type=float, default=0.875, help="0 or 1 - 2^-s (a shift)")
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--preset", default="eoq", help="eoq or a JSON spec based on it (e.g. an 8-bit M)")
    g.add_argument("--after", type=int, default=20,
                   help="unrecorded steps first (at init a Fixup net's branches get no error: >= 3 records them busy)")
    g.add_argument("--stem", choices=("small", "imagenet"), default="small",
                   help="resnet18/34/50: 3x3/1 stem, no max-pool (small) or 7x7/2 conv + 3x3/2 max-pool (imagenet)")
    g.add_argument("--image-size", type=int, default=32, help="32, or 64 (CIFAR-10 images upsampled, bilinear)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--data", default=None, help="as eoq train --data (the first training images are used)")
    g.add_argument("--out", required=True, help="directory for golden.npz and manifest.json")
    g.add_argument("--no-verify", action="store_true",
                   help="write the files only, without recomputing them with the NumPy reference (check later: "
                        "python eoq/reference/numpy_step.py DIR)")
    g.set_defaults(func=_golden)
    r = sub.add_parser("report", help="figures and REPORT.md from run directories and analysis outputs")
    r.add_argument("runs", nargs="*", help="run directories (eoq train --out)")
    r.add_argument("--out", default="reports", help="where REPORT.md and the figures go")
    r.add_argument("--isometry", default=None, help="output directory of analysis.isometry_experiment")
    r.add_argument("--qstats", default=None, help="a run directory trained with --qstats-every")
    r.add_argument("--memory", default=None,
                   help="markdown table of measured step memory (python benchmarks/bench_memory.py --out FILE)")
    r.add_argument("--adaptation", default=None,
                   help="output directory of analysis.adaptation (claim 5 on a deployed network; its final*.csv)")
    r.add_argument("--batch-study", default=None,
                   help="output directory of analysis.batch_study (the small-batch claim; its runs*.csv)")
    r.add_argument("--cost-model", default="resnet20")
    r.add_argument("--cost-batch", type=int, default=128)
    r.add_argument("--title", default="EOQ Workbench report")
    r.set_defaults(func=_report)
    args = parser.parse_args(argv)
    args.argv = list(argv)[1:] if argv is not None else sys.argv[2:]     # the options after the command
    try:
        return args.func(args)
    except USER_ERRORS as err:
        print(f"eoq: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

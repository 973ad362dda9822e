"""Training loop on real (embedded) CIFAR-10 images: metrics, checkpoints, exact resume, kill -9."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from eoq.training.checkpoint import CheckpointError, load_checkpoint
from eoq.training.config import ConfigError, TrainConfig
from eoq.training.loop import TrainingDiverged, train
from eoq.training.metrics import COLUMNS, read_metrics

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(data="embedded", train_limit=256, test_limit=200, batch_size=64, progress=False)


def cfg(tmp_path, name, **kw):
    return TrainConfig(**{**SMALL, "out": str(tmp_path / name), **kw})


@pytest.mark.parametrize("preset,norm", [("eoq", "fixup"), ("fp32", "bn"), ("wageubn", "bn")])
def test_short_run_writes_metrics_and_checkpoint(tmp_path, preset, norm):
    run = train(cfg(tmp_path, "r", preset=preset, norm=norm, epochs=2, lr=0.05, train_limit=512))
    rows = read_metrics(tmp_path / "r" / "metrics.csv")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(COLUMNS) <= set(rows[0])
    assert all(0 <= r["test_acc"] <= 100 and r["train_loss"] > 0 for r in rows)
    state = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert state["epoch"] == 2 and state["config"]["preset"] == preset
    assert rows[1]["train_loss"] < rows[0]["train_loss"]   # it learns
    assert run.rows == state["rows"]


def test_resume_after_an_epoch_is_bit_exact(tmp_path, monkeypatch):
    import eoq.training.loop as T

    whole = train(cfg(tmp_path, "whole", epochs=2))
    real = T.train_batches

    def crash_in_epoch_2(*args, **kw):
        if args[4] == 1:        # epoch index
            raise KeyboardInterrupt("simulated crash")
        return real(*args, **kw)

    monkeypatch.setattr(T, "train_batches", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(tmp_path, "parts", epochs=2))
    monkeypatch.setattr(T, "train_batches", real)
    parts = train(cfg(tmp_path, "parts", epochs=2, resume=True))
    for (k, a), b in zip(whole.model.state_dict().items(), parts.model.state_dict().values()):
        assert torch.equal(a, b), k
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(whole.rows) == strip(parts.rows)


def test_batch_size_one_trains(tmp_path):
    run = train(cfg(tmp_path, "online", batch_size=1, train_limit=24, test_limit=20, epochs=1))
    assert run.rows[0]["steps"] == 24


def test_divergence_is_reported_with_the_step(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"at epoch 1, step \d+"):
        train(cfg(tmp_path, "nan", preset="fp32", norm="none", lr=1e8, warmup=0.0, schedule="constant", epochs=1))


def test_output_dir_and_resume_mistakes(tmp_path):
    train(cfg(tmp_path, "a", epochs=1, train_limit=64))
    with pytest.raises(ConfigError, match="holds another run"):
        train(cfg(tmp_path, "a", epochs=1, train_limit=64))
    with pytest.raises(CheckpointError, match="nothing to resume"):
        train(cfg(tmp_path, "b", epochs=1, resume=True))
    with pytest.raises(CheckpointError, match="model='resnet20'"):
        train(cfg(tmp_path, "a", epochs=2, train_limit=64, model="resnet32", resume=True))
    ckpt = tmp_path / "a" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train(cfg(tmp_path, "a", epochs=2, train_limit=64, resume=True))


def _cli(out, *extra):
    return [sys.executable, "-m", "eoq", "train", "--data", "embedded", "--train-limit", "384",
            "--test-limit", "100", "--batch-size", "16", "--epochs", "1", "--threads", "1",
            "--checkpoint-every", "4", "--no-progress", "--out", str(out), *extra]


ENV = dict(os.environ, PYTHONPATH=str(ROOT))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref"
    subprocess.run(_cli(out), check=True, env=ENV, capture_output=True)
    return load_checkpoint(out / "checkpoint.pt")


def _stop_mid_epoch(out, sig):
    """Start a run, send ``sig`` once a mid-epoch checkpoint at step >= 8 exists; return the exit code."""
    proc = subprocess.Popen(_cli(out), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] >= 8:
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()
    return proc.returncode, proc.stderr.read().decode()


def _resume_and_compare(out, reference):
    subprocess.run(_cli(out, "--resume"), check=True, env=ENV, capture_output=True)
    state = load_checkpoint(out / "checkpoint.pt")
    for k, v in reference["model"].items():
        assert torch.equal(v, state["model"][k]), k
    assert reference["rows"][0]["test_acc"] == state["rows"][0]["test_acc"]
    assert reference["rows"][0]["train_loss"] == state["rows"][0]["train_loss"]
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, reference):
    out = tmp_path / "killed"
    code, _ = _stop_mid_epoch(out, signal.SIGKILL)
    assert code == -signal.SIGKILL
    state = load_checkpoint(out / "checkpoint.pt")     # whatever moment it died, the checkpoint loads
    assert state["epoch"] == 0 and 0 < state["step"] < 24, state["step"]
    assert not (out / "metrics.csv").exists()
    _resume_and_compare(out, reference)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, reference):
    out = tmp_path / "terminated"
    code, err = _stop_mid_epoch(out, signal.SIGTERM)
    assert code == 128 + signal.SIGTERM and "continue with --resume" in err, err
    assert "Traceback" not in err
    _resume_and_compare(out, reference)


def test_momentum_cycling_and_label_smoothing_reach_the_optimizer(tmp_path, monkeypatch):
    """Every step's SGD momentum follows momentum_at; the loss is the smoothed cross-entropy."""
    import eoq.training.loop as T
    from eoq.training.schedule import momentum_at

    seen, losses = [], []
    step = T.train_step

    def spy(model, opt, x, y, label_smoothing=0.0):
        seen.append({g["momentum"] for g in opt.param_groups})
        losses.append(label_smoothing)
        return step(model, opt, x, y, label_smoothing)

    monkeypatch.setattr(T, "train_step", spy)
    c = cfg(tmp_path, "mc", preset="fp32", norm="bn", epochs=2, schedule="onecycle-cos", warmup=0.3,
            momentum=0.95, momentum_min=0.85, label_smoothing=0.1)
    train(c)
    total = len(seen)
    assert total == 2 * 4 and set(losses) == {0.1}
    want = [momentum_at(s, total, c.lr, 0.95, 0.85, "onecycle-cos", 0.3) for s in range(total)]
    assert all(got == {w} for got, w in zip(seen, want))
    assert min(want) < 0.87 and max(want) > 0.93        # it does cycle


def test_resume_keeps_the_checkpoints_schedule_when_defaults_change(tmp_path):
    """Schedule settings not given again come from the checkpoint; one made before a setting existed
    (here: no crop_pad, momentum cycling or Nesterov) gets that version's behaviour (crop pad 4)."""
    from eoq.training.checkpoint import save_checkpoint

    train(cfg(tmp_path, "old", preset="fp32", norm="fixup", epochs=1, schedule="cosine", warmup=0.1, momentum=0.75))
    path = tmp_path / "old" / "checkpoint.pt"
    state = load_checkpoint(path)
    for key in ("crop_pad", "momentum_min", "nesterov"):
        del state["config"][key]
    save_checkpoint(path, state)
    run = train(cfg(tmp_path, "old", preset="fp32", norm="fixup", epochs=2, resume=True))
    c = run.cfg
    assert (c.schedule, c.warmup, c.momentum, c.momentum_min, c.nesterov, c.crop_pad) == \
        ("cosine", 0.1, 0.75, None, False, 4)
    fresh = TrainConfig(**{**SMALL, "preset": "fp32", "norm": "fixup"}).validate()    # today's defaults differ
    assert (fresh.schedule, fresh.crop_pad) != ("cosine", 4)


def test_resume_keeps_the_spec_the_run_started_with_when_a_preset_changes(tmp_path, monkeypatch, capsys):
    """The eoq preset was redefined once: a run started under the old definition
    resumes with it (from the checkpoint, or from config.json for checkpoints that predate that)."""
    from eoq.quant import presets
    from eoq.training.checkpoint import save_checkpoint

    old = presets.PRESETS["eoq-shift"].with_changes(name="eoq")
    monkeypatch.setitem(presets.PRESETS, "eoq", old)
    train(cfg(tmp_path, "r", preset="eoq", epochs=1))
    monkeypatch.undo()
    path = tmp_path / "r" / "checkpoint.pt"
    for drop_from_checkpoint in (False, True):
        if drop_from_checkpoint:                       # a checkpoint without the spec: config.json's
            state = load_checkpoint(path)
            del state["spec"]
            save_checkpoint(path, state)
        run = train(cfg(tmp_path, "r", preset="eoq", epochs=2 + drop_from_checkpoint, resume=True))
        assert run.optimizer.spec == old and run.optimizer.spec != presets.PRESETS["eoq"]
        assert "started with" in capsys.readouterr().err
        assert json.loads((tmp_path / "r" / "config.json").read_text())["spec"]["lr_pow2"] is True


def test_load_trained_gives_the_model_back_with_its_spec_exponents_and_engine(tmp_path):
    """load_state_dict into a fresh model silently gave an unquantized model; load_trained rebuilds
    the run's own prepared model: same outputs, weights on their int8 grids, same engine."""
    import eoq
    from eoq.nn.prepare import grid_params

    cfg = eoq.TrainConfig(data="embedded", train_limit=128, test_limit=32, val=0, batch_size=64, epochs=1,
                          preset="eoq", engine="int", out=str(tmp_path / "r"), progress=False)
    run = eoq.train(cfg)
    back = eoq.load_trained(tmp_path / "r")
    assert back.cfg.engine == "int" and back.spec == run.optimizer.spec and back.epoch == 1
    assert [m.test_acc for m in back.metrics] == [m.test_acc for m in run.metrics]
    x, _ = eoq.sample("embedded", n=8)
    x = x.contiguous(memory_format=torch.channels_last)
    run.model.eval()
    with torch.no_grad():
        assert torch.equal(back.model(x), run.model(x))
    for a, b in zip(grid_params(back.model), grid_params(run.model)):
        assert float(a.exponent) == float(b.exponent)
        assert torch.equal(a.param, b.param) and a.codes().abs().max() <= 127
    assert all(m.engine == "int" for m in back.model.modules() if getattr(m, "quant", None) is not None
               and getattr(m.quant, "any", False))


def test_load_trained_of_a_missing_run_is_one_clear_error(tmp_path):
    import eoq
    from eoq.training.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no checkpoint"):
        eoq.load_trained(tmp_path / "nothing")


COLLAPSED_RUN = [  # eoq, ResNet-20, 30-epoch schedule, crop padding 4, seed 0: epochs 1-6 (train loss, train %)
    (2.17775, 18.0267), (1.88635, 27.2756), (1.64352, 37.5644), (2.29045, 12.0422), (2.30429, 10.0333),
    (2.30409, 10.02)]


def _rows(pairs):
    return [{"epoch": i + 1, "train_loss": loss, "train_acc": acc} for i, (loss, acc) in enumerate(pairs)]


def test_collapse_is_recognised_after_n_epochs_at_chance():
    from eoq.training.loop import collapsed
    rows = _rows(COLLAPSED_RUN)
    assert collapsed(rows[:5], 10, 2) is None          # epoch 4 (12.0%) is still a point above chance
    why = collapsed(rows, 10, 2)
    assert "collapsed to chance (10.0% train" in why and "after 37.6% at epoch 3" in why
    assert collapsed(rows, 10, 0) is None               # switched off
    assert collapsed(rows, 10, 3) is None
    assert collapsed(_rows([(2.30, 10.1)] * 4), 10, 2) is None                  # a slow start: not yet
    assert collapsed(_rows([(2.30, 10.1)] * 7), 10, 2) is None
    never = collapsed(_rows([(2.304, 11.6)] + [(2.303, 10.0)] * 8), 10, 2)      # mom_none_s0's first 9 epochs
    assert "for 8 epochs, never above 11.6%" in never
    assert collapsed(_rows([(2.30, 10.1)] * 7 + [(2.30, 12.0)]), 10, 2) is None  # a point above chance: learning
    assert collapsed(_rows(COLLAPSED_RUN[:3] + [(2.30, 10.0), (2.0, 25.0), (2.30, 10.0)]), 10, 2) is None


def test_a_collapse_stops_the_run_after_saving_its_metrics(tmp_path, monkeypatch):
    from eoq.training import loop
    monkeypatch.setattr(loop, "collapsed", lambda rows, classes, epochs: "collapsed (test)" if len(rows) == 2 else None)
    with pytest.raises(TrainingDiverged, match=r"collapsed \(test\), stopped after epoch 2"):
        train(cfg(tmp_path, "c", epochs=4, train_limit=64))
    assert [r["epoch"] for r in read_metrics(tmp_path / "c" / "metrics.csv")] == [1, 2]
    with pytest.raises(ConfigError, match="--collapse-epochs"):
        train(cfg(tmp_path, "d", epochs=1, collapse_epochs=-1))

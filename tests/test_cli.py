"""The command line: presets listing, and one clear error line (exit 2) for each user mistake."""
import pytest

from eoq.cli import main


def test_presets_lists_all(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    for name in ("[fp32]", "[eoq]", "[eoq-float-ends]", "[wageubn]"):
        assert name in out


@pytest.mark.parametrize("args,message", [
    (["--model", "resnet21"], "unknown model 'resnet21'"),
    (["--norm", "ln"], "unknown norm 'ln'"),
    (["--preset", "int4"], "unknown preset 'int4'"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--epochs", "-1"], "--epochs must be a positive integer"),
    (["--lr", "0"], "--lr must be > 0"),
    (["--lr", "-0.1"], "--lr must be > 0"),
    (["--schedule", "linear"], "unknown schedule"),
    (["--data", "/nonexistent/cifar"], "does not exist"),
    (["--momentum", "0.9"], "1 - 2^-s"),
])
def test_user_errors_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["train", "--data", "embedded", "--train-limit", "32", "--epochs", "1", "--no-progress",
                 "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("eoq: error: ") and message in err and "\n" not in err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.csv").exists()


def test_train_command_runs(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--data", "embedded", "--train-limit", "128", "--test-limit", "50",
                 "--batch-size", "32", "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    assert "final: epoch 1" in capsys.readouterr().out
    assert (out / "metrics.csv").exists()


@pytest.mark.parametrize("preset,norm,want", [
    ("eoq", "fixup", (0.2, 0.9375, 0.875, False, "onecycle-cos", 0.3, 0)),
    ("eoq-float-ends", "fixup", (0.2, 0.9375, 0.875, False, "onecycle-cos", 0.3, 0)),
    ("eoq", "bn", (0.2, 0.875, None, False, "onecycle", 0.15, 2)),
    ("eoq-shift", "fixup", (0.15, 0.9375, None, False, "onecycle", 0.15, 4)),
    ("fp32", "fixup", (0.2, 0.95, 0.85, False, "onecycle-cos", 0.3, 0)),
    ("fp32", "bn", (0.2, 0.9, None, True, "onecycle", 0.15, 2)),
    ("fp32", "none", (0.2, 0.875, None, False, "onecycle", 0.15, 2)),
    ("wageubn", "bn", (0.2, 0.875, None, False, "onecycle", 0.15, 2))])
def test_default_schedule_follows_preset_and_norm(preset, norm, want):
    """The defaults table as documented (eoq/training/config.py: DEFAULTS); an explicit value always wins."""
    from eoq.training.config import TrainConfig
    cfg = TrainConfig(preset=preset, norm=norm).validate()
    assert (cfg.lr, cfg.momentum, cfg.momentum_min, cfg.nesterov, cfg.schedule, cfg.warmup, cfg.crop_pad) == want
    cfg = TrainConfig(preset=preset, norm=norm, lr=0.05, momentum=0.75, schedule="cosine", warmup=0.1,
                      nesterov=False, crop_pad=3).validate()
    assert (cfg.lr, cfg.momentum, cfg.momentum_min, cfg.nesterov, cfg.schedule, cfg.warmup, cfg.crop_pad) == \
        (0.05, 0.75, None, False, "cosine", 0.1, 3)


@pytest.mark.parametrize("preset,norm,epochs,want", [
    ("fp32", "fixup", 14, (0.2, 0)), ("fp32", "fixup", 15, (0.2, 2)), ("fp32", "fixup", 30, (0.2, 2)),
    ("eoq", "fixup", 5, (0.2, 0)), ("eoq", "fixup", 30, (0.1, 2)), ("eoq-float-ends", "fixup", 30, (0.1, 2)),
    ("fp32", "bn", 30, (0.2, 2)), ("eoq-shift", "fixup", 30, (0.15, 4))])
def test_long_schedule_defaults(preset, norm, epochs, want):
    """From LONG_EPOCHS epochs on, Fixup runs take the crop (and eoq the lower peak) chosen on
    validation at 30 epochs; other runs and short schedules keep their defaults."""
    from eoq.training.config import TrainConfig
    cfg = TrainConfig(preset=preset, norm=norm, epochs=epochs).validate()
    assert (cfg.lr, cfg.crop_pad) == want
    assert TrainConfig(preset=preset, norm=norm, epochs=epochs, crop_pad=1, lr=0.3).validate().crop_pad == 1


def test_schedule_defaults_by_norm_and_update_kind(monkeypatch):
    """Unset schedule fields come from DEFAULTS with the (kind, norm) overrides; momentum cycling
    only together with the default momentum; integer-update presets never get float-only options."""
    from eoq.training import config as C
    monkeypatch.setitem(C.NORM_DEFAULTS, ("float", "fixup"), {"schedule": "onecycle-cos", "warmup": 0.3,
                                                              "momentum": 0.95, "momentum_min": 0.85})
    monkeypatch.setitem(C.NORM_DEFAULTS, ("float", "bn"), {"nesterov": True, "momentum": 0.9})
    cfg = C.TrainConfig(preset="fp32", norm="fixup").validate()
    assert (cfg.schedule, cfg.warmup, cfg.momentum, cfg.momentum_min, cfg.nesterov) == \
        ("onecycle-cos", 0.3, 0.95, 0.85, False)
    cfg = C.TrainConfig(preset="fp32", norm="fixup", momentum=0.9).validate()
    assert (cfg.momentum, cfg.momentum_min) == (0.9, None)
    cfg = C.TrainConfig(preset="fp32", norm="bn").validate()
    assert (cfg.schedule, cfg.momentum, cfg.nesterov) == ("onecycle", 0.9, True)
    assert C.TrainConfig(preset="fp32", norm="bn", nesterov=False).validate().nesterov is False
    cfg = C.TrainConfig(preset="wageubn", norm="bn").validate()      # 24-bit integer updates
    assert (cfg.nesterov, cfg.momentum_min, cfg.momentum) == (False, None, 0.875)

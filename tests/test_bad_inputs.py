"""A catalogue of user mistakes: each ends in one clear line, a non-zero exit, and no partial file."""
import json
import zipfile

import pytest
import torch

from eoq.cli import main
from eoq.quant import quantizers as Q

BASE = ["train", "--data", "embedded", "--train-limit", "64", "--test-limit", "32", "--batch-size", "32",
        "--epochs", "1", "--no-progress"]


def run_cli(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    return code, err


def no_partial_files(out):
    return not out.exists() or not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def spec_file(tmp_path, data):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps(data))
    return str(p)


CASES = {
    "bits out of range": (lambda t: ["--preset", spec_file(t, {"base": "eoq", "W": 40})], "bit width"),
    "bits too small": (lambda t: ["--preset", spec_file(t, {"base": "eoq", "E": {"bits": 1}})], "bit width"),
    "spec typo": (lambda t: ["--preset", spec_file(t, {"base": "eoq", "E": {"bit": 8}})], "did you mean 'bits'"),
    "spec not json": (lambda t: ["--preset", str((t / "x.json").write_text("{") and t / "x.json")], "not valid JSON"),
    "spec missing": (lambda t: ["--preset", str(t / "none.json")], "not found"),
    "empty data dir": (lambda t: ["--data", str((t / "d").mkdir() or t / "d")], "not CIFAR-shaped"),
    "data is a text file": (lambda t: ["--data", str((t / "f.txt").write_text("x") and t / "f.txt")],
                            "neither an image-folder"),
    "zip of other classes": (lambda t: ["--data", _zip(t, "train/giraffe/0.jpg")], "not a CIFAR-10 class"),
    "zip without test split": (lambda t: ["--data", _zip(t, "train/cat/0.jpg")], "not CIFAR-shaped"),
    "zero threads": (lambda t: ["--threads", "0"], "--threads must be a positive integer"),
    "negative train limit": (lambda t: ["--train-limit", "-5"], "--train-limit must be a positive integer"),
    "warmup of 1": (lambda t: ["--warmup", "1.0"], "--warmup must be a fraction"),
    "negative weight decay": (lambda t: ["--weight-decay", "-1"], "--weight-decay must be >= 0"),
    "negative checkpoint interval": (lambda t: ["--checkpoint-every", "-1"], "--checkpoint-every"),
    "unknown engine": (lambda t: ["--engine", "gpu"], "unknown engine"),
    "negative crop padding": (lambda t: ["--crop-pad", "-1"], "--crop-pad must be an integer in [0, 16]"),
    "label smoothing of 1": (lambda t: ["--label-smoothing", "1"], "--label-smoothing must be in [0, 1)"),
    "nesterov with integer updates": (lambda t: ["--nesterov"], "float updates only"),
    "momentum minimum above momentum": (lambda t: ["--preset", "fp32", "--momentum", "0.875", "--momentum-min", "0.95"],
                                        "--momentum-min must be in [0, momentum=0.875]"),
    "momentum cycling with a step schedule": (lambda t: ["--preset", "fp32", "--momentum-min", "0.8",
                                                         "--schedule", "step"], "--momentum-min needs"),
}


def _zip(tmp_path, *names):
    p = tmp_path / "odd.zip"
    with zipfile.ZipFile(p, "w") as z:
        for n in names:
            z.writestr(n, b"x")
    return str(p)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_gives_one_line(tmp_path, capsys, case, monkeypatch):
    monkeypatch.setenv("EOQ_CACHE", str(tmp_path / "cache"))
    make_args, message = CASES[case]
    extra = make_args(tmp_path)
    out = tmp_path / "run"
    code, err = run_cli(capsys, BASE + ["--out", str(out)] + extra)
    assert code == 2, err
    assert err.startswith("eoq: error: ") and message in err and "\n" not in err, err
    assert not (out / "checkpoint.pt").exists() and not (out / "metrics.csv").exists()
    assert no_partial_files(out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("done") / "run"
    assert main(BASE + ["--out", str(out)]) == 0
    return out


def test_output_dir_holding_another_run(capsys, finished_run):
    code, err = run_cli(capsys, BASE + ["--out", str(finished_run)])
    assert code == 2 and "holds another run" in err


def test_resume_with_nothing(capsys, tmp_path):
    code, err = run_cli(capsys, BASE + ["--out", str(tmp_path / "empty"), "--resume"])
    assert code == 2 and "nothing to resume" in err


@pytest.mark.parametrize("change,message", [(["--preset", "fp32"], "preset='eoq'"),
                                            (["--model", "resnet32"], "model='resnet20'"),
                                            (["--norm", "bn"], "norm='fixup'"),
                                            (["--batch-size", "16"], "batch_size=32")])
def test_checkpoint_from_another_configuration(capsys, finished_run, change, message):
    code, err = run_cli(capsys, BASE + ["--out", str(finished_run), "--resume"] + change)
    assert code == 2 and message in err and "\n" not in err


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not a dict"])
def test_corrupt_checkpoint(capsys, tmp_path, finished_run, damage):
    out = tmp_path / "copy"
    out.mkdir()
    for f in finished_run.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    ck = out / "checkpoint.pt"
    if damage == "truncate":
        ck.write_bytes(ck.read_bytes()[: len(ck.read_bytes()) // 2])
    elif damage == "garbage":
        ck.write_bytes(b"\x00garbage" * 100)
    elif damage == "empty":
        ck.write_bytes(b"")
    else:
        torch.save([1, 2, 3], ck)
    code, err = run_cli(capsys, BASE + ["--out", str(out), "--resume", "--epochs", "2"])
    assert code == 2 and ("corrupt or truncated" in err or "not an eoq checkpoint" in err), err
    assert "\n" not in err


def test_divergence_in_eoq_names_the_step(capsys, tmp_path):
    out = tmp_path / "nan"
    # int8 updates are clamped to 31 LSBs, so the weights grow by at most one exponent step per
    # step: the blow-up needs some steps (here about 56 of batch 8) and may surface in a step or in
    # evaluation
    code, err = run_cli(capsys, BASE + ["--out", str(out), "--lr", "1e30", "--warmup", "0", "--schedule", "constant",
                                        "--norm", "none", "--train-limit", "1024", "--batch-size", "8", "--val", "0"])
    assert code == 3 and "at epoch 1, " in err and "no checkpoint was written yet" in err, err
    assert not (out / "metrics.csv").exists()


@pytest.mark.parametrize("fn", [lambda x: Q.sq(x, 8), lambda x: Q.fq(x, 8), lambda x: Q.cq(x, 8, 128),
                                lambda x: Q.sq(x, 8, "stochastic"), lambda x: Q.fixed_grid(x, -7, 8)])
@pytest.mark.parametrize("shape", [(0,), (3, 0), (5,), (2, 3)])
def test_empty_and_all_zero_tensors_in_every_quantizer(fn, shape):
    x = torch.zeros(shape)
    out = fn(x)
    assert out.shape == x.shape and torch.count_nonzero(out) == 0 and torch.isfinite(out).all()


@pytest.mark.parametrize("fn", [lambda x: Q.sq(x, 8), lambda x: Q.fq(x, 8), lambda x: Q.cq(x, 8, 128),
                                lambda x: Q.pow2_scale(x)])
def test_non_finite_values_in_every_quantizer(fn):
    with pytest.raises(Q.QuantizationError, match="NaN or Inf"):
        fn(torch.tensor([0.5, float("inf")]))

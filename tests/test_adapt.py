"""Online adaptation (eoq adapt, eoq.training.adapt) and the shipped weights (eoq.training.weights):
one adaptation step for every method on the embedded data, frozen BN keeps its running statistics,
a resumed adaptation equals an uninterrupted one, bad input gives one line."""
import numpy as np
import pytest
import torch

from eoq.cli import main
from eoq.training import adapt as adapt_mod
from eoq.training.adapt import AdaptConfig, adapt, interleaved
from eoq.training.checkpoint import CheckpointError
from eoq.training.loop import TrainingDiverged
from eoq.training.weights import export_weights, load_base

BASES = {"bn_fp32": ("bn", "fp32", "sim"), "fixup_fp32": ("fixup", "fp32", "sim"), "fixup_eoq": ("fixup", "eoq", "int"),
         "bn_wageubn": ("bn", "wageubn", "sim")}


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    for name, (norm, preset, engine) in BASES.items():
        assert main(["train", "--data", "embedded", "--model", "resnet20", "--norm", norm, "--preset", preset,
                     "--engine", engine, "--epochs", "1", "--train-limit", "256", "--test-limit", "50",
                     "--threads", "1", "--no-progress", "--out", str(root / name)]) == 0
        export_weights(root / name)
    return root


def _cfg(run_dir, **kw):
    base = dict(corruption="contrast", severity=3, batch_size=2, samples=4, lr=0.01, points=(0, 4), eval_limit=40,
                progress=False)
    return AdaptConfig(run_dir=str(run_dir), **{**base, **kw})


@pytest.mark.parametrize("name,bn", [("bn_fp32", "batch"), ("bn_fp32", "frozen"), ("fixup_fp32", "batch"),
                                     ("fixup_eoq", "batch"), ("bn_wageubn", "batch")])
def test_one_adaptation_step_for_every_method(bases, name, bn, monkeypatch):
    seen = {}
    original = adapt_mod.train_step

    def spy(model, optimizer, x, y, **kw):
        seen["before"] = {k: v.clone() for k, v in model.state_dict().items()}
        seen["training"] = {type(m).__name__: m.training for m in model.modules()}
        out = original(model, optimizer, x, y, **kw)
        seen["after"] = {k: v.clone() for k, v in model.state_dict().items()}
        return out

    monkeypatch.setattr(adapt_mod, "train_step", spy)
    run = adapt(_cfg(bases / name, bn=bn, samples=2, points=(0, 2)))
    assert [r["images"] for r in run.rows] == [0, 2] and 0 <= run.clean_acc <= 100
    before, after = seen["before"], seen["after"]
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))   # it learned
    stats = [k for k in before if k.endswith(("running_mean", "running_var"))]
    if bn == "frozen":                    # frozen BN: eval mode, running statistics untouched
        assert stats and all(torch.equal(before[k], after[k]) for k in stats)
        assert not any(t for n, t in seen["training"].items() if "BatchNorm" in n)
    elif stats:
        assert any(not torch.equal(before[k], after[k]) for k in stats)


def test_the_integer_engine_adapts_with_integer_codes(bases):
    cfg_, spec, s = load_base(bases / "fixup_eoq")
    assert cfg_.engine == "int" and spec.wd_bits and s.model.conv1.engine == "int"
    run = adapt(_cfg(bases / "fixup_eoq", batch_size=1, samples=3, points=(0, 3)))
    assert run.seconds_per_image > 0


def test_a_resumed_adaptation_equals_an_uninterrupted_one(bases, tmp_path, monkeypatch):
    whole = adapt(_cfg(bases / "fixup_eoq", samples=8, points=(0, 4, 8), out=str(tmp_path / "a")))
    calls = {"n": 0}
    original = adapt_mod.train_step

    def dies_after_two(*a, **k):
        if calls["n"] == 3:
            raise KeyboardInterrupt                      # killed after the checkpoint at 4 images
        calls["n"] += 1
        return original(*a, **k)

    monkeypatch.setattr(adapt_mod, "train_step", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        adapt(_cfg(bases / "fixup_eoq", samples=8, points=(0, 4, 8), out=str(tmp_path / "b")))
    monkeypatch.setattr(adapt_mod, "train_step", original)
    resumed = adapt(_cfg(bases / "fixup_eoq", samples=8, points=(0, 4, 8), out=str(tmp_path / "b"), resume=True))
    assert [(r["images"], r["acc"]) for r in resumed.rows] == [(r["images"], r["acc"]) for r in whole.rows]
    a = torch.load(tmp_path / "a" / "adapt.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "b" / "adapt.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.clean_acc == whole.clean_acc


def test_interleaved_prefixes_are_class_balanced():
    labels = np.repeat(np.arange(10), 7)
    idx = interleaved(labels)
    assert labels[idx[:10]].tolist() == list(range(10)) and sorted(idx.tolist()) == list(range(70))


def test_weights_file_is_checked(bases, tmp_path):
    import shutil
    d = tmp_path / "w"
    shutil.copytree(bases / "fixup_fp32", d)
    (d / "checkpoint.pt").unlink()
    load_base(d)                                       # weights.pt alone is enough
    raw = bytearray((d / "weights.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / "weights.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="does not match its weights.sha256"):
        load_base(d)


@pytest.mark.parametrize("args,message", [
    (["--corruption", "fog"], "unknown corruption 'fog'"),
    (["--severity", "0"], "severity must be an integer in 1-5"),
    (["--batch-size", "8", "--samples", "4"], "larger than the stream"),
    (["--bn", "frozen"], "--bn frozen applies to BN networks"),
])
def test_bad_input_is_one_line(bases, capsys, args, message):
    assert main(["adapt", str(bases / "fixup_fp32"), "--no-progress", "--eval-limit", "10"] + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_directory_without_a_network_is_one_line(tmp_path, capsys):
    assert main(["adapt", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither weights.pt nor checkpoint.pt" in err[0]


def test_the_study_runs_both_stages_and_resumes(bases, tmp_path):
    """analysis.adaptation on tiny bases: lr chosen on validation, final cells on test, study.md and
    the figure written; a second call finds every cell done and adds no row."""
    import shutil

    from analysis import adaptation
    names = {"base_bn_fp32_s0": "bn_fp32", "base_fixup_fp32_s0": "fixup_fp32", "base_fixup_eoq_s0": "fixup_eoq",
             "base_bn_wageubn_s0": "bn_wageubn"}
    root = tmp_path / "bases"
    for name, src in names.items():
        shutil.copytree(bases / src, root / name)
    argv = ["--bases", str(root), "--out", str(tmp_path / "study"), "--data", "embedded", "--samples", "4",
            "--batch-sizes", "2", "--lrs", "0.5", "1", "--seeds", "0", "--corruptions", "contrast", "--severities", "3",
            "--choose-corruptions", "contrast", "--eval-limit", "20", "--points", "0", "4", "--time-images", "0"]
    assert adaptation.main(argv) == 0
    final = adaptation.all_rows(tmp_path / "study", "final")
    assert {r["method"] for r in final} == set(adaptation.METHODS) and {int(r["images"]) for r in final} == {0, 4}
    assert len(adaptation.all_rows(tmp_path / "study", "choose")) == 2 * len(adaptation.METHODS)
    for name in ("adapt_vs_images", "adapt_vs_batch", "adapt_clean"):
        assert (tmp_path / "study" / f"{name}.png").exists() and (tmp_path / "study" / f"{name}.pdf").exists()
    study = (tmp_path / "study" / "study.md").read_text()
    assert "| EOQ | 2 |" in study and "energy per image" in study
    assert adaptation.main(argv) == 0
    assert len(adaptation.all_rows(tmp_path / "study", "final")) == len(final)
    # a part process skips the cells the whole-study process did: no row is measured twice
    assert adaptation.main(argv + ["--part", "1/2"]) == 0
    assert len(adaptation.all_rows(tmp_path / "study", "final")) == len(final)


def test_a_wider_grid_in_parts_waits_for_every_choice_and_tables_only_the_chosen_lr(bases, tmp_path, capsys):
    """The lr grid widened after a study: each part runs its new choosing cells; the final stage
    refuses (one line) until every part's are done; the tables then read only rows at the lr now
    chosen, and study.md marks a choice at the grid's end."""
    import shutil

    from analysis import adaptation
    root = tmp_path / "bases"
    shutil.copytree(bases / "fixup_eoq", root / "base_fixup_eoq_s0")
    out = tmp_path / "study"
    argv = ["--bases", str(root), "--out", str(out), "--data", "embedded", "--samples", "4", "--methods", "EOQ",
            "--batch-sizes", "2", "--seeds", "0", "--corruptions", "contrast", "--severities", "3",
            "--choose-corruptions", "contrast", "--eval-limit", "20", "--points", "0", "4", "--time-images", "2",
            "--time-repeats", "1"]
    assert adaptation.main(argv + ["--lrs", "1"]) == 0
    wider = argv + ["--lrs", "0.01", "1", "100", "0.1"]        # lrs 1e-4, 0.01 (done), 1, 1e-3
    assert adaptation.main(wider + ["--part", "0/2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "the choosing stage is not complete (1 cells" in err[0]
    assert adaptation.main(wider + ["--part", "1/2"]) == 0
    assert adaptation.main(wider + ["--part", "0/2"]) == 0    # the final cell at a new choice is part 0's
    final, chosen = adaptation.current_final(out)
    lr = chosen[("EOQ", 2)]
    assert final and all(r["lr"] == lr for r in final)
    assert len(adaptation.all_rows(out, "choose")) == 4
    if lr != 0.01:                      # rows of the earlier choice stay in the CSVs, out of the tables
        assert len(adaptation.all_rows(out, "final")) > len(final)
    study = (out / "study.md").read_text()
    assert ("(edge)" in study) == (lr in (0.0001, 1.0))
    cost_rows = [line for line in study.splitlines() if line.startswith("| EOQ | 2 |") and " ms |" in line]
    assert len(cost_rows) == 1 and cost_rows[0].split("|")[3].strip().endswith(" ms")     # timed alone


def test_a_diverging_adaptation_says_where_and_what_to_do(bases, monkeypatch):
    def boom(model, optimizer, x, y, **kw):
        raise TrainingDiverged("cannot quantize a tensor holding NaN or Inf")

    monkeypatch.setattr(adapt_mod, "train_step", boom)
    with pytest.raises(TrainingDiverged, match=r"adaptation diverged at image 2 of 4 \(lr 5\): cannot quantize .*"
                                                r"try a lower --lr"):
        adapt(_cfg(bases / "fixup_eoq", lr=5.0))


def test_a_committed_base_adapts_on_other_data():
    """A base trained on full CIFAR-10 with 5,000 validation images held out adapts on the embedded
    subset (5,000 training images): the hold-out is the subset's own default, not the base run's."""
    from pathlib import Path
    base = Path(__file__).resolve().parents[1] / "reports" / "adaptation" / "base" / "runs" / "base_bn_fp32_s0"
    if not (base / "weights.pt").exists():
        pytest.skip("the committed fp32+BN base is not in this checkout")
    run = adapt(AdaptConfig(run_dir=str(base), corruption="gaussian_noise", severity=5, batch_size=1, samples=4,
                            lr=1e-3, bn="batch", points=(0, 4), eval_limit=40, data="embedded", threads=1,
                            progress=False))
    assert [r["images"] for r in run.rows] == [0, 4]


def test_a_table_cell_tells_not_measured_from_diverged():
    from analysis import adaptation
    nan = float("nan")
    assert adaptation.mean_std([]) == "–"
    assert adaptation.mean_std([nan, nan]) == "diverged"
    assert adaptation.mean_std([80.0, nan, 82.0]) == "81.00 ± 1.41 (1 of 3 diverged)"
    assert adaptation.mean_std([80.0, 82.0]) == "81.00 ± 1.41"
    row = dict(method="EOQ", corruption="contrast", severity=3, batch_size=1, images=4, acc=80.0, clean_acc=85.0,
               diverged="")
    bad = dict(row, seed=1, acc=nan, clean_acc=nan, diverged="adaptation diverged")
    final = [dict(row, seed=0), bad, dict(row, method="WAGEUBN", seed=0)]
    lines = adaptation.table(final, 4).splitlines()
    assert lines[0].endswith("contrast 3 | clean at end (all cells) |")
    assert lines[2] == "| EOQ | 1 | 80.00 (1 of 2 diverged) | 85.00 (1 of 2 diverged) |"
    assert lines[3] == "| WAGEUBN | 1 | 80.00 | 85.00 |"
    before = adaptation.table(final, 0, clean=False).splitlines()
    assert before[0].endswith("contrast 3 |") and before[2] == "| EOQ | 1 | – |"


def test_the_summary_averages_streams_per_seed_then_spreads_over_seeds():
    """Two seeds, two streams each: seed means 81 and 83 -> 82.00 ± 1.41; before 70 (both seeds)."""
    from analysis import adaptation
    rows = []
    for seed, accs in ((0, (80.0, 82.0)), (1, (82.0, 84.0))):
        for c, acc in zip(("contrast", "brightness"), accs):
            base = dict(method="EOQ", corruption=c, severity=3, batch_size=1, lr=3e-5, seed=seed, diverged="")
            rows += [dict(base, images=0, acc=70.0, clean_acc=float("nan")),
                     dict(base, images=8, acc=acc, clean_acc=85.0 + seed)]
    lines = adaptation.summary(rows).splitlines()
    assert lines[0].startswith("| method | batch | lr | before (0 images) | after 8 images |")
    assert lines[2] == "| EOQ | 1 | 3e-05 | 70.00 ± 0.00 | 82.00 ± 1.41 | +12.00 | 85.50 ± 0.71 |"

"""analysis.runs: seed groups and the seed-spread table against hand-worked values."""
import json

import pytest

from analysis.runs import load_run, main, seed_groups, seed_table


def make_run(root, name, seed, acc, preset="eoq", lr=0.25, threads=1, **extra):
    d = root / name
    d.mkdir()
    cfg = {"model": "resnet20", "norm": "fixup", "preset": preset, "epochs": 1, "lr": lr,
           "seed": seed, "out": str(d), "threads": threads, **extra}
    (d / "config.json").write_text(json.dumps({"train": cfg, "spec": {"name": preset}}))
    (d / "metrics.csv").write_text("epoch,train_loss,train_acc,test_acc,seconds,lr,steps\n"
                                   f"1,1.0,50.0,{acc},10.0,0.1,391\n")
    return d


def test_seed_table_groups_by_settings_and_gives_mean_and_sample_std(tmp_path):
    dirs = [make_run(tmp_path, "a0", 0, 70.0), make_run(tmp_path, "a1", 1, 72.0, threads=2, crop_pad=4),
            make_run(tmp_path, "b0", 0, 75.0, preset="fp32"), make_run(tmp_path, "a2", 2, 74.0),
            make_run(tmp_path, "c0", 0, 60.0, lr=0.125)]
    runs = [load_run(d) for d in dirs]
    groups = seed_groups(runs)
    assert [[r["config"]["seed"] for r in g] for g in groups] == [[0, 1, 2], [0], [0]]
    rows = seed_table(runs).splitlines()[2:]
    # 70, 72, 74: mean 72, sample variance (4 + 0 + 4) / 2 = 4, std 2
    assert rows[0] == "| EOQ | 0, 1, 2 | 70.00, 72.00, 74.00 | 72.00 | 2.00 |  |"
    assert rows[1] == "| fp32+Fixup | 0 | 75.00 | 75.00 |  |  |"         # the label names the preset
    assert rows[2] == "| EOQ | 0 | 60.00 | 60.00 |  | lr 0.125 |"     # another lr: its own group, named
    # a1 names crop_pad 4, which a0 and a2 predate and used, so they grouped above; crop pad 2 does not
    other_crop = load_run(make_run(tmp_path, "d0", 0, 1.0, crop_pad=2))
    assert len(seed_groups(runs + [other_crop])) == 4
    assert seed_table(runs + [other_crop]).splitlines()[-1].endswith("| crop_pad 2 |")
    assert main([str(d) for d in dirs] + ["--out", str(tmp_path / "out"), "--seeds"]) == 0
    assert rows[0] in (tmp_path / "out" / "accuracy.md").read_text()


def test_a_run_that_stopped_early_is_named_and_left_out_of_the_mean(tmp_path):
    dirs = [make_run(tmp_path, f"r{s}", s, acc, epochs=2) for s, acc in ((0, 70.0), (1, 74.0), (2, 30.0))]
    for d, last in zip(dirs, (True, True, False)):       # seed 2 diverged after epoch 1 of 2
        lines = (d / "metrics.csv").read_text().splitlines()
        if last:
            lines.append(lines[1].replace("1,", "2,", 1))
        (d / "metrics.csv").write_text("\n".join(lines) + "\n")
    row = seed_table([load_run(d) for d in dirs]).splitlines()[2]
    assert row == "| EOQ | 0, 1, 2 | 70.00, 74.00, stopped after epoch 1 | 72.00 | 2.83 |  |"


def test_a_spec_file_run_is_named_by_its_spec(tmp_path):
    d = make_run(tmp_path, "u", 0, 70.0, preset="specs/u6.json")
    cfg = json.loads((d / "config.json").read_text())
    cfg["spec"]["name"] = "eoq-u6"
    (d / "config.json").write_text(json.dumps(cfg))
    assert seed_table([load_run(d)]).splitlines()[2].startswith("| eoq-u6+fixup | 0 | 70.00 |")
    cfg["spec"] = None                                    # no spec saved: the file's stem
    (d / "config.json").write_text(json.dumps(cfg))
    assert seed_table([load_run(d)]).splitlines()[2].startswith("| u6+fixup | 0 |")


def test_runs_sharing_a_label_share_a_colour_and_differ_in_line_style(tmp_path, monkeypatch):
    import analysis.runs as runs_mod
    figs = []
    monkeypatch.setattr(runs_mod, "save", lambda fig, stem: figs.append(fig) or [])
    dirs = [make_run(tmp_path, f"u{s}", s, 70.0, preset="u6.json") for s in (0, 1)]
    dirs.append(make_run(tmp_path, "e0", 0, 70.0))
    runs_mod.plot_curves([load_run(d) for d in dirs], tmp_path / "c")
    lines = figs[0].axes[0].get_lines()
    assert lines[0].get_color() == lines[1].get_color() != lines[2].get_color()
    assert lines[0].get_linestyle() != lines[1].get_linestyle()


def test_tables_show_validation_accuracy_when_runs_have_it(tmp_path):
    """Settings are chosen on validation: with val_acc in metrics.csv, both tables show it (the
    seed table with its mean and sample std: 60, 64 -> 62.00, 2.83)."""
    from analysis.runs import accuracy_table

    dirs = []
    for seed, (val, test) in enumerate(((60.0, 70.0), (64.0, 72.0))):
        d = make_run(tmp_path, f"v{seed}", seed, test)
        (d / "metrics.csv").write_text("epoch,train_loss,train_acc,val_acc,test_acc,seconds,lr,steps\n"
                                       f"1,1.0,50.0,{val},{test},10.0,0.1,352\n")
        dirs.append(d)
    runs = [load_run(d) for d in dirs]
    assert "| final val acc (%) | best val acc (%) |" in accuracy_table(runs)
    assert "| 60.00 | 60.00 | 70.00 |" in accuracy_table(runs)
    assert seed_table(runs).splitlines()[2] == ("| EOQ | 0, 1 | 70.00, 72.00 | 71.00 | 1.41 | 60.00, 64.00 | 62.00 "
                                                "| 2.83 |  |")


def test_a_spec_field_a_run_predates_counts_as_its_default(tmp_path):
    """A run saved before a spec field existed (no stream_bits, no weight_policy.min_exponent) used
    the field's default: it groups with a run that names the default, not with one that changes it."""
    from eoq.quant.spec import QuantSpec

    new = QuantSpec(name="x").to_dict()
    old = {k: v for k, v in new.items() if k not in ("stream_bits", "lr_bits")}
    old["weight_policy"] = {k: v for k, v in new["weight_policy"].items() if k != "min_exponent"}
    changed = {**new, "stream_bits": 16}
    dirs = [make_run(tmp_path, f"s{i}", i, 70.0) for i in range(3)]
    for d, spec in zip(dirs, (old, new, changed)):
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps({**cfg, "spec": spec}))
    groups = seed_groups([load_run(d) for d in dirs])
    assert [[r["config"]["seed"] for r in g] for g in groups] == [[0, 1], [2]]


def test_a_diverged_run_says_where_in_every_table(tmp_path):
    """A run with a DIVERGED file (written by campaign.sh from the run's last log line) is named
    'diverged at epoch E, step S' in the seed table, the accuracy table and the report's claim
    line, also when it ended inside its first epoch (no metrics row at all)."""
    from analysis.report import _mean_text
    from analysis.runs import accuracy_table

    ok = make_run(tmp_path, "ok", 0, 70.0, model="resnet56", norm="fixup")
    early = make_run(tmp_path, "early", 0, 70.0, model="resnet56", norm="none")
    (early / "metrics.csv").write_text("epoch,train_loss,train_acc,test_acc,seconds,lr,steps\n")
    (early / "DIVERGED").write_text("eoq: error: loss became nan at epoch 1, step 37; no checkpoint was "
                                    "written yet (try a lower --lr or a longer --warmup)\n")
    late = make_run(tmp_path, "late", 0, 30.0, model="resnet56", norm="none", preset="fp32", epochs=3)
    (late / "DIVERGED").write_text("eoq: error: a quantizer met NaN or Inf at epoch 2, step 5; the last good "
                                   "checkpoint is 'x'\n")
    runs = [load_run(d) for d in (ok, early, late)]
    assert runs[0]["diverged"] is None
    table = seed_table(runs).splitlines()
    assert "| diverged at epoch 1, step 37 |" in table[3] and "| diverged at epoch 2, step 5 |" in table[4]
    acc = accuracy_table(runs).splitlines()
    assert acc[3].startswith("| eoq+none | resnet56 | 0: diverged at epoch 1, step 37 |")   # EOQ is with Fixup
    assert acc[3].count("|") == acc[2].count("|")                   # as many cells as the others
    assert "| 1: diverged at epoch 2, step 5 | 30.00 |" in acc[4]
    assert _mean_text("EOQ", [runs[1]]) == "EOQ: diverged at epoch 1, step 37"


def test_a_run_that_diverged_before_its_first_metrics_row_loads_without_rows(tmp_path):
    """eoq train writes metrics.csv at the end of an epoch: a run that diverged in its first epoch
    has only config.json, its log and DIVERGED; it loads with no rows and its curves are left out,
    while a folder with neither metrics.csv nor DIVERGED is refused."""
    from analysis.runs import accuracy_table, plot_curves

    ok = make_run(tmp_path, "ok", 0, 70.0, model="resnet56", norm="fixup")
    bad = make_run(tmp_path, "bad", 0, 70.0, model="resnet56", norm="none", preset="fp32")
    (bad / "metrics.csv").unlink()
    (bad / "DIVERGED").write_text("eoq: error: loss became nan at epoch 1, step 2; no checkpoint was written yet\n")
    runs = [load_run(ok), load_run(bad)]
    assert runs[1]["rows"] == [] and runs[1]["diverged"].startswith("eoq: error: loss became nan")
    assert accuracy_table(runs).splitlines()[3].startswith("| fp32+None | resnet56 | 0: diverged at epoch 1, step 2 |")
    assert [p.suffix for p in plot_curves(runs, tmp_path / "curves")] == [".png", ".pdf"]
    (bad / "DIVERGED").unlink()
    with pytest.raises(FileNotFoundError, match="no metrics.csv and no DIVERGED"):
        load_run(bad)


def test_the_code_line_counts_runs_by_commit(tmp_path):
    from analysis.runs import code_text

    runs = [load_run(make_run(tmp_path, f"r{i}", i, 70.0)) for i in range(4)]
    runs[0]["code"] = {"commit": "1a2b3c4d" + "0" * 32, "dirty": False}
    runs[1]["code"] = {"commit": "1a2b3c4d" + "0" * 32, "dirty": False,
                       "resumed_at": [{"commit": "1a2b3c4d" + "0" * 32, "dirty": True}]}
    runs[2]["code"] = {"commit": "ffff0000" + "0" * 32, "dirty": False}
    assert code_text(runs) == ("2 runs at commit 1a2b3c4d, 1 of them with uncommitted changes; 1 run at commit "
                               "ffff0000; 1 run from before commits were recorded (their commit: the one that "
                               "added their files)")
    runs[0]["code"] = {"commit": "1a2b3c4d" + "0" * 32, "dirty": True, "changed": ["README.md"]}
    runs[2]["code"] = {"commit": "ffff0000" + "0" * 32, "dirty": False,
                       "resumed_at": [{"commit": "ffff0000" + "0" * 32, "dirty": True, "changed": ["eoq/cli.py"]}]}
    assert code_text(runs) == ("2 runs at commit 1a2b3c4d, 1 of them with uncommitted changes, 1 of them with "
                               "uncommitted changes outside the code only; 1 run at commit ffff0000, 1 of them "
                               "with uncommitted changes to the code; 1 run from before commits were recorded "
                               "(their commit: the one that added their files)")


def test_the_modules_run_once_under_python_m():
    """``python -m analysis.runs`` (and its siblings) must not find the module already imported by
    the package (runpy's RuntimeWarning, and module-level work done twice): the package imports its
    public names on first use. Every public name resolves."""
    import subprocess
    import sys

    import analysis

    for module in ("analysis.runs", "analysis.batch_study", "analysis.report"):
        out = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", module, "--help"],
                             capture_output=True, text=True)
        assert out.returncode == 0 and "RuntimeWarning" not in out.stderr, (module, out.stderr[-500:])
    assert all(callable(getattr(analysis, name)) for name in analysis.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        analysis.nothing


def test_a_figure_saved_twice_gives_the_same_pdf_bytes(tmp_path):
    """analysis.style.save writes PNG and PDF; the PDF carries no creation date, so rebuilding a
    report leaves unchanged figures byte-identical (matplotlib stamps the time by default)."""
    from analysis.style import figure, save

    paths = []
    for name in ("a", "b"):
        fig, axes = figure(1)
        axes[0][0].plot([1, 2, 3], [3, 1, 2])
        paths.append(save(fig, tmp_path / name))
    assert [p.suffix for p in paths[0]] == [".png", ".pdf"]
    pdf = paths[0][1].read_bytes()
    assert b"CreationDate" not in pdf and pdf == paths[1][1].read_bytes()


def test_a_json_spec_equal_to_a_preset_is_named_after_it():
    """A run trained from a spec file whose settings a preset later adopted is labelled by that
    preset; a spec differing in one field keeps its own name."""
    from analysis.runs import label, same_preset
    from eoq.quant.presets import get_preset

    eoq = get_preset("eoq")
    renamed = eoq.with_changes(name="eoq-mine", description="a copy").to_dict()
    other = eoq.with_changes(name="eoq-m16", M=16).to_dict()
    assert same_preset(renamed) == "eoq" and same_preset(other) is None and same_preset({"bogus": 1}) is None
    run = {"config": {"preset": "x/eoq-mine.json", "norm": "fixup", "engine": "int"}, "spec": renamed}
    assert label(run) == "EOQ (integer engine)"
    run = {"config": {"preset": "x/eoq-m16.json", "norm": "fixup", "engine": "int"}, "spec": other}
    assert label(run) == "eoq-m16+fixup (integer engine)"

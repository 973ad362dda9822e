"""eoq report: from real (tiny) runs to figures and a REPORT.md whose numbers come from those runs."""
from eoq.cli import main
from eoq.training.metrics import read_metrics

BASE = ["train", "--data", "embedded", "--train-limit", "128", "--test-limit", "50", "--batch-size", "32",
        "--epochs", "1", "--no-progress"]


def test_report_from_runs(tmp_path, capsys):
    fp32, eoq = tmp_path / "fp32", tmp_path / "eoq"
    assert main(BASE + ["--preset", "fp32", "--out", str(fp32)]) == 0
    assert main(BASE + ["--preset", "eoq", "--qstats-every", "2", "--out", str(eoq)]) == 0
    out = tmp_path / "report"
    assert main(["report", str(fp32), str(eoq), "--qstats", str(eoq), "--cost-batch", "4", "--out", str(out)]) == 0
    text = (out / "REPORT.md").read_text()
    for section in ("## Accuracy", "## Quantization error", "## Cost", "## Reproduction table"):
        assert section in text
    eoq_acc = read_metrics(eoq / "metrics.csv")[-1]["test_acc"]
    assert f"EOQ {eoq_acc:.2f}%" in text                          # the table quotes the run's own number
    assert "each its own schedule" in text                        # fp32+Fixup and EOQ defaults differ
    assert "stored tensors are int8 codes x 2^e" in text
    assert "not measured here" in text                            # small-batch claim: no such runs given
    for fig in ("accuracy_curves", "qstats_heatmap", "qstats_curves", "cost_energy_resnet20", "cost_norm_resnet20"):
        assert (out / f"{fig}.png").exists() and (out / f"{fig}.pdf").exists()


def test_report_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    """A folder with no config.json, or a config.json but neither metrics nor a DIVERGED file, is
    refused with one message and no report written."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    for d in ("empty", "half"):
        assert main(["report", str(tmp_path / d), "--out", str(tmp_path / "r")]) == 2
        assert "is not a run directory" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_report_gives_seed_means_and_names_the_integer_engine_run(tmp_path):
    """Runs that differ only in seed: the seed table and, in the reproduction table, mean ± std
    (70 and 72 -> 71.00 ± 1.41); an integer-engine EOQ run counts as EOQ; without a checkpoint
    the storage claim says what the spec stores."""
    import json

    from analysis.report import build_report
    from eoq.quant.presets import get_preset

    dirs = []
    for name, preset, engine, seed, acc in (("e0", "eoq", "int", 0, 70.0), ("e1", "eoq", "int", 1, 72.0),
                                            ("f0", "fp32", "sim", 0, 75.0)):
        d = tmp_path / name
        d.mkdir()
        cfg = {"model": "resnet20", "norm": "fixup", "preset": preset, "engine": engine, "epochs": 1,
               "seed": seed, "batch_size": 128}
        (d / "config.json").write_text(json.dumps({"train": cfg, "spec": get_preset(preset).to_dict()}))
        (d / "metrics.csv").write_text("epoch,train_loss,train_acc,val_acc,test_acc,seconds,lr,steps\n"
                                       f"1,1.0,50.0,60.0,{acc},10.0,0.1,352\n")
        dirs.append(str(d))
    text = build_report(dirs, str(tmp_path / "r"), cost_batch=4).read_text()
    assert "| EOQ (integer engine) | 0, 1 | 70.00, 72.00 | 71.00 | 1.41 |" in text
    assert "EOQ (integer engine) 71.00 ± 1.41% (2 seeds), fp32+Fixup 75.00%" in text
    assert "no checkpoint kept; its spec stores 8-bit weight codes and 6-bit update codes" in text


def test_the_claim_line_gives_each_depth_and_names_a_divergence(tmp_path):
    """Runs of two depths: the reproduction table's first claim gives one part per model, each with
    its own epochs, and a run that diverged (DIVERGED file, no finished epoch) is named with where."""
    import json

    from analysis.report import build_report
    from eoq.quant.presets import get_preset

    dirs = []
    for name, model, norm, preset, epochs, acc in (("e20", "resnet20", "fixup", "eoq", 30, 85.0),
                                                   ("f20", "resnet20", "fixup", "fp32", 30, 86.0),
                                                   ("e56", "resnet56", "fixup", "eoq", 15, 84.0),
                                                   ("n56", "resnet56", "none", "eoq", 15, None)):
        d = tmp_path / name
        d.mkdir()
        cfg = {"model": model, "norm": norm, "preset": preset, "engine": "int" if preset == "eoq" else "sim",
               "epochs": epochs, "seed": 0, "batch_size": 128}
        (d / "config.json").write_text(json.dumps({"train": cfg, "spec": get_preset(preset).to_dict()}))
        rows = "" if acc is None else "".join(f"{e},1.0,50.0,60.0,{acc},10.0,0.1,352\n" for e in range(1, epochs + 1))
        (d / "metrics.csv").write_text("epoch,train_loss,train_acc,val_acc,test_acc,seconds,lr,steps\n" + rows)
        if acc is None:
            (d / "DIVERGED").write_text("eoq: error: loss became nan at epoch 1, step 12; no checkpoint\n")
        dirs.append(str(d))
    text = build_report(dirs, str(tmp_path / "r"), cost_batch=4).read_text()
    for model in ("resnet20", "resnet56"):                      # a figure per depth
        assert f"![accuracy](accuracy_curves_{model}.png)" in text
        assert (tmp_path / "r" / f"accuracy_curves_{model}.pdf").exists()
    line = next(x for x in text.splitlines() if x.startswith("| Full 8-bit"))
    assert ("resnet20, 30 epochs: EOQ (integer engine) 85.00%, fp32+Fixup 86.00%; resnet56, 15 epochs: "
            "EOQ (integer engine) 84.00%, eoq+none (integer engine): diverged at epoch 1, step 12") in line
    assert "| reproduced (resnet20: EOQ -1.00 against fp32+Fixup) |" in line     # resnet56 has no fp32+Fixup
    assert "Verdict rules (analysis/verdicts.py)" in text


def test_the_small_batch_claim_comes_from_the_batch_study(tmp_path, capsys):
    """--batch-study: the study's final rows (two parts, two seeds) give the section's table and the
    claim line for the two smallest batch sizes: EOQ at batch 1, 30 and 32 -> 31.00 ± 1.41."""
    from analysis.batch_study import COLUMNS
    from analysis.report import build_report
    from eoq.training.csvfile import write_rows

    study = tmp_path / "study"
    study.mkdir()
    rows = {"a": [], "b": []}
    for part, name, accs in (("b", "EOQ", {1: (30.0, 32.0), 2: (40.0, 40.0), 8: (50.0, 52.0)}),
                             ("a", "fp32+BN", {1: (20.0, 22.0), 2: (35.0, 37.0), 8: (55.0, 55.0)})):
        for b, pair in accs.items():
            rows[part].append({"config": name, "batch": b, "lr": 0.01, "seed": 0, "stage": "choose", "seen": 100,
                               "val_acc": 1.0, "test_acc": float("nan"), "seconds": 1.0, "final": True})
            for seed, acc in enumerate(pair):
                rows[part].append({"config": name, "batch": b, "lr": 0.01, "seed": seed, "stage": "final",
                                   "seen": 100, "val_acc": 1.0, "test_acc": acc, "seconds": 1.0, "final": True})
    for part, r in rows.items():
        write_rows(study / f"runs-{part}.csv", r, COLUMNS)
    text = build_report([], str(tmp_path / "r"), cost_batch=4, batch_study=str(study)).read_text()
    assert "## Small-batch online training" in text
    assert "| fp32+BN | 21.00 ± 1.41 | 36.00 ± 1.41 | 55.00 ± 0.00 |" in text
    line = next(x for x in text.splitlines() if x.startswith("| Larger advantage"))
    assert "batch 1: fp32+BN 21.00 ± 1.41, EOQ 31.00 ± 1.41; batch 2: fp32+BN 36.00 ± 1.41, EOQ 40.00 ± 0.00" \
        in line
    assert line.startswith("| Larger advantage in small-batch online training | reproduced (batch 1, 2) |")
    (tmp_path / "empty").mkdir()
    assert main(["report", "--batch-study", str(tmp_path / "empty"), "--out", str(tmp_path / "r2")]) == 2
    assert "holds no runs*.csv" in capsys.readouterr().err


def test_claim_5_is_read_on_a_deployed_network_from_the_adaptation_study(tmp_path):
    """--adaptation: the study's final rows give a section and a second claim-5 row: at batch 1 and 2,
    EOQ's mean corrupted test accuracy after the stream against the three BN methods."""
    from analysis.report import ADAPTATION_CLAIM, build_report
    from eoq.training.csvfile import write_rows

    study = tmp_path / "adaptation"
    study.mkdir()
    rows = []
    for method, accs in (("EOQ", {1: (60.0, 62.0), 2: (64.0, 64.0)}), ("fp32+BN (batch stats)", {1: (40.0, 42.0), 2: (50.0, 50.0)}),
                         ("fp32+BN (frozen stats)", {1: (58.0, 58.0), 2: (66.0, 66.0)})):
        for b, pair in accs.items():
            for seed, acc in enumerate(pair):
                for images, a in ((0, 50.0), (100, acc)):
                    rows.append({"stage": "final", "method": method, "corruption": "contrast", "severity": 5,
                                 "batch_size": b, "lr": 1e-3, "seed": seed, "images": images, "acc": a,
                                 "seconds": 1.0, "clean_acc": 80.0 if images == 100 else float("nan"),
                                 "diverged": ""})
    write_rows(study / "final.csv", rows, float_format=".6g")
    choices = [dict(r, stage="choose", images=100) for r in rows if r["images"] == 100 and r["seed"] == 0]
    write_rows(study / "choose.csv", choices, float_format=".6g")       # lr 1e-3 chosen everywhere
    text = build_report([], str(tmp_path / "r"), cost_batch=4, adaptation=str(study)).read_text()
    assert "## Online adaptation on the device" in text and "after 100 images" in text
    assert "| EOQ | 1 | 61.00 ± 1.41 | 80.00 ± 0.00 |" in text
    line = next(x for x in text.splitlines() if x.startswith(f"| {ADAPTATION_CLAIM}"))
    assert "batch 1: EOQ 61.00, fp32+BN (batch stats) 41.00, fp32+BN (frozen stats) 58.00" in line
    assert "not reproduced (batch 2: fp32+BN (frozen stats) 2.00 ahead)" in line
    empty = tmp_path / "none"
    empty.mkdir()
    text = build_report([], str(tmp_path / "r2"), cost_batch=4, adaptation=str(empty)).read_text()
    assert f"| {ADAPTATION_CLAIM} | not measured | not measured here (the online-adaptation study has not run) |" in text


def test_the_reference_report_is_what_its_own_command_makes(tmp_path, monkeypatch):
    """reports/REPORT.md names the command that built it (line 3); running that command from the
    committed run folders gives the same text, so the reference report holds no hand edits and no
    numbers that the runs beside it no longer give. Fails after a change to the report's code or
    its inputs until the report is rebuilt with its command."""
    import re
    import shlex
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "reports" / "REPORT.md").read_text()
    cmd = re.search(r"\(`(eoq report [^`]+)`\)", text.splitlines()[2]).group(1)
    argv = shlex.split(cmd)[1:]
    i = argv.index("--out")
    assert argv[i + 1] == "reports"
    argv[i + 1] = str(tmp_path / "r")
    monkeypatch.chdir(root)
    assert main(argv) == 0
    again = (tmp_path / "r" / "REPORT.md").read_text().replace(shlex.join(["--out", argv[i + 1]]), "--out reports")
    assert again == text
    figures = set(re.findall(r"!\[[^]]*\]\(([^)]+)\)", text))
    assert figures and all((root / "reports" / f).exists() and (tmp_path / "r" / f).exists() for f in figures)

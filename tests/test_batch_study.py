"""The small-batch study runs end to end on the embedded data: lr chosen on validation from the
grid, seeds at the chosen lr, table with mean +- std, figures; and it resumes from its CSV."""
import csv
import math

import pytest

from analysis import batch_study


def test_study_end_to_end_on_the_embedded_data(tmp_path):
    out = tmp_path / "study"
    argv = ["--samples", "16", "--batch-sizes", "1", "4", "--points", "2", "--val", "20", "--test", "20",
            "--seeds", "0", "1", "--extend", "0", "--data", "embedded", "--threads", "1", "--out", str(out)]
    batch_study.main(argv)
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["config"] for r in rows} == set(batch_study.CONFIGS)
    assert {int(r["batch"]) for r in rows} == {1, 4}
    choose = [r for r in rows if r["stage"] == "choose" and r["final"] == "True"]
    assert len(choose) == 4 * 2 * 3                                  # configs x batches x grid
    # the grid: lr_ref * sqrt(B / 128) * {0.5, 1, 2}
    grid = sorted(float(r["lr"]) for r in choose if r["config"] == "EOQ" and r["batch"] == "4")
    assert [round(g / (0.1 * math.sqrt(4 / 128)), 9) for g in grid] == [0.5, 1.0, 2.0]
    # choosing runs: validation at the end only, never the test set; final runs: validation at both
    # points, the test set once, at the end of the stream
    assert all(r["final"] == "True" and r["test_acc"] == "nan" for r in rows if r["stage"] == "choose")
    seeded = [r for r in rows if r["stage"] == "final"]
    assert [r["seen"] for r in seeded[:2]] == ["8", "16"] and all(r["val_acc"] != "nan" for r in seeded)
    assert all((r["test_acc"] != "nan") == (r["final"] == "True") for r in seeded)
    final = [r for r in rows if r["stage"] == "final" and r["final"] == "True"]
    for name in batch_study.CONFIGS:
        for b in ("1", "4"):
            mine = [r for r in final if r["config"] == name and r["batch"] == b]
            assert sorted(r["seed"] for r in mine) == ["0", "1"]
            best = max((r for r in choose if r["config"] == name and r["batch"] == b and r["val_acc"] != "nan"),
                       key=lambda r: float(r["val_acc"]))
            assert {r["lr"] for r in mine} == {best["lr"]}             # the lr chosen on validation
    for r in final:                  # integer updates traced for the 8-bit trainings, nan for the float ones
        quantized = r["config"] in ("EOQ", "WAGEUBN")
        assert (r["zero_updates"] != "nan") == quantized
        if quantized:
            assert 0 <= float(r["zero_updates"]) <= 1 and float(r["exponent_moves"]) >= 0
    text = (out / "study.md").read_text()
    assert "B=1" in text and "WAGEUBN" in text and "±" in text and "chosen lr" in text
    assert "## Integer weight updates" in text and "| EOQ | 8 | 1 |" in text and "| WAGEUBN | 24 | 4 |" in text
    for stem in ("accuracy_vs_batch", "accuracy_vs_samples", "updates_vs_batch"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").exists()
    before = (out / "runs.csv").read_text()
    batch_study.main(argv + ["--resume"])                              # nothing left to run: same rows
    assert (out / "runs.csv").read_text() == before


def test_eoq_runs_the_same_numbers_on_either_engine(tmp_path, monkeypatch):
    """The study's EOQ runs on the int engine by default; being bit-exact with the simulation, the
    engine must not change a single logit at any measuring point (batch 1, the online case, and 4)."""
    import torch
    from eoq.training.batches import to_float
    logits = []

    def fingerprint(model, images, labels, batch_size=500, memory_format=torch.contiguous_format):
        model.eval()
        with torch.no_grad():
            out = model(to_float(torch.as_tensor(images)).contiguous(memory_format=memory_format))
        logits.append(out.double())
        model.train()
        return 10.0

    monkeypatch.setattr(batch_study, "evaluate", fingerprint)

    def run(engine):
        logits.clear()
        batch_study.main(["--samples", "12", "--batch-sizes", "1", "4", "--points", "2", "--val", "40",
                          "--test", "40", "--seeds", "0", "--configs", "EOQ", "--lr-factors", "2",
                          "--data", "embedded", "--threads", "1", "--engine", engine, "--out", str(tmp_path / engine)])
        return list(logits)

    sim, int_ = run("sim"), run("int")
    assert len(sim) == 2 * (1 + 2 + 1)                # batches x (choose: val at the end; final: val at 2 points, test)
    assert all(torch.equal(a, b) for a, b in zip(sim, int_, strict=True))
    assert not torch.equal(sim[0], sim[1])            # the points differ: the net trained in between
    assert "on the int engine" in (tmp_path / "int" / "study.md").read_text()


def test_parts_share_the_study(tmp_path):
    """Two processes, each with its own configurations and --part, write runs-a.csv and runs-b.csv
    in one folder; the second's table holds both parts; a resumed part runs nothing again."""
    out = tmp_path / "study"
    common = ["--samples", "8", "--batch-sizes", "2", "--points", "1", "--val", "20", "--test", "20", "--seeds", "0",
              "--lr-factors", "1", "--data", "embedded", "--threads", "1", "--out", str(out)]
    batch_study.main(common + ["--configs", "EOQ", "--part", "a"])
    batch_study.main(common + ["--configs", "fp32+Fixup", "--part", "b"])
    a = list(csv.DictReader(open(out / "runs-a.csv")))
    b = list(csv.DictReader(open(out / "runs-b.csv")))
    assert {r["config"] for r in a} == {"EOQ"} and {r["config"] for r in b} == {"fp32+Fixup"}
    assert not (out / "runs.csv").exists()
    text = (out / "study.md").read_text()
    assert "| EOQ |" in text and "| fp32+Fixup |" in text and "| WAGEUBN |" not in text
    before = (out / "runs-a.csv").read_text()
    batch_study.main(common + ["--configs", "EOQ", "--part", "a", "--resume"])
    assert (out / "runs-a.csv").read_text() == before
    with pytest.raises(SystemExit, match="--part"):
        batch_study.main(common + ["--part", "../x"])


def test_the_grid_grows_beyond_an_edge_that_wins(tmp_path, monkeypatch):
    """Validation accuracy falls with |log2(lr / best)| (a stand-in for training): a best lr below the
    grid pulls it down by factors of 2 until the winner lies inside, or --extend runs out; one above
    pushes it up; one inside adds nothing. Hand-worked at batch 128 (base lr 0.1, factors 0.5, 1, 2)."""
    best = {"EOQ": 0.02, "fp32+Fixup": 1.0, "fp32+BN": 0.1}

    def fake(data, norm, preset, batch, samples, lr, points, seed=0, warmup=0.05, test=True, engine="sim"):
        name = next(n for n, v in batch_study.CONFIGS.items() if v == (norm, preset))
        return [{"seen": samples, "val_acc": 50 - 10 * abs(math.log2(lr / best[name])),
                 "test_acc": 40.0 if test else math.nan, "seconds": 0.0, **batch_study._updates(None)}]

    monkeypatch.setattr(batch_study, "run_one", fake)
    common = ["--samples", "8", "--batch-sizes", "128", "--val", "20", "--test", "20", "--seeds", "0",
              "--configs", "EOQ", "fp32+Fixup", "fp32+BN", "--data", "embedded", "--threads", "1"]

    def tried(out, name):
        rows = list(csv.DictReader(open(out / "runs.csv")))
        grid = [round(float(r["lr"]) / 0.1, 9) for r in rows if r["config"] == name and r["stage"] == "choose"]
        chosen = {round(float(r["lr"]) / 0.1, 9) for r in rows if r["config"] == name and r["stage"] == "final"}
        return grid, chosen

    batch_study.main(common + ["--out", str(tmp_path / "two")])
    # 0.02 = 0.1 x 0.2: 0.5 wins -> 0.25 wins -> 0.125 loses (|log2 0.625| > |log2 1.25|): 0.25 chosen
    assert tried(tmp_path / "two", "EOQ") == ([0.5, 1.0, 2.0, 0.25, 0.125], {0.25})
    # 1.0 = 0.1 x 10: 2 wins -> 4 wins -> 8 wins, but two extensions are the most
    assert tried(tmp_path / "two", "fp32+Fixup") == ([0.5, 1.0, 2.0, 4.0, 8.0], {8.0})
    assert tried(tmp_path / "two", "fp32+BN") == ([0.5, 1.0, 2.0], {1.0})
    assert "0.0125: 43.22" in (tmp_path / "two" / "study.md").read_text()     # grid table: the extension too
    assert not (tmp_path / "two" / "updates_vs_batch.png").exists()          # no run traced integer updates
    batch_study.main(common + ["--extend", "1", "--out", str(tmp_path / "one")])
    assert tried(tmp_path / "one", "EOQ") == ([0.5, 1.0, 2.0, 0.25], {0.25})
    with pytest.raises(SystemExit, match="--extend"):
        batch_study.main(common + ["--extend", "-1", "--out", str(tmp_path / "bad")])


def test_update_sizes_are_also_given_in_lsbs_of_an_8_bit_grid():
    """EOQ stores 8-bit codes (its LSB is the unit), WAGEUBN 24-bit ones: 65,536 of its LSBs make one
    LSB of an 8-bit grid over the same range. Hand-worked rows, two seeds each."""
    assert batch_study.stored_bits("EOQ") == 8 and batch_study.stored_bits("WAGEUBN") == 24
    assert batch_study.stored_bits("fp32+Fixup") is None

    def row(name, seed, z, u):
        return {"config": name, "batch": 1, "lr": 0.01, "seed": seed, "stage": "final", "final": True,
                "zero_updates": z, "update_lsb": u, "exponent_moves": 2.0}

    rows = [row("EOQ", 0, 0.9, 1.5), row("EOQ", 1, 0.7, 2.5), row("WAGEUBN", 0, 0.0, 65536.0),
            row("WAGEUBN", 1, 0.0, 3 * 65536.0)]
    text = batch_study.update_table(rows, [1], ["EOQ", "WAGEUBN"])
    assert "| EOQ | 8 | 1 | 0.8000 | 2 | 2 | 2.0 |" in text
    assert "| WAGEUBN | 24 | 1 | 0.0000 | 1.311e+05 | 2 | 2.0 |" in text


def test_a_lever_config_is_tried_on_validation_only(tmp_path, monkeypatch):
    """--add-config registers a JSON spec as a configuration (on the simulator unless its weights are
    stored in 8 bits, which the int engine needs); --choose-only trains the choosing stage alone and
    never reads the test images; a malformed or unknown configuration is refused by name."""
    monkeypatch.setattr(batch_study, "CONFIGS", dict(batch_study.CONFIGS))
    spec = tmp_path / "store12.json"
    spec.write_text('{"base": "eoq", "name": "eoq-store12", "store_bits": 12, "U": {"bits": 10}}')
    out = tmp_path / "levers"
    batch_study.main(["--samples", "8", "--batch-sizes", "2", "--lr-factors", "0.5", "--val", "20", "--test", "20",
                      "--data", "embedded", "--threads", "1", "--choose-only", "--seeds", "0", "1", "--out", str(out),
                      "--add-config", f"EOQ 12-bit store=fixup:{spec}", "--configs", "EOQ 12-bit store"])
    assert batch_study.CONFIGS["EOQ 12-bit store"] == ("fixup", str(spec))
    assert batch_study.on_engine("EOQ") and not batch_study.on_engine("EOQ 12-bit store")   # 12 bits: the simulator
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert [(r["config"], r["stage"], r["seed"], r["test_acc"]) for r in rows] == \
        [("EOQ 12-bit store", "choose", s, "nan") for s in "01"]               # every seed, validation only
    assert all(float(r["zero_updates"]) <= 1 for r in rows)
    accs = [float(r["val_acc"]) for r in rows]
    text = (out / "study.md").read_text()
    assert "| EOQ 12-bit store | 12 | 2 |" in text and "(2 seeds)" in text
    assert f"{sum(accs) / 2:.2f} ± " in text                                  # the grid gives the mean over seeds
    assert not list(out.glob("*.png"))                                      # no final runs, no figures
    from eoq.quant.presets import load_spec
    from eoq.quant.spec import TensorQuant
    assert [batch_study.runs_on_int(load_spec(p)) for p in ("eoq", "eoq-float-ends", "wageubn", "fp32")] == \
        [True, True, False, False]
    assert not batch_study.runs_on_int(load_spec("eoq").with_changes(G=TensorQuant()))       # float G: the simulator
    for bad, message in [("EOQ x=fixup", "NAME=NORM:SPEC"), ("EOQ x=batch:eoq", "NAME=NORM:SPEC"),
                         ("EOQ=bn:eoq", "already"), ("EOQ x=fixup:nope.json", "nope")]:
        with pytest.raises(SystemExit, match=message):
            batch_study.main(["--add-config", bad, "--out", str(out)])
    with pytest.raises(SystemExit, match="unknown 'EOQ y'"):
        batch_study.main(["--configs", "EOQ y", "--out", str(out)])

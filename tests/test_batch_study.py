"""The small-batch study runs end to end on the embedded data: lr chosen on validation from the
grid, seeds at the chosen lr, table with mean +- std, figures; and it resumes from its CSV."""
import csv
import math

from analysis import batch_study


def test_study_end_to_end_on_the_embedded_data(tmp_path):
    out = tmp_path / "study"
    argv = ["--samples", "16", "--batch-sizes", "1", "4", "--points", "2", "--val", "20", "--test", "20",
            "--seeds", "0", "1", "--data", "embedded", "--threads", "1", "--out", str(out)]
    batch_study.main(argv)
    rows = list(csv.DictReader(open(out / "runs.csv")))
    assert {r["config"] for r in rows} == set(batch_study.CONFIGS)
    assert {int(r["batch"]) for r in rows} == {1, 4}
    choose = [r for r in rows if r["stage"] == "choose" and r["final"] == "True"]
    assert len(choose) == 4 * 2 * 3                                  # configs x batches x grid
    # the grid: lr_ref * sqrt(B / 128) * {0.5, 1, 2}
    grid = sorted(float(r["lr"]) for r in choose if r["config"] == "EOQ" and r["batch"] == "4")
    assert [round(g / (0.1 * math.sqrt(4 / 128)), 9) for g in grid] == [0.5, 1.0, 2.0]
    final = [r for r in rows if r["stage"] == "final" and r["final"] == "True"]
    for name in batch_study.CONFIGS:
        for b in ("1", "4"):
            mine = [r for r in final if r["config"] == name and r["batch"] == b]
            assert sorted(r["seed"] for r in mine) == ["0", "1"]
            best = max((r for r in choose if r["config"] == name and r["batch"] == b and r["val_acc"] != "nan"),
                       key=lambda r: float(r["val_acc"]))
            assert {r["lr"] for r in mine} == {best["lr"]}             # the lr chosen on validation
    text = (out / "study.md").read_text()
    assert "B=1" in text and "WAGEUBN" in text and "±" in text and "chosen lr" in text
    for stem in ("accuracy_vs_batch", "accuracy_vs_samples"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").exists()
    before = (out / "runs.csv").read_text()
    batch_study.main(argv + ["--resume"])                              # nothing left to run: same rows
    assert (out / "runs.csv").read_text() == before

"""The small-batch study runs end to end on the embedded data and writes its table and figures."""
import csv

from analysis import batch_study


def test_study_writes_table_csv_and_figures(tmp_path):
    out = tmp_path / "study"
    batch_study.main(["--samples", "16", "--batch-sizes", "1", "4", "--points", "2", "--test", "20",
                      "--data", "embedded", "--threads", "1", "--out", str(out)])
    rows = list(csv.DictReader(open(out / "study.csv")))
    assert {r["config"] for r in rows} == set(batch_study.CONFIGS)
    assert {int(r["batch"]) for r in rows} == {1, 4}
    finals = [r for r in rows if r["final"] == "True"]
    assert len(finals) == 6 and all(int(r["seen"]) == 16 for r in finals)
    # lr rule: sqrt(B / 128) * lr_ref
    lr = {int(r["batch"]): float(r["lr"]) for r in rows}
    assert abs(lr[4] / lr[1] - 2.0) < 1e-12
    text = (out / "study.md").read_text()
    assert "B=1" in text and "EOQ" in text
    for stem in ("accuracy_vs_batch", "accuracy_vs_samples"):
        assert (out / f"{stem}.png").stat().st_size > 1000 and (out / f"{stem}.pdf").exists()

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


def test_report_rejects_unfinished_runs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err

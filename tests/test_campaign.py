"""reports/comparison/campaign.sh --status: one line per run saying where it stands, starting nothing.
The script runs from a copy in a temporary tree (it works relative to its own folder)."""
import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_status_names_every_state_and_starts_nothing(tmp_path):
    (tmp_path / "reports" / "comparison").mkdir(parents=True)
    script = tmp_path / "reports" / "comparison" / "campaign.sh"
    shutil.copy(ROOT / "reports" / "comparison" / "campaign.sh", script)
    (tmp_path / "reports" / "comparison" / "campaign.runs").write_text(
        "# group|name|folder|options\n"
        "g|done|f|--epochs 3 --seed 0\n"
        "g|bad|f|--epochs 3 --seed 1\n"
        "g|half|f|--epochs 5 --seed 2\n"
        "g|new|f|--epochs 3 --seed 3\n"
        "h|other|f|--epochs 3 --seed 4\n")
    keep = tmp_path / "reports" / "comparison" / "f" / "runs" / "done"
    keep.mkdir(parents=True)
    (keep / "metrics.csv").write_text("epoch,test_acc\n1,10\n2,20\n3,30\n")
    long = tmp_path / "runs" / "long"
    (long / "bad").mkdir(parents=True)
    (long / "bad" / "DIVERGED").write_text("loss became nan at epoch 1, step 2\n")
    (long / "half").mkdir()
    (long / "half" / "metrics.csv").write_text("epoch,test_acc\n1,10\n2,20\n")
    (long / "half" / "checkpoint.pt").write_bytes(b"x")
    out = subprocess.run(["bash", str(script), "--status", "g"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "EOQ": "false"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "g done: finished (reports/comparison/f/runs/done)",
        "g bad: diverged: loss became nan at epoch 1, step 2",
        "g half: epoch 2 of 5 done, resumes from runs/long",
        "g new: not started",
    ]
    assert not (long / "new").exists() and not (long / "done").exists()      # nothing was started
    import fcntl
    with open(long / "half" / ".lock", "w") as lock:            # a campaign process holds the run
        fcntl.flock(lock, fcntl.LOCK_EX)
        out = subprocess.run(["bash", str(script), "--status", "g"], capture_output=True, text=True, timeout=60)
    assert "g half: epoch 2 of 5 done, resumes from runs/long, running now" in out.stdout.splitlines()

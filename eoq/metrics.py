"""Per-epoch metrics table: ``metrics.csv`` with epoch, train_loss, train_acc, val_acc, test_acc,
seconds, lr, steps.

Accuracies are in percent (val_acc on the held-out validation split, nan without one; files made
before the split existed have no val_acc column and read back with nan); ``seconds`` is the wall time of the epoch (training and evaluation).
The file is rewritten atomically after every epoch, so it is always complete and consistent with
the last checkpoint.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .atomic import atomic_write

COLUMNS = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "seconds", "lr", "steps")


def write_metrics(path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in COLUMNS})
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())


def read_metrics(path) -> list[dict]:
    with open(Path(path)) as fh:
        rows = [{k: (int(v) if k in ("epoch", "steps") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(fh)]
    for r in rows:
        r.setdefault("val_acc", float("nan"))
    return rows

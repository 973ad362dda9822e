"""Per-epoch metrics table: ``metrics.csv`` with epoch, train_loss, train_acc, val_acc, test_acc,
seconds, lr, steps.

Accuracies are in percent (val_acc on the held-out validation split, nan without one; files made
before the split existed have no val_acc column and read back with nan); ``seconds`` is the wall
time of the epoch (training and evaluation).
The file is rewritten atomically after every epoch, so it is always complete and consistent with
the last checkpoint.
"""
from __future__ import annotations

from .csvfile import read_rows, write_rows
from .table import EpochMetrics, Table

COLUMNS = ("epoch", "train_loss", "train_acc", "val_acc", "test_acc", "seconds", "lr", "steps")


def write_metrics(path, rows: list[dict]) -> None:
    write_rows(path, [{k: r[k] for k in COLUMNS} for r in rows], COLUMNS, float_format=".6g")


def metrics_table(rows: list[dict]) -> Table:
    """metrics.csv rows (dicts, as checkpoints hold them) as typed EpochMetrics rows."""
    return Table(EpochMetrics(**{k: r.get(k, float("nan")) for k in COLUMNS}) for r in rows)


def read_metrics(path) -> list[dict]:
    rows = read_rows(path, ints=("epoch", "steps"))
    for r in rows:
        r.setdefault("val_acc", float("nan"))
    return rows

"""CSV tables: the one writer and reader behind every table the project writes (metrics.csv,
qstats.csv, the isometry sweep's tables, the batch study's study.csv).

Writing is atomic (a reader never sees half a file). Reading parses each cell once: the columns
named in ``text`` stay strings, ``True``/``False`` become booleans, an empty cell is nan in a
numeric column, integers in ``ints`` become int, other numbers float, anything else stays a string.
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from .atomic import atomic_write


def write_rows(path, rows: list[dict], columns=None, float_format: str | None = None) -> None:
    """Write ``rows`` (dicts) under ``columns`` (default: every key, in order of first appearance);
    floats as ``format(v, float_format)`` when given (metrics.csv uses ".6g")."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: (format(v, float_format) if float_format and isinstance(v, float) else v)
                    for k, v in r.items()})
    with atomic_write(Path(path), "w") as fh:
        fh.write(buf.getvalue())


def _cell(value: str, as_int: bool):
    if value in ("True", "False"):
        return value == "True"
    if value == "":
        return math.nan
    try:
        return int(value) if as_int else float(value)
    except ValueError:
        return value


def read_rows(path, ints=(), text=()) -> list[dict]:
    """The rows of a CSV file written by :func:`write_rows` (see the module doc for parsing)."""
    with open(Path(path), newline="") as fh:
        return [{k: (v if k in text else _cell(v, k in ints)) for k, v in r.items()} for r in csv.DictReader(fh)]

"""Typed results with a table view: a list of dataclass rows that renders in a notebook.

Results leave the library as dataclasses (one per row) collected in a :class:`Table`, which is a
plain ``list`` (index it, loop over it) that also shows itself as a table in JupyterLab
(``_repr_markdown_``) and turns into dicts only at the CSV boundary (``to_rows``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields


class RowView:
    """Read access by column name on a result dataclass (``row["phi1"]``, ``row.get``, ``{**row}``),
    so that code written against table rows keeps working on the typed result."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]

    def __getitem__(self, key: str):
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def get(self, key: str, default=None):
        return getattr(self, key, default)

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())


class Table(list):
    """Rows (dataclass instances of one type) with a notebook table view."""

    def to_rows(self) -> list[dict]:
        return [asdict(r) for r in self]

    def column(self, name: str) -> list:
        return [getattr(r, name) for r in self]

    def _repr_markdown_(self) -> str:
        if not self:
            return "*(empty table)*"
        names = [f.name for f in fields(self[0])]
        lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        for r in self:
            lines.append("| " + " | ".join(_cell(getattr(r, n)) for n in names) + " |")
        return "\n".join(lines)


def _cell(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


@dataclass(frozen=True)
class EpochMetrics(RowView):
    """One row of metrics.csv: accuracies in percent (val_acc nan without a validation split),
    the epoch's wall time in seconds, the lr of its last step and its number of steps."""

    epoch: int
    train_loss: float
    train_acc: float
    val_acc: float
    test_acc: float
    seconds: float
    lr: float
    steps: int

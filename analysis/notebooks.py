"""Executed copies of the notebooks, for a reader browsing the repository: ``reports/notebooks/``.

The notebooks in ``notebooks/`` are committed without outputs (clean diffs, nothing stale). This
command runs each one top to bottom in a fresh Jupyter kernel (nbclient, as the tests do) and writes
the executed copy, figures and tables included, to ``reports/notebooks/<name>.ipynb``, which GitHub
and JupyterLab render as they are. ``tests/test_notebooks.py`` runs every notebook and checks that
its copy holds the same code, so a notebook edited without re-running this command fails the tests.

    python -m analysis.notebooks                      # every notebook (a few minutes)
    python -m analysis.notebooks notebooks/04_cost_model.ipynb

A notebook's sizes (images, steps, threads) sit in its first code cell, tagged ``parameters`` (the
convention of papermill): :func:`execute` can run it with other values, a cell of assignments
inserted after that one, as the tests do to run every notebook small.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE, COPIES = ROOT / "notebooks", ROOT / "reports" / "notebooks"


INJECTED = "injected-parameters"      # the tag of the cell execute() inserts


def execute(path: Path, timeout: int = 1800, parameters: dict | None = None):
    """The notebook at ``path`` run in a fresh kernel (its folder the working directory); with
    ``parameters``, ``NAME = repr(value)`` for each, in a cell tagged ``injected-parameters`` right
    after the cell tagged ``parameters`` (ValueError: the notebook has none, or it does not assign
    a name given)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    if parameters:
        inject(nb, parameters, path.name)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def inject(nb, parameters: dict, name: str = "notebook") -> None:
    """Insert the assignments of ``parameters`` after ``nb``'s cell tagged ``parameters``."""
    import nbformat

    at = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    if len(at) != 1:
        raise ValueError(f"{name}: {len(at)} cells tagged 'parameters' (one is needed to inject values)")
    cell = nb.cells[at[0]]
    names = {n.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
             for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)}
    unknown = [k for k in parameters if k not in names]
    if unknown:
        raise ValueError(f"{name}: its parameters cell does not set {', '.join(unknown)}")
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    nb.cells.insert(at[0] + 1, nbformat.v4.new_code_cell(source, metadata={"tags": [INJECTED]}))


def own_code(nb) -> list:
    """A notebook's code cells, an injected parameters cell left out."""
    return [c for c in nb.cells if c.cell_type == "code" and INJECTED not in c.metadata.get("tags", [])]


def code_cells(nb) -> list[str]:
    """The sources of a notebook's code cells, an injected parameters cell left out."""
    return [c.source for c in own_code(nb)]


def errors(nb) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]


def write_copy(nb, name: str) -> Path:
    """``reports/notebooks/<name>``, written atomically."""
    import nbformat

    from eoq.training.atomic import atomic_write

    COPIES.mkdir(parents=True, exist_ok=True)
    out = COPIES / name
    with atomic_write(out, "w") as fh:
        nbformat.write(nb, fh)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="execute the notebooks into reports/notebooks/")
    ap.add_argument("paths", nargs="*", help="notebooks (default: every notebooks/*.ipynb)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.paths] or sorted(SOURCE.glob("*.ipynb"))
    failed = 0
    for path in paths:
        nb = execute(path.resolve())
        if errors(nb):
            print(f"{path.name}: a cell raised an error; no copy written", file=sys.stderr)
            failed += 1
            continue
        print(f"{path.name} -> {write_copy(nb, path.name).relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

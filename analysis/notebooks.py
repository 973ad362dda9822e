"""Executed copies of the notebooks, for a reader browsing the repository: ``reports/notebooks/``.

The notebooks in ``notebooks/`` are committed without outputs (clean diffs, nothing stale). This
command runs each one top to bottom in a fresh Jupyter kernel (nbclient, as the tests do) and writes
the executed copy, figures and tables included, to ``reports/notebooks/<name>.ipynb``, which GitHub
and JupyterLab render as they are. ``tests/test_notebooks.py`` runs every notebook and checks that
its copy holds the same code, so a notebook edited without re-running this command fails the tests.

    python -m analysis.notebooks                      # every notebook (a few minutes)
    python -m analysis.notebooks notebooks/04_cost_model.ipynb
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE, COPIES = ROOT / "notebooks", ROOT / "reports" / "notebooks"


def execute(path: Path, timeout: int = 1800):
    """The notebook at ``path`` run in a fresh kernel (its folder the working directory)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return nb


def code_cells(nb) -> list[str]:
    """The sources of a notebook's code cells."""
    return [c.source for c in nb.cells if c.cell_type == "code"]


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

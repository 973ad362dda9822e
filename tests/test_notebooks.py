"""Every notebook runs top to bottom (small configurations), and is committed without outputs."""
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_seven_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_its_executed_copy_is_current(path):
    """Runs top to bottom; reports/notebooks/ holds its executed copy (python -m analysis.notebooks)
    with the same code and an output in every code cell that printed or plotted when run here."""
    from analysis import notebooks

    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    NotebookClient(nb, timeout=1200, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    assert not notebooks.errors(nb)
    copy = notebooks.COPIES / path.name
    assert copy.exists(), f"no executed copy: python -m analysis.notebooks {path.relative_to(ROOT)}"
    executed = nbformat.read(copy, as_version=4)
    assert notebooks.code_cells(executed) == notebooks.code_cells(nb), \
        f"{copy.name} is stale: python -m analysis.notebooks {path.relative_to(ROOT)}"
    for ran, kept in zip([c for c in nb.cells if c.cell_type == "code"],
                         [c for c in executed.cells if c.cell_type == "code"]):
        assert bool(ran.outputs) <= bool(kept.outputs), f"{copy.name}: a cell without its output"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_imports_the_installed_packages(path):
    """No sys.path change: the notebooks use the installed public API (import eoq, import analysis)."""
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "sys.path" not in code and "import eoq" in code


def test_importing_analysis_keeps_the_notebook_backend():
    """Importing the analysis package (its figure style) must not switch matplotlib's backend: a
    notebook's inline figures would silently stop appearing."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import analysis, analysis.style; "
            "print(matplotlib.get_backend())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "svg"

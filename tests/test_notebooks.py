"""Every notebook runs top to bottom (small configurations), and is committed without outputs."""
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_seven_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05", "06", "07"]


# Every notebook runs here with small sizes (its "parameters" cell overridden; one thread, as each
# pytest worker has one core): the same code top to bottom, a fraction of the work. The executed
# copies in reports/notebooks/ are made at the notebooks' own sizes.
SMALL = {
    "01_quickstart.ipynb": {"THREADS": 1, "TRAIN_IMAGES": 128, "TEST_IMAGES": 50, "EPOCHS": 1},
    "02_isometry.ipynb": {"THREADS": 1, "IMAGES": 2},
    "03_quantization_error.ipynb": {"THREADS": 1, "TRAIN_IMAGES": 128, "TEST_IMAGES": 50, "EVERY": 1},
    "04_cost_model.ipynb": {},
    "05_small_batch_online.ipynb": {"SAMPLES": 16, "VAL_IMAGES": 50},
    "06_isometry_resnet56.ipynb": {"THREADS": 1, "IMAGES": 2, "TRAIN_IMAGES": 8, "STEPS": 2},
    "07_online_adaptation.ipynb": {"SAMPLES": 8, "POINTS": (0, 4, 8), "EVAL_IMAGES": 40,
                                   "STAND_IN": {"epochs": 1, "val": 100, "train_limit": 300}},
}


def test_every_notebook_has_its_small_sizes():
    assert sorted(SMALL) == [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_its_executed_copy_is_current(path):
    """Runs top to bottom (small sizes); reports/notebooks/ holds its executed copy (python -m
    analysis.notebooks) with the same code and an output in every code cell that printed or plotted
    when run here."""
    from analysis import notebooks

    nb = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    nb = notebooks.execute(path, timeout=1200, parameters=SMALL[path.name])
    assert not notebooks.errors(nb)
    copy = notebooks.COPIES / path.name
    assert copy.exists(), f"no executed copy: python -m analysis.notebooks {path.relative_to(ROOT)}"
    executed = nbformat.read(copy, as_version=4)
    assert notebooks.code_cells(executed) == notebooks.code_cells(nb), \
        f"{copy.name} is stale: python -m analysis.notebooks {path.relative_to(ROOT)}"
    for ran, kept in zip(notebooks.own_code(nb), notebooks.own_code(executed)):
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


def test_injected_parameters_follow_the_parameters_cell_and_unknown_names_are_refused():
    from analysis import notebooks

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import math"),
                                         nbformat.v4.new_code_cell("A, B = 1, 2\nC = dict(x=1)  # c",
                                                                   metadata={"tags": ["parameters"]}),
                                         nbformat.v4.new_code_cell("print(A + B)")])
    notebooks.inject(nb, {"B": 5, "C": {"x": 2}})
    assert [c.source for c in nb.cells][2] == "B = 5\nC = {'x': 2}"
    assert notebooks.code_cells(nb) == ["import math", "A, B = 1, 2\nC = dict(x=1)  # c", "print(A + B)"]
    with pytest.raises(ValueError, match="does not set D"):
        notebooks.inject(nb, {"D": 1})
    with pytest.raises(ValueError, match="0 cells tagged"):
        notebooks.inject(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), {"x": 2})

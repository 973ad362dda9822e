import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ZIP = ROOT.parent / "shared" / "data" / "cifar10-jpeg.zip"

# decoded datasets are cached once per checkout, not in the user's home
os.environ.setdefault("EOQ_CACHE", str(ROOT / ".pytest_cache" / "eoq-data"))

# One thread per pytest-xdist worker (its subprocesses inherit it): two workers of two OpenMP
# threads each on two cores leave threads spinning at every parallel region's barrier while their
# core runs the other worker (a test that takes 9 s alone took 72 s so). Tests of the threaded
# paths set their thread counts themselves.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def shared_zip() -> Path:
    if not SHARED_ZIP.exists():
        msg = (f"needs the full CIFAR-10 JPEG zip at {SHARED_ZIP} (shared/data beside the checkout; "
               "`eoq train --download` fetches it, README 'Data')")
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must have it")
        pytest.skip(msg)
    return SHARED_ZIP


# The longest tests (measured with --durations) start first: with two pytest-xdist workers a long
# test collected last would leave one core idle while it ends the run alone. Others keep their order.
LONG_FIRST = (
    "tests/test_notebooks.py::test_notebook_runs",
    "tests/test_behaviour.py",
    "tests/test_wheel.py",
    "tests/test_train.py::test_sig",
    "tests/test_golden.py::test_imagenet_resnet18",
    "tests/test_qstats.py::test_a_resumed_run",
    "tests/test_batch_study.py::test_study_end_to_end",
    "tests/test_api.py::test_the_readme_api_tour_runs",
    "tests/test_report.py::test_the_reference_report",
    "tests/test_report.py::test_report_from_runs",
    "tests/test_int_update.py::test_golden",
    "tests/test_distributed.py",
    "tests/test_bad_inputs.py::test_divergence",
    "tests/test_train.py::test_resume",
    "tests/test_train.py::test_short_run",
    "tests/test_runs.py::test_the_modules_run_once",
)


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, p in enumerate(LONG_FIRST) if item.nodeid.startswith(p)), len(LONG_FIRST))

    items.sort(key=rank)

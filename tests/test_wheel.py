"""The wheel (``pip install .``, not editable) carries every file the kernel loader compiles, and
an installed wheel trains with the compiled kernels: its sources are this checkout's, byte for byte,
so it finds their build in the shared cache (compiling them is the loader's own test,
tests/test_kernels.py, and every fresh cache's first load)."""
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from eoq import kernels

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    return next(out.glob("eoq_workbench-*.whl"))


def test_wheel_holds_what_the_kernel_loader_reads(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    needed = {f"eoq/csrc/{f.name}" for f in kernels._SOURCES + kernels._HEADERS}
    assert needed <= names, needed - names
    assert "eoq/embedded/cifar10-subset.zip" in names
    assert {"analysis/__init__.py", "eoq/quant/fusion.py"} <= names


def test_installed_wheel_trains_with_the_compiled_kernels(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    code = ("import eoq, sys; from eoq import kernels; "
            "assert eoq.__file__.startswith(sys.argv[1]), eoq.__file__; "
            "assert kernels._CSRC.is_relative_to(sys.argv[1]), kernels._CSRC; "
            "run = eoq.train(eoq.TrainConfig(data='embedded', train_limit=256, test_limit=64, val=0, batch_size=64, "
            "epochs=1, preset='eoq', progress=False)); "
            "print(kernels.cache_dir(), kernels.load() is not None, len(run.metrics))")
    kernels.load()                                   # this checkout's build, in the shared cache
    env = {**os.environ, "PYTHONPATH": str(target), "EOQ_KERNEL_CACHE": str(kernels.cache_dir().parent)}
    out = subprocess.run([sys.executable, "-c", code, str(target)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == [str(kernels.cache_dir()), "True", "1"], out.stdout + out.stderr[-2000:]
    assert "compiling" not in out.stderr, out.stderr[-2000:]

"""The kernel build cache (eoq/kernels.py)."""
from eoq import kernels


def test_kernel_cache_is_keyed_by_the_cpu_flags(monkeypatch):
    """A build made with -march=native must not be reused on a CPU with other instructions."""
    here = kernels.cache_dir()
    monkeypatch.setattr(kernels, "_cpu_flags", lambda: b"flags : fpu sse2")
    assert kernels.cache_dir() != here


def test_kernel_cache_is_keyed_by_the_sources(monkeypatch, tmp_path):
    here = kernels.cache_dir()
    extra = tmp_path / "extra.h"
    extra.write_text("// changed")
    monkeypatch.setattr(kernels, "_HEADERS", kernels._HEADERS + [extra])
    assert kernels.cache_dir() != here


def _copy_sources(monkeypatch, tmp_path):
    import shutil

    copy = tmp_path / "csrc"
    shutil.copytree(kernels._CSRC, copy)
    monkeypatch.setattr(kernels, "_CSRC", copy)
    monkeypatch.setattr(kernels, "_SOURCES", [copy / f.name for f in kernels._SOURCES])
    monkeypatch.setattr(kernels, "_HEADERS", [copy / f.name for f in kernels._HEADERS])
    return copy


def test_two_checkouts_with_the_same_sources_share_one_build(monkeypatch, tmp_path):
    """Same text in another folder (a second checkout, an installed wheel): the same build folder,
    loaded without building again; a renamed file is other sources."""
    here = kernels.cache_dir()
    kernels.load()                       # built (or found) for this checkout
    _fresh_state(monkeypatch)
    copy = _copy_sources(monkeypatch, tmp_path)
    assert kernels.cache_dir() == here

    def no_build(*args):
        raise AssertionError("rebuilt the kernels of identical sources")

    monkeypatch.setattr(kernels, "_compile_in_child", no_build)
    module = kernels.load()
    assert module is not None and module.amx_available() in (True, False)
    (copy / "tail.cpp").rename(copy / "tail2.cpp")
    monkeypatch.setattr(kernels, "_SOURCES", [copy / ("tail2.cpp" if f.name == "tail.cpp" else f.name)
                                              for f in kernels._SOURCES])
    assert kernels.cache_dir() != here


def test_an_unmarked_library_is_rebuilt_not_loaded(monkeypatch, tmp_path):
    """A library without its ``.ok`` mark (a build killed while linking) is removed and built
    again under the lock, never imported."""
    monkeypatch.setenv("EOQ_KERNEL_CACHE", str(tmp_path / "cache"))
    _fresh_state(monkeypatch)
    build = kernels.cache_dir()
    build.mkdir(parents=True)
    name = "eoq_quant_" + build.name
    (build / (name + ".so")).write_bytes(b"truncated")
    calls = []

    def fake_build(n, b):
        calls.append(n)
        assert not (b / (n + ".so")).exists(), "the truncated library was left for the build"
        raise RuntimeError("the kernel build failed: (test)")

    monkeypatch.setattr(kernels, "_compile_in_child", fake_build)
    import pytest

    with pytest.warns(UserWarning, match="build failed"):
        assert kernels.load() is None
    assert calls == [name] and not (build / (name + ".ok")).exists()


def _fresh_state(monkeypatch):
    monkeypatch.setattr(kernels, "_state", {"enabled": True})


def test_missing_source_gives_one_warning_and_the_torch_path(monkeypatch, tmp_path):
    """A wheel without eoq/csrc/ once died with a raw FileNotFoundError at the first quantization."""
    import pytest
    import torch

    from eoq.quant import quantizers as Q

    _fresh_state(monkeypatch)
    monkeypatch.setattr(kernels, "_SOURCES", kernels._SOURCES + [tmp_path / "gone.cpp"])
    with pytest.warns(UserWarning, match="kernel sources missing"):
        assert kernels.load() is None
    # the torch path quantizes: R = 1, codes round(x * 128) clamped to +-127
    assert Q.sq(torch.tensor([0.3, -1.0, 0.5]), 8).tolist() == [38 / 128, -127 / 128, 64 / 128]


def test_failed_compile_gives_one_warning_and_the_torch_path(monkeypatch, tmp_path):
    import pytest

    _fresh_state(monkeypatch)
    copy = _copy_sources(monkeypatch, tmp_path)
    (copy / "tail.cpp").write_text("this is not C++;\n")
    monkeypatch.setattr(kernels, "_SOURCES", [copy / "tail.cpp"])     # the broken file alone: fails in seconds
    monkeypatch.setenv("EOQ_KERNEL_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="build failed"):
        assert kernels.load() is None


def test_a_stale_lock_from_a_killed_build_does_not_block(monkeypatch, tmp_path):
    """torch's ``lock`` file left in the build folder by a killed build (its owner gone) made
    every later process wait forever, built kernels or not: a built folder loads past it, and the
    next build's lock holder removes it before torch's build system would wait on it."""
    import subprocess
    import sys

    import pytest

    kernels.load()
    build = kernels.cache_dir()
    (build / "lock").write_text("")
    try:
        out = subprocess.run([sys.executable, "-c", "from eoq import kernels; print(kernels.load() is not None)"],
                             capture_output=True, text=True, timeout=900)
    finally:
        (build / "lock").unlink(missing_ok=True)
    assert out.stdout.strip() == "True", out.stderr

    monkeypatch.setenv("EOQ_KERNEL_CACHE", str(tmp_path / "cache"))
    _fresh_state(monkeypatch)
    fresh = kernels.cache_dir()
    fresh.mkdir(parents=True)
    (fresh / "lock").write_text("")
    seen = []

    def fake_build(name, b):
        seen.append((b / "lock").exists())
        raise RuntimeError("the kernel build failed: (test)")

    monkeypatch.setattr(kernels, "_compile_in_child", fake_build)
    with pytest.warns(UserWarning, match="build failed"):
        kernels.load()
    assert seen == [False]


def test_a_killed_build_leaves_no_compiler_running(tmp_path):
    """SIGKILL to the process that started a build: its compiler processes die with it."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cache = tmp_path / "cache"
    env = {**os.environ, "EOQ_KERNEL_CACHE": str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", "from eoq import kernels; kernels.load()"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def compilers():
        """Processes working in the build folder (ninja and the compiler run there)."""
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    if os.readlink(f"/proc/{pid}/cwd").startswith(str(cache)):
                        found.append(pid)
                except OSError:
                    continue
        return found

    deadline = time.monotonic() + 60
    while not compilers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert compilers(), "the build did not start"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while compilers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert compilers() == []

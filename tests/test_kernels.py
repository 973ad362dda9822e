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

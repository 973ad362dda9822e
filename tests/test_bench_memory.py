"""benchmarks/heap_peak.c, the exact heap counter of benchmarks/bench_memory.py: a known allocation
is counted to the byte's page, its free given back, and the peak kept."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_memory  # noqa: E402


def test_heap_counter_counts_a_known_allocation_and_its_free():
    shim = bench_memory.heap_shim()
    if shim is None:
        pytest.skip("no C compiler for benchmarks/heap_peak.c")
    code = ("import ctypes, torch; lib = ctypes.CDLL(None)\n"
            "lib.eoq_heap_current.restype = lib.eoq_heap_peak.restype = ctypes.c_long\n"
            "a = lib.eoq_heap_current(); lib.eoq_heap_reset_peak()\n"
            "t = torch.empty(50 * 2**20, dtype=torch.uint8); t.fill_(1)\n"
            "b = lib.eoq_heap_current(); del t; c = lib.eoq_heap_current()\n"
            "print(b - a, c - a, lib.eoq_heap_peak() - a)")
    out = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, LD_PRELOAD=shim),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    held, after, peak = map(int, out.stdout.split())
    mib = 2 ** 20
    assert 50 * mib <= held < 50 * mib + mib            # the tensor, plus at most a page or so of bookkeeping
    assert abs(after) < mib                             # given back when freed
    assert 50 * mib <= peak < 51 * mib                  # and the peak remembered


def test_without_the_counter_preloaded_there_is_none():
    assert bench_memory._heap_counter() is None

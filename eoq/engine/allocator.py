"""Keep freed memory inside the process (glibc malloc), so that training steps do not page-fault.

glibc serves every block above its mmap threshold (dynamic, at most 32 MiB) with fresh pages from
mmap and unmaps them on free, and gives the top of the heap back to the OS when more than the trim
threshold is free. A training step frees and re-allocates its activation-sized tensors every step,
so each one page-faults its memory back in: on this 2-core machine a ReLU backward plus one multiply
over 8 M floats took 13.5-14.1 ms that way and 3.5-3.7 ms with the settings below
(``python benchmarks/bench_alloc.py``, reports/benchmarks.md).

``tune()`` calls ``mallopt(M_MMAP_MAX, 0)`` (no block is served by mmap: all come from the heap)
and ``mallopt(M_TRIM_THRESHOLD, 1 GiB)`` (free heap is kept up to 1 GiB). The cost: the process
holds on to its peak heap until it exits. ``eoq train`` and the benchmarks call it; set
``EOQ_MALLOC_TUNE=0`` to keep glibc's defaults. Where libc is not glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
TRIM_BYTES = 1 << 30
_done = False


def tune() -> bool:
    """Apply the settings once per process; True when glibc accepted them."""
    global _done
    if _done:
        return True
    if os.environ.get("EOQ_MALLOC_TUNE", "1") == "0":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_BYTES) == 1
    return _done


def tuned() -> bool:
    """Whether :func:`tune` took effect in this process (freed memory stays in the heap)."""
    return _done

"""eoq.engine.allocator: freed activation-sized blocks stay in the process (no page faults on reuse)."""
import subprocess
import sys

import pytest

PROBE = r"""
import resource, sys, torch
from eoq.engine import allocator
ok = allocator.tune() if sys.argv[1] == "tune" else False
x = torch.ones(8 * 2 ** 20)                 # 32 MiB, an activation of a wide network
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(40):
    t = x * 2.0                             # a new 32 MiB tensor, written in full, then freed
    del t
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode, env=None):
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True,
                         env=env).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tuned_allocator_reuses_freed_memory_without_page_faults():
    import os
    tuned, tuned_faults = _faults("tune")
    assert tuned
    _, plain_faults = _faults("plain")
    pages = 40 * 32 * 2 ** 20 // 4096
    assert plain_faults > 0.8 * pages          # glibc default: every block faults its pages again
    assert tuned_faults < 0.3 * plain_faults   # tuned: freed blocks are reused (measured: ~10%)
    off, _ = _faults("tune", env={**os.environ, "EOQ_MALLOC_TUNE": "0"})
    assert not off

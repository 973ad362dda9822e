"""The fused CPU kernels (``csrc/*.cpp``): compiled once, cached, optional.

``quant.cpp`` (quantizers, optimizer step), ``intops.cpp`` (the integer engine's im2col, weight
operands, G rounding), ``direct.cpp`` and ``amx.cpp`` (direct VNNI / AMX convolutions,
:mod:`eoq.direct`), ``tail.cpp`` (the fused Fixup block tail).

The kernels compute exactly what the torch reference computes (tests compare them bit for bit),
in two passes over memory instead of about ten: max|x|, then scale + clamp + round (+ the
counter-hash random bits of :mod:`eoq.rng`) in one loop. They are built with the system C++
compiler through ``torch.utils.cpp_extension`` the first time they are needed (about 30-60 s,
announced on stderr) and cached in ``$EOQ_KERNEL_CACHE`` (default ``~/.cache/eoq/kernels``),
keyed by the source, the torch version and the CPU's feature flags. ``EOQ_KERNELS=0`` in the
environment (read at import) or ``with kernels.disabled():`` turns them off; a machine without a
compiler falls back to the torch reference with one warning. Results do not change.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / "quant.cpp", _CSRC / "intops.cpp", _CSRC / "tail.cpp", _CSRC / "direct.cpp", _CSRC / "amx.cpp"]
_HEADERS = [_CSRC / "common.h", _CSRC / "direct.h"]
_state: dict = {"enabled": os.environ.get("EOQ_KERNELS", "1") != "0"}


def _cpu_flags() -> bytes:
    """The CPU's feature flags (Linux), so that a cache shared between machines never hands one a
    build with instructions it lacks (-march=native: AVX-512 FP16, AMX, ...)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.encode()
    except OSError:
        pass
    return b""


def cache_dir() -> Path:
    root = os.environ.get("EOQ_KERNEL_CACHE") or Path.home() / ".cache" / "eoq" / "kernels"
    data = b"".join(f.read_bytes() for f in _SOURCES + _HEADERS)
    tag = hashlib.sha256(data + torch.__version__.encode() + torch.backends.cpu.get_cpu_capability().encode()
                         + _cpu_flags()).hexdigest()[:12]
    return Path(root) / tag


def enabled() -> bool:
    return _state["enabled"]


@contextlib.contextmanager
def switched_off(state: dict, key: str = "enabled"):
    """``state[key]`` is False inside the block and restored after it."""
    before = state[key]
    state[key] = False
    try:
        yield
    finally:
        state[key] = before


def disabled():
    """Run the torch reference path inside the block (tests compare it with the kernels)."""
    return switched_off(_state)


def load():
    """The compiled module, or None (disabled, or the build failed: warned once)."""
    if not enabled():
        return None
    if "module" in _state:
        return _state["module"]
    from torch.utils import cpp_extension

    build = cache_dir()
    build.mkdir(parents=True, exist_ok=True)
    name = "eoq_quant_" + build.name
    if not any(build.glob(name + "*.so")):
        print(f"eoq: compiling the fused quantizer kernels once (30-60 s), cached in {build}",
              file=sys.stderr, flush=True)
    try:
        module = cpp_extension.load(name=name, sources=[str(f) for f in _SOURCES], build_directory=str(build),
                                    extra_cflags=["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off",
                                                  "-fopenmp"],
                                    extra_ldflags=["-fopenmp"],
                                    verbose=False)
    except Exception as err:  # no compiler, no headers: fall back, results are the same
        warnings.warn(f"eoq: fused quantizer kernels unavailable ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); using the torch reference "
                      "(same results, slower). Set EOQ_KERNELS=0 to silence this.", stacklevel=2)
        module = None
    _state["module"] = module
    return module


def usable(x: torch.Tensor):
    """The kernel module when it can take ``x`` (float32 on the CPU), else None."""
    if not _state["enabled"] or x.dtype is not torch.float32 or not x.is_cpu:
        return None
    module = _state.get("module", False)
    return load() if module is False else module

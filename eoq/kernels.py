"""The fused CPU kernels (``csrc/*.cpp``): compiled once, cached, optional.

``quant.cpp`` (quantizers, optimizer step), ``intops.cpp`` (the integer engine's im2col, weight
operands, G rounding), ``direct.cpp`` and ``amx.cpp`` (direct VNNI / AMX convolutions,
:mod:`eoq.engine.direct`), ``tail.cpp`` (the fused Fixup block tail), ``stats.cpp``
(quantization-error statistics, :mod:`analysis.qstats.stats`), ``stream.cpp`` (the fixed-point
residual stream, :mod:`eoq.nn.stream`), ``shortcut.cpp`` (the option-A shortcut inside the stream,
:mod:`eoq.models.blocks`).

The kernels compute exactly what the torch reference computes (tests compare them bit for bit),
in two passes over memory instead of about ten: max|x|, then scale + clamp + round (+ the
counter-hash random bits of :mod:`eoq.quant.rng`) in one loop. They are built with the system C++
compiler through ``torch.utils.cpp_extension`` the first time they are needed (about 30-60 s,
announced on stderr) and cached in ``$EOQ_KERNEL_CACHE`` (default ``~/.cache/eoq/kernels``),
keyed by the sources' text, the compiler flags, the torch version and the CPU's feature flags
(not by the folder: checkouts and installed wheels with the same sources share one build). A
finished build is marked (``<name>.ok``) and later processes import its library directly, without
running torch's build system again (0.5 s per process).
``EOQ_KERNELS=0`` in the environment (read at import) or ``with kernels.disabled():`` turns them
off. Missing sources, a failed compile or a build that does not finish within
``$EOQ_KERNEL_BUILD_TIMEOUT`` seconds (default 900) give one warning and the torch reference.
Results do not change.

The build is safe against being killed half-way: one process builds while the others wait on an
OS lock (``eoq.lock`` in the cache folder, released by the kernel when its holder dies, so a
killed build never blocks a later one; a wait says what it waits for and is bounded), torch's own
``lock`` file left by a killed build is removed by the next lock holder, and the compiler runs in
a child process group that is killed with the process that started it (SIGTERM, SIGKILL or a
notebook kernel restart).
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import torch

_CSRC = Path(__file__).parent / "csrc"
_SOURCES = [_CSRC / f for f in ("quant.cpp", "intops.cpp", "tail.cpp", "stats.cpp", "stream.cpp", "direct.cpp",
                                 "amx.cpp", "shortcut.cpp")]
_HEADERS = [_CSRC / "common.h", _CSRC / "direct.h"]
_state: dict = {"enabled": os.environ.get("EOQ_KERNELS", "1") != "0"}


_CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fno-trapping-math",
           "-ffp-contract=off", "-fopenmp"]


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
    """The build folder of these sources: keyed by their text (file names included), the flags,
    torch and the CPU, so that any checkout or installed copy of the same sources finds it built."""
    root = os.environ.get("EOQ_KERNEL_CACHE") or Path.home() / ".cache" / "eoq" / "kernels"
    data = b"".join(f.name.encode() + b"\0" + f.read_bytes() for f in _SOURCES + _HEADERS)
    tag = hashlib.sha256(data + " ".join(_CFLAGS).encode() + torch.__version__.encode()
                         + torch.backends.cpu.get_cpu_capability().encode() + _cpu_flags()).hexdigest()[:12]
    return Path(root) / tag


def _build_timeout() -> float:
    return float(os.environ.get("EOQ_KERNEL_BUILD_TIMEOUT", "900"))


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
    """The compiled module, or None (disabled, or unavailable: warned once)."""
    if not enabled():
        return None
    if "module" in _state:
        return _state["module"]
    try:
        module = _load()
    except Exception as err:  # no compiler, no sources, a failed or hung build: results are the same
        warnings.warn(f"eoq: fused quantizer kernels unavailable ({type(err).__name__}: "
                      f"{str(err).splitlines()[0] if str(err) else ''}); using the torch reference "
                      "(same results, slower). Set EOQ_KERNELS=0 to silence this.", stacklevel=2)
        module = None
    _state["module"] = module
    return module


def _load():
    missing = [f.name for f in _SOURCES + _HEADERS if not f.exists()]
    if missing:
        raise FileNotFoundError(f"kernel sources missing from {_CSRC}: {', '.join(missing)}")
    build = cache_dir()
    build.mkdir(parents=True, exist_ok=True)
    name = "eoq_quant_" + build.name
    done = build / (name + ".ok")
    built = lambda: done.exists() and any(build.glob(name + "*.so"))   # noqa: E731
    if built():                                    # built and marked: no lock, no build system
        return _import_built(name, build)
    with _build_lock(build):
        (build / "lock").unlink(missing_ok=True)   # torch's lock file of a killed build: nobody else builds now
        if not built():
            done.unlink(missing_ok=True)
            for stale in build.glob(name + "*.so"):    # a killed link may leave a truncated library
                stale.unlink()
            print(f"eoq: compiling the fused quantizer kernels once (30-60 s), cached in {build}",
                  file=sys.stderr, flush=True)
            _compile_in_child(name, build)
            done.write_text(str(_CSRC) + "\n")    # which sources built it (any with this text would)
        return _import_built(name, build)


def _import_built(name: str, build: Path):
    """The built extension module, imported from its library (what torch's loader does last)."""
    import importlib.util

    libs = sorted(build.glob(name + "*.so"))
    spec = importlib.util.spec_from_file_location(name, libs[0])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _torch_load(name: str, build: Path):
    from torch.utils import cpp_extension

    return cpp_extension.load(name=name, sources=[str(f) for f in _SOURCES], build_directory=str(build),
                              extra_cflags=_CFLAGS, extra_ldflags=["-fopenmp"], verbose=False)


@contextlib.contextmanager
def _build_lock(build: Path):
    """An flock on ``build/eoq.lock``, waited for at most the build timeout."""
    with open(build / "eoq.lock", "a+") as fh:
        deadline, told = time.monotonic() + _build_timeout(), False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    fh.seek(0)
                    owner = fh.read().strip() or "another process"
                    print(f"eoq: waiting for {owner} building the kernels in {build} (at most "
                          f"{_build_timeout():.0f} s)", file=sys.stderr, flush=True)
                    told = True
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {build / 'eoq.lock'} for {_build_timeout():.0f} s")
                time.sleep(0.5)
        fh.seek(0)
        fh.truncate()
        fh.write(f"process {os.getpid()}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _compile_in_child(name: str, build: Path) -> None:
    """Build in a child process that leads its own process group (the compiler runs in it) and
    kills that group when this process dies (Linux parent-death signal)."""
    code = ("import sys; from eoq import kernels; kernels._child_build(sys.argv[1], sys.argv[2], sys.argv[3:])")
    proc = subprocess.Popen([sys.executable, "-c", code, name, str(build), *map(str, _SOURCES)], start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "EOQ_KERNEL_PARENT": str(os.getpid())})
    try:
        out, _ = proc.communicate(timeout=_build_timeout())
    except BaseException:           # a timeout, or this process interrupted: no compiler outlives it
        _kill_session(proc.pid)
        proc.wait()
        raise
    if proc.returncode != 0:
        lines = [ln for ln in (out or "").splitlines() if "error" in ln.lower()] or (out or "").splitlines()[-3:]
        raise RuntimeError(f"the kernel build failed: {lines[0] if lines else 'exit status ' + str(proc.returncode)}")


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid`` (the build child leads one: ninja puts each
    compiler command in a process group of its own, but they all stay in the session)."""
    me = os.getpid()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:          # after "pid (comm)": state ppid pgrp session
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(entry), signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(sid, signal.SIGKILL)


def _child_build(name: str, build: str, sources: list[str]) -> None:
    """In the build child: die with the parent, take the compiler down on SIGTERM, build."""
    def kill_group(signum, frame):
        _kill_session(os.getsid(0))
        os._exit(1)

    signal.signal(signal.SIGTERM, kill_group)
    with contextlib.suppress(Exception):        # Linux: SIGTERM to this child when its parent dies
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG = 1
    if os.getppid() != int(os.environ.get("EOQ_KERNEL_PARENT", os.getppid())):
        kill_group(None, None)                  # the parent died before the signal was armed
    global _SOURCES
    _SOURCES = [Path(f) for f in sources]       # build the sources the parent asked for
    _torch_load(name, Path(build))


def usable(x: torch.Tensor):
    """The kernel module when it can take ``x`` (float32 on the CPU), else None."""
    if not _state["enabled"] or x.dtype is not torch.float32 or not x.is_cpu:
        return None
    module = _state.get("module", False)
    return load() if module is False else module

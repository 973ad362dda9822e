"""The int8 x int8 -> int32 GEMM, on the CPU's int8 instructions or, where it has none, in float32.

``torch._int_mm`` runs on oneDNN's int8 kernels only where the CPU has int8 dot products (AVX-512
VNNI, AVX-VNNI, AMX). Elsewhere (an AVX2-only x86 such as an AMD EPYC before Zen 4) it falls back to
a scalar loop: 0.9 GOP/s on one core, 35 times slower than the same core's float32 GEMM (32
GFLOP/s). There the engine's GEMMs run in float32 instead, with the same integers as result:

    a @ b = sum over chunks c of K of  float32(a[:, c]) @ float32(b[c, :])      (each chunk exact)

Every product of two codes is an integer of magnitude at most 128 * 128 = 2^14, and any partial
sum a float32 GEMM forms over a chunk of at most ``F32_CHUNK`` = 1024 terms is an integer of
magnitude at most 2^24, which float32 holds exactly: whatever order or blocking the BLAS library
chooses, every rounding is exact, and the chunk's result is the integer sum. The chunks' results
are added in int32 (the callers keep K within ``SAFE_K``, where the total fits). Where PyTorch
may run float32 GEMMs at reduced precision (:func:`float32_reduced`: oneDNN may then use
bfloat16), the route takes float64, exact for any K here (< 2^53 / 2^14).

``EOQ_INT_GEMM`` in the environment (read at import) chooses the route: ``int8``, ``float32`` or
``auto`` (the default: int8 where :func:`has_int8_dot` says the CPU has int8 dot products).
Results are the same integers on every route (tests compare them with ``torch._int_mm`` and a
float64 reference).
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

from ..quant.formats import Choice

F32_CHUNK = 1024   # 1024 * 128 * 128 = 2^24: every partial sum exact in float32


class Route(Choice):
    """How :func:`int_mm` computes: oneDNN's int8 kernels, or exact float32 GEMMs."""
    AUTO = "auto"
    INT8 = "int8"
    FLOAT32 = "float32"


def _route_from_env() -> Route:
    return Route.parse(os.environ.get("EOQ_INT_GEMM", "auto"), what="EOQ_INT_GEMM")


_state = {"route": _route_from_env()}


def float32_reduced(op: str) -> bool:
    """Whether PyTorch may run float32 ``op`` ("matmul" or "conv") at reduced precision (bfloat16 or
    TF32 inputs in oneDNN): ``torch.backends.mkldnn.<op>.fp32_precision`` set, which
    ``torch.set_float32_matmul_precision`` below "highest" also sets for matmuls. Then float32
    sums of codes are not exact."""
    backend = getattr(torch.backends.mkldnn, op, None)
    return getattr(backend, "fp32_precision", "none") not in ("none", "ieee")


@functools.cache
def has_int8_dot() -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI or AMX) that ``torch._int_mm``'s
    oneDNN kernels use; without them its CPU kernel is a scalar loop. Asked once per process."""
    cpu = torch.cpu
    for probe in ("_is_vnni_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        if fn is not None and fn():
            return True
    return False


def route() -> Route:
    """The route :func:`int_mm` takes now (AUTO resolved)."""
    chosen = _state["route"]
    if chosen is Route.AUTO:
        return Route.INT8 if has_int8_dot() else Route.FLOAT32
    return chosen


@contextlib.contextmanager
def using(chosen: Route | str):
    """Run the enclosed GEMMs on ``chosen`` (tests, benchmarks)."""
    before = _state["route"]
    _state["route"] = Route(chosen)
    try:
        yield
    finally:
        _state["route"] = before


def float_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """a @ b for int8 [M, K] and [K, N] (|codes| <= 128), exact, as int32 (into ``out`` if given),
    through float32 GEMMs of at most F32_CHUNK terms (float64 where float32 GEMMs may be reduced)."""
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty(m, n, dtype=torch.int32)
    if float32_reduced("matmul"):
        return out.copy_(torch.mm(a.to(torch.float64), b.to(torch.float64)))
    af, bf = a.to(torch.float32), b.to(torch.float32)
    if k <= F32_CHUNK:
        return out.copy_(torch.mm(af, bf))
    part = torch.empty(m, n, dtype=torch.float32)
    for s in range(0, k, F32_CHUNK):
        torch.mm(af[:, s:s + F32_CHUNK], bf[s:s + F32_CHUNK], out=part)
        if s == 0:
            out.copy_(part)
        else:
            out.add_(part.to(torch.int32))
    return out

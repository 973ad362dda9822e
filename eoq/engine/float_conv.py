"""The integer convolutions as exact float32 convolutions, for CPUs without int8 dot products.

Where ``torch._int_mm`` has no int8 instructions to run on (:mod:`eoq.engine.int_gemm`), the
fastest exact way to form a convolution's integer sums is the CPU's float32 convolution (oneDNN's
direct kernels): no im2col matrix, no float copy of one. It gives the integer sums exactly when
every partial sum it can form is an integer of magnitude at most 2^24, which float32 holds:

    forward         out[p, co]  = sum over K = Cin*kh*kw  of a * w      |a|, |w| <= 127
    input gradient  gi[p, ci]   = sum over <= Cout*kh*kw  of e * w      |e|, |w| <= 127
    weight gradient gw[co, k]   = sum over pixels p of e[p, co] * a[p, k]

A partial sum is at most the sum of its terms' magnitudes. For the forward and input gradient
that is K * 127^2, within 2^24 for K <= ``F32_CHUNK`` (1024): a wider layer is split into groups
of input (output) channels of at most 1024 / (kh*kw) channels, each an exact convolution, whose
integer results are added in int32 (one group's float32 result is dequantized in place by the
``scale_exact_`` kernel: the same floats). For the weight gradient the bound is

    max|a| * sum over the group's pixels of |e[p, co]|   <= 2^24            (every co)

so images are taken in groups as large as that allows (one 32x32 image always fits:
1024 * 127^2 < 2^24; the errors' codes are mostly small, so groups are usually much larger), and
the groups' integer results are added in int32 (int64 beyond ``SAFE_K`` pixels). Where one image
alone may exceed the bound, or PyTorch would not run the convolution on oneDNN or its im2col GEMM
(NNPACK's Winograd transforms are not exact) or would run it at reduced precision, the callers
take the exact float32 GEMM route.

Tests compare every function here with float64 convolutions and with ``torch._int_mm``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .int_gemm import F32_CHUNK, float32_reduced

LIMIT = 2 ** 24
_EXACT_BACKENDS = ("Mkldnn", "MkldnnEmpty", "Slow2d", "SlowDilated2d", "SlowTranspose2d")


def _as_float(codes_nhwc: torch.Tensor) -> torch.Tensor:
    """int8 NHWC codes as a float32 [N, C, H, W] tensor in channels-last memory."""
    return codes_nhwc.to(torch.float32).permute(0, 3, 1, 2)


def runs_exactly(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, transposed: bool = False,
                 output_padding: int = 0) -> bool:
    """Whether PyTorch runs this float32 convolution on oneDNN or its im2col GEMM (direct sums), at
    full float32 precision."""
    if float32_reduced("conv") or float32_reduced("matmul"):      # the im2col GEMM is a matmul
        return False
    backend = torch._C._select_conv_backend(x, w, None, [stride] * 2, [padding] * 2, [1, 1], transposed,
                                            [output_padding] * 2, 1, None)
    kinds = torch._C._ConvBackend.__members__
    # oneDNN's transposed convolution is not named in the Python enum: it sits between the two
    # oneDNN members of the C++ enum (Mkldnn, MkldnnTranspose, MkldnnEmpty)
    if int(kinds["Mkldnn"]) < int(backend) < int(kinds["MkldnnEmpty"]):
        return True
    return backend.name in _EXACT_BACKENDS


def weights_fwd(fwd: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """float32 [Cout, Cin, kh, kw] weight codes from the forward GEMM operand [kh*kw*Cin, Cout]."""
    cout, cin, kh, kw = shape
    return fwd.t().reshape(cout, kh, kw, cin).permute(0, 3, 1, 2).to(torch.float32)


def weights_bwd(bwd: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """float32 [Cout, Cin, kh, kw] weight codes from the input-gradient operand [kh*kw*Cout, Cin]
    (the kernel rotated by 180 degrees, its channels swapped)."""
    cout, cin, kh, kw = shape
    rotated = bwd.t().reshape(cin, kh, kw, cout).permute(0, 3, 1, 2)
    return rotated.flip(2, 3).transpose(0, 1).to(torch.float32)


def _channel_groups(c: int, taps: int) -> list[slice]:
    per = max(1, F32_CHUNK // taps)
    return [slice(s, min(c, s + per)) for s in range(0, c, per)]


def _summed(parts) -> torch.Tensor:
    """The sum of exact float32 partial results (each an integer of magnitude <= 2^24): one part as
    it is (float32), several added exactly in int32."""
    parts = list(parts)
    if len(parts) == 1:
        return parts[0]
    total = None
    for p in parts:
        total = p.to(torch.int32) if total is None else total.add_(p.to(torch.int32))
    return total


def forward(a: torch.Tensor, w: torch.Tensor, stride: int, padding: int) -> torch.Tensor | None:
    """NHWC conv(a, w) of int8 NHWC codes ``a`` and float32 weight codes ``w`` [Cout, Cin, kh, kw]:
    the integer sums as float32 (one channel group: exact, <= 2^24) or int32 (several); None where
    PyTorch would not run it exactly."""
    x = _as_float(a)
    if not runs_exactly(x, w, stride, padding):
        return None
    taps = w.shape[2] * w.shape[3]
    out = _summed(F.conv2d(x[:, g], w[:, g], None, stride, padding) for g in _channel_groups(w.shape[1], taps))
    return out.permute(0, 2, 3, 1).contiguous()


def input_grad(e: torch.Tensor, w: torch.Tensor, stride: int, padding: int,
               in_hw: tuple[int, int]) -> torch.Tensor | None:
    """NHWC dL/dinput (the transposed convolution) of int8 NHWC error codes ``e`` and float32 weight
    codes ``w`` [Cout, Cin, kh, kw], as :func:`forward`'s sums (float32 or int32); None where
    PyTorch would not run it exactly."""
    x = _as_float(e)
    kh, kw = w.shape[2:]
    extra = (in_hw[0] - ((e.shape[1] - 1) * stride - 2 * padding + kh),
             in_hw[1] - ((e.shape[2] - 1) * stride - 2 * padding + kw))
    if extra[0] != extra[1] or not 0 <= extra[0] < stride or not runs_exactly(x, w, stride, padding, True, extra[0]):
        return None
    out = _summed(F.conv_transpose2d(x[:, g], w[g], None, stride, padding, extra[0])
                  for g in _channel_groups(w.shape[0], kh * kw))
    return out.permute(0, 2, 3, 1).contiguous()


def image_groups(a: torch.Tensor, e: torch.Tensor) -> list[slice] | None:
    """Consecutive images whose weight-gradient partial sums stay within 2^24 (module doc), or
    None where one image alone may exceed it. Greedy: each group as long as the bound allows."""
    n = e.shape[0]
    lo, hi = torch.aminmax(a) if a.numel() else (torch.tensor(0), torch.tensor(0))
    a_max = max(-int(lo), int(hi))
    if a_max == 0 or n == 0:
        return [slice(0, n)]
    budget = LIMIT // a_max
    per_image = e.abs().sum(dim=(1, 2), dtype=torch.int64)          # [N, Cout]: sum |e| per channel
    if int(per_image.max()) > budget:
        return None
    cum = torch.cat([torch.zeros(1, e.shape[3], dtype=torch.int64), per_image.cumsum(0)])
    groups, start = [], 0
    while start < n:
        # the largest end whose group start..end-1 keeps every channel's sum within the budget
        within = ((cum[start + 1:] - cum[start]).amax(dim=1) <= budget)
        end = start + int(within.sum())            # the channel sums only grow: a prefix is within
        groups.append(slice(start, end))
        start = end
    return groups


def weight_grad(a: torch.Tensor, e: torch.Tensor, shape: tuple[int, int, int, int], stride: int,
                padding: int, dtype: torch.dtype) -> torch.Tensor | None:
    """[Cout, kh*kw*Cin] (im2col order) = E^T @ im2col(A) of int8 NHWC codes, as ``dtype`` (int32
    or int64); None where the bound or PyTorch's choice of kernel does not allow it."""
    groups = image_groups(a, e)
    if groups is None:
        return None
    x, g = _as_float(a), _as_float(e)
    w = torch.empty(shape, dtype=torch.float32)      # its shape only: the weight is not read
    if not runs_exactly(x, w, stride, padding):
        return None
    total = None
    for s in groups:
        part = torch.ops.aten.convolution_backward(g[s], x[s], w, None, [stride] * 2, [padding] * 2, [1, 1],
                                                   False, [0, 0], 1, [False, True, False])[1]
        part = part.permute(0, 2, 3, 1).reshape(shape[0], -1).to(dtype)
        total = part if total is None else total.add_(part)
    return total

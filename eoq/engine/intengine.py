"""The integer execution engine: conv and linear layers computed in int8 x int8 -> int32 arithmetic.

Selected with ``engine="int"`` (``eoq train --engine int``) for specs whose quantized layers have
8-bit SQ activations A, errors E and gradients G and 8-bit stored weights (the ``eoq`` preset).
Per quantized layer, with codes in channels-last (NHWC) order and K the GEMM's inner size:

    forward        A codes (int8, SQ of the input)  x  W codes (the stored int8 weights)
                   im2col(A) [N*Ho*Wo, kh*kw*Cin] @ W^T -> int32     ``torch._int_mm``
    error          E codes (int8, SQ of dL/dout, stochastic rounding with the simulator's bits)
                   im2col(dilate(E)) @ rot180(W)^T -> int32            (a transposed convolution;
                   for stride s > 1 one GEMM whose s*s column groups are the input phases, space to
                   depth, or s*s sub-convolutions of the undilated E where a phase meets no tap)
    weight grad    E^T @ im2col(A) -> int32 per chunk of rows, summed in int64, then
                   (the forward keeps A's int8 codes, and backward builds im2col(A) again: a
                   3x3 layer would otherwise hold 9 bytes per input value, twice fp32's 4)
                   G = SQ(., 8) evaluated on the integers (shift + the same random bits)

With the compiled kernels the forward, the stride-1 error GEMM and the weight-gradient GEMM run a
block of images at a time (an im2col block of ``BLOCK_BYTES``; the forward and error accumulators
written into their float32 output block by block): only a few MiB of im2col and int32 are held at
once, and rows (and integer partial sums) are the same integers as one whole-batch GEMM's.

Stride-1 convolutions with 16-64 output channels (16-256 on AMX tiles, whose weight gradient
stays on the GEMM above 128) run on direct AMX / VNNI kernels instead (:mod:`eoq.engine.direct`: no
im2col matrix, the same integer sums); the rest use the GEMMs above. On CPUs without int8 dot
products (AVX2 only), where ``torch._int_mm`` is a scalar loop, the integer sums are formed in
float32, exactly: the convolutions as float32 oneDNN convolutions (:mod:`eoq.engine.float_conv`),
other GEMMs in chunks of 1024 products (:mod:`eoq.engine.int_gemm`); ``EOQ_INT_GEMM`` chooses.

The int32 accumulator never overflows silently: a product of two 8-bit codes is at most
127 * 127, so a GEMM is split along K into chunks of at most ``SAFE_K`` = (2^31 - 1) // 127^2 =
133,144 terms, whose int32 results are summed in int64 (the weight-gradient GEMM has K = N*Ho*Wo,
131,072 at batch 128 on 32x32; the forward and error GEMMs have K <= 9 * 512): ``checked_int_mm``.
Codes are at most 127 in magnitude (SQ clamps symmetrically), so the bound holds for any data.

Between layers the engine hands PyTorch float32 tensors holding ``int32 * 2^exponent`` exactly
(for |int32| < 2^24). With the spec's ``stream_bits`` (the ``eoq`` presets) the elementwise work
that follows (Fixup scalars, ReLU, residual add, option-A shortcut, the error sums) is exact and
rounded only where an integer datapath rounds: to the 16-bit fixed-point stream at block
boundaries (:mod:`eoq.nn.stream`) and by the next layer's A or E quantizer; without it those
operations run in float32. Either way the simulator runs the same operations, so the results
agree bit for bit wherever the simulator's float32 GEMMs are exact (every partial sum below 2^24
in units of the LSB product); tests check this per layer and for whole steps, and a 5-epoch
CIFAR-10 run ended with identical weights in both engines (reports/engines/).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import distributed, kernels
from ..quant import fusion, rng
from ..quant import quantizers as Q
from ..quant.observe import OBSERVERS, listening
from ..quant.spec import LayerQuant, SpecError
from . import allocator, direct, float_conv, int_gemm

SAFE_K = (2 ** 31 - 1) // (127 * 127)   # 133,144 int8 products always fit in int32
BLOCK_BYTES = 1 << 22                    # im2col bytes per GEMM of the blocked convolutions
WGRAD_BLOCK_BYTES = 1 << 23              # the weight gradient's (and at least its int32 sum): fewer sums


class BufferPool:
    """Reused im2col and accumulator buffers, for a process whose heap gives large blocks back to
    the OS on free (glibc's defaults): a fresh 19 MB tensor then costs about 11 ms of page faults,
    ten times the copy into it. Where :func:`eoq.engine.allocator.tune` keeps freed memory in the
    heap (``eoq train``, the benchmarks), the pool keeps nothing: the heap reuses a freed block for
    any later shape, where one buffer per shape held 43 MiB of a ResNet-20 batch-128 step's 140 MiB
    peak (exact heap accounting, benchmarks/heap_peak.c)."""

    def __init__(self, per_shape: int = 4):
        self.free: dict = {}
        self.per_shape = per_shape

    def take(self, shape, dtype) -> torch.Tensor:
        bucket = self.free.get((tuple(shape), dtype))
        return bucket.pop() if bucket else torch.empty(tuple(shape), dtype=dtype)

    def give(self, t: torch.Tensor) -> None:
        if allocator.tuned():
            return
        bucket = self.free.setdefault((tuple(t.shape), t.dtype), [])
        if len(bucket) < self.per_shape:
            bucket.append(t)


POOL = BufferPool()


def check_spec(quant: LayerQuant, name: str) -> None:
    """The integer engine needs SQ A/E/G/W of at most 8 bits (codes that fit int8; fewer bits give
    the simulator's results bit for bit) on a quantized layer, and 8-bit stored weights."""
    for kind in ("A", "E", "G", "W"):
        q = getattr(quant, kind)
        if not q.enabled or q.bits > 8 or q.quantizer != "sq":
            raise SpecError(f"engine='int' (--engine int) needs SQ {kind} of at most 8 bits on every quantized "
                            f"layer; layer {name!r} has {kind} = {q.bits if q.enabled else 'float'} ({q.quantizer}). "
                            "Use engine='sim' (--engine sim) for this spec.")


def _row_major(t: torch.Tensor) -> torch.Tensor:
    if t.stride() == (t.shape[1], 1):
        return t
    return torch.empty(t.shape, dtype=t.dtype).copy_(t)


def int_mm(a: torch.Tensor, b: torch.Tensor, pooled: bool = False) -> torch.Tensor:
    """``torch._int_mm`` (int8 x int8 -> int32), for K <= SAFE_K; on CPUs without int8 dot
    products exact float32 GEMMs instead (:mod:`eoq.engine.int_gemm`: the same integers).

    torch 2.13's CPU kernel returns wrong results (uninitialised memory) for some shapes when an
    operand is a transposed view, and for an inner size K = 1 (both found by the tests here):
    operands are copied to canonical row-major strides (``contiguous()`` keeps odd strides on
    size-1 dimensions, which the kernel misreads), and K = 1 is padded to 2 with a zero column."""
    out = POOL.take((a.shape[0], b.shape[1]), torch.int32) if pooled else None
    if int_gemm.route() is int_gemm.Route.FLOAT32:
        return int_gemm.float_mm(a, b, out)
    a, b = _row_major(a), _row_major(b)
    if a.shape[1] == 1:
        a = F.pad(a, (0, 1))
        b = F.pad(b, (0, 0, 0, 1))
    return torch._int_mm(a, b) if out is None else torch._int_mm(a, b, out=out)


def checked_int_mm(a: torch.Tensor, b: torch.Tensor, pooled: bool = False) -> torch.Tensor:
    """a @ b for int8 matrices, exact: int32 per chunk of at most SAFE_K, int64 sum across chunks.
    ``pooled``: an int32 result comes from POOL (give it back when done)."""
    k = a.shape[1]
    if k <= SAFE_K:
        return int_mm(a, b, pooled)
    out = torch.zeros(a.shape[0], b.shape[1], dtype=torch.int64)
    for s in range(0, k, SAFE_K):
        out += int_mm(a[:, s:s + SAFE_K].contiguous(), b[s:s + SAFE_K]).to(torch.int64)
    return out


def to_nhwc(codes: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] codes (any memory layout) as a contiguous [N, H, W, C] tensor."""
    return codes.permute(0, 2, 3, 1).contiguous()


def im2col(x: torch.Tensor, kh: int, kw: int, stride: int, pad: tuple[int, int, int, int],
           dilation: int = 1) -> torch.Tensor:
    """Patches of an NHWC tensor as rows [N*Ho*Wo, kh*kw*C] (C fastest), padding (l, r, t, b).

    ``dilation`` reads the input as if zeros stood between its pixels (transposed convolutions).
    The C++ kernel pads and dilates on the fly; the torch reference (integer tensors cannot go
    through F.unfold) materialises both, then takes a strided view."""
    kern = kernels.load() if x.dtype == torch.int8 else None
    if kern is not None:
        n, h, w, c = x.shape
        ho = ((h - 1) * dilation + 1 + pad[2] + pad[3] - kh) // stride + 1
        wo = ((w - 1) * dilation + 1 + pad[0] + pad[1] - kw) // stride + 1
        out = POOL.take((n * ho * wo, kh * kw * c), torch.int8)
        return kern.im2col(x, kh, kw, stride, dilation, pad[2], pad[3], pad[0], pad[1], out)
    if dilation > 1:
        n, h, w, c = x.shape
        d = x.new_zeros(n, (h - 1) * dilation + 1, (w - 1) * dilation + 1, c)
        d[:, ::dilation, ::dilation] = x
        x = d
    if any(pad):
        x = F.pad(x, (0, 0) + pad)
    n, h, w, c = x.shape
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    sn, sh, sw, sc = x.stride()
    view = x.as_strided((n, ho, wo, kh, kw, c), (sn, sh * stride, sw * stride, sh, sw, sc))
    return view.reshape(n * ho * wo, kh * kw * c)


def weight_matrix(w_codes: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, kh, kw] codes as [Cout, kh*kw*Cin], the order im2col produces."""
    return w_codes.permute(0, 2, 3, 1).reshape(w_codes.shape[0], -1)


class WeightMats(NamedTuple):
    """A conv's int8 weight codes as the two GEMM operands (row-major): ``fwd`` [kh*kw*Cin, Cout]
    for the forward, ``bwd`` [kh*kw*Cout, Cin] (kernel rotated by 180 degrees) for the input
    gradient; ``shape`` is the weight's [Cout, Cin, kh, kw]."""

    fwd: torch.Tensor
    bwd: torch.Tensor
    shape: tuple[int, int, int, int]


def weight_mats(w: torch.Tensor, exponent: int | None = None) -> WeightMats:
    """The GEMM operands of conv weights: int8 codes ``w`` (torch reference), or float32 values on
    the grid 2^exponent (one kernel pass, no intermediate code tensor)."""
    kern = kernels.load() if exponent is not None else None
    if kern is not None:
        fwd, bwd = kern.weight_mats(w.detach(), exponent)
        return WeightMats(fwd, bwd, tuple(w.shape))
    if exponent is not None:
        w = _grid_codes(w, exponent)
    fwd = _row_major(weight_matrix(w).t())
    bwd = _row_major(weight_matrix(w.flip(2, 3).transpose(0, 1)).t())   # [Cin, Cout, kh, kw] rotated
    return WeightMats(fwd, bwd, tuple(w.shape))


def conv_forward(a: torch.Tensor, w: torch.Tensor | WeightMats, stride: int,
                 padding: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int32 NHWC output of conv(a, w) and its im2col matrix (a pooled buffer: give it back)."""
    w = w if isinstance(w, WeightMats) else weight_mats(w)
    cout, _, kh, kw = w.shape
    cols = im2col(a, kh, kw, stride, (padding,) * 4)
    n = a.shape[0]
    ho = (a.shape[1] + 2 * padding - kh) // stride + 1
    wo = (a.shape[2] + 2 * padding - kw) // stride + 1
    out = checked_int_mm(cols, w.fwd, pooled=True)
    return out.view(n, ho, wo, cout), cols


def conv_input_grad(e: torch.Tensor, w: torch.Tensor | WeightMats, stride: int, padding: int,
                    in_hw: tuple[int, int]) -> torch.Tensor:
    """int32 NHWC dL/dinput: the transposed convolution of E with W, as a direct convolution of
    E dilated by the stride and padded by k - 1 - p with the rotated, transposed kernel. For
    stride s > 1 most of the dilated input is zeros, so it runs as s * s sub-convolutions of the
    undilated E, one per output phase (:func:`_input_grad_phases`)."""
    w = w if isinstance(w, WeightMats) else weight_mats(w)
    if stride > 1:
        return _input_grad_phases(e, w, stride, padding, in_hw)
    n, ho, wo, cout = e.shape
    _, cin, kh, kw = w.shape
    extra_h = in_hw[0] - ((ho - 1) * stride - 2 * padding + kh)
    extra_w = in_hw[1] - ((wo - 1) * stride - 2 * padding + kw)
    ph, pw = kh - 1 - padding, kw - 1 - padding
    cols = im2col(e, kh, kw, 1, (pw, pw + extra_w, ph, ph + extra_h), dilation=stride)
    out = checked_int_mm(cols, w.bwd, pooled=True)
    POOL.give(cols)
    return out.view(n, in_hw[0], in_hw[1], cin)


def _images_per_block(rows_per_image: int, k: int) -> int:
    """Images per GEMM of a blocked convolution: an im2col block of about BLOCK_BYTES."""
    return max(1, BLOCK_BYTES // max(1, rows_per_image * k))


def _dequant(kern, acc, exponent, out, stats):
    """acc * 2^exponent into ``out`` (4-d); with a ``stats`` list, also its (sum, min, max) appended
    (``dequant_stats``)."""
    if stats is None:
        kern.dequant(acc, exponent, out=out)
    else:
        stats.append(kern.dequant_stats(acc, exponent, out))


def _dequantized(kern, acc: torch.Tensor, exponent: int, stats) -> torch.Tensor:
    """float32 NHWC acc * 2^exponent of NHWC integer sums: int32 into a new tensor, or float32
    holding exact integers (:mod:`eoq.engine.float_conv`) in place, the same floats either way
    (``stats``: as :func:`_dequant`)."""
    if acc.dtype == torch.float32:
        found = kern.scale_exact_(acc, exponent, stats is not None)
        if stats is not None:
            stats.append(found)
        return acc
    out = torch.empty(acc.shape, dtype=torch.float32)
    _dequant(kern, acc, exponent, out, stats)
    return out


class Stats(NamedTuple):
    """What a GEMM path's dequantization found along: the output's sum (one-element float32, as
    ``sum_f32`` forms it) and its smallest and largest value."""

    total: torch.Tensor
    lo: float
    hi: float


def stats_of(parts: list, exponent: int) -> Stats:
    """The :class:`Stats` of dequantized blocks' (sum of integers, min, max) at 2^exponent."""
    scale = torch.tensor([2.0 ** exponent], dtype=torch.float64)
    total = (torch.tensor([float(sum(p[0] for p in parts))], dtype=torch.float64) * scale).float()
    ends = torch.tensor([min(p[1] for p in parts), max(p[2] for p in parts)], dtype=torch.int32).float()
    ends = ends * torch.tensor(2.0 ** exponent, dtype=torch.float32)        # as the float32 values are
    return Stats(total, float(ends[0]), float(ends[1]))


def _blocked_gemm(kern, x, kh, kw, stride, pad, dilation, mat, out_hw, exponent, stats=None) -> torch.Tensor:
    """float32 NHWC (im2col(x) @ mat) * 2^exponent, a block of images at a time: each block's
    im2col matrix and int32 accumulator are only BLOCK_BYTES-sized (a whole batch's would be kh*kw
    bytes per input value and 4 per output value), and the accumulator is written once into its
    place in the float output. Rows are independent sums: the same integers as one GEMM.
    ``stats``: a list the blocks' (sum, min, max) are appended to (:func:`stats_of`)."""
    n, cout = x.shape[0], mat.shape[1]
    out = torch.empty((n, out_hw[0], out_hw[1], cout), dtype=torch.float32)
    step = _images_per_block(out_hw[0] * out_hw[1], mat.shape[0])
    for i in range(0, n, step):
        cols = im2col(x[i:i + step], kh, kw, stride, pad, dilation)
        acc = int_mm(cols, mat, pooled=True)
        _dequant(kern, acc, exponent, out[i:i + step], stats)
        _give(acc)
        POOL.give(cols)
    return out


def conv_float(a: torch.Tensor, w: WeightMats, stride: int, padding: int, exponent: int,
               channels_last: bool = True, stats: list | None = None) -> torch.Tensor:
    """float32 conv(a, w) * 2^exponent of NHWC codes, logical NCHW (:func:`_nchw_view`): in blocks
    of images (:func:`_blocked_gemm`), or one :func:`conv_forward` GEMM without the compiled
    kernels or for K > SAFE_K."""
    kern = kernels.load()
    cout, cin, kh, kw = w.shape
    if kern is None or kh * kw * cin > SAFE_K:
        acc, cols = conv_forward(a, w, stride, padding)
        out = _to_float_nchw(acc, exponent, channels_last)
        _give(acc)
        _give(cols)
        return out
    if int_gemm.route() is int_gemm.Route.FLOAT32:
        acc = float_conv.forward(a, float_conv.weights_fwd(w.fwd, w.shape), stride, padding)
        if acc is not None:
            return _nchw_view(_dequantized(kern, acc, exponent, stats), channels_last)
    ho = (a.shape[1] + 2 * padding - kh) // stride + 1
    wo = (a.shape[2] + 2 * padding - kw) // stride + 1
    out = _blocked_gemm(kern, a, kh, kw, stride, (padding,) * 4, 1, w.fwd, (ho, wo), exponent, stats)
    return _nchw_view(out, channels_last)


def input_grad_float(e: torch.Tensor, w: WeightMats, stride: int, padding: int, in_hw: tuple[int, int],
                     exponent: int, channels_last: bool = True, stats: list | None = None) -> torch.Tensor:
    """float32 dL/dinput * 2^exponent of NHWC codes E (the transposed convolution of
    :func:`conv_input_grad`), logical NCHW: stride 1 in blocks of images, stride > 1 phase by
    phase, each accumulator dequantized into place; one :func:`conv_input_grad` without the
    compiled kernels or for K > SAFE_K."""
    kern = kernels.load()
    cout, cin, kh, kw = w.shape
    if kern is None or kh * kw * cout > SAFE_K:
        acc = conv_input_grad(e, w, stride, padding, in_hw)
        out = _to_float_nchw(acc, exponent, channels_last)
        _give(acc)
        return out
    if int_gemm.route() is int_gemm.Route.FLOAT32:
        acc = float_conv.input_grad(e, float_conv.weights_bwd(w.bwd, w.shape), stride, padding, in_hw)
        if acc is not None:
            return _nchw_view(_dequantized(kern, acc, exponent, stats), channels_last)
    if stride > 1:
        if in_hw[0] % stride == 0 and in_hw[1] % stride == 0 and kh == kw \
                and all(_s2d_taps(kh, padding, stride, p) for p in range(stride)):   # no all-zero phase
            return _nchw_view(_input_grad_s2d(kern, e, w, stride, padding, in_hw, exponent, stats), channels_last)
        return _nchw_view(_input_grad_phases(e, w, stride, padding, in_hw, exponent, kern, stats), channels_last)
    _, ho, wo, _ = e.shape
    extra_h = in_hw[0] - ((ho - 1) - 2 * padding + kh)
    extra_w = in_hw[1] - ((wo - 1) - 2 * padding + kw)
    ph, pw = kh - 1 - padding, kw - 1 - padding
    out = _blocked_gemm(kern, e, kh, kw, 1, (pw, pw + extra_w, ph, ph + extra_h), 1, w.bwd, in_hw, exponent, stats)
    return _nchw_view(out, channels_last)


def conv_weight_grad(a: torch.Tensor, e: torch.Tensor, kh: int, kw: int, stride: int, padding: int) -> torch.Tensor:
    """[Cout, kh*kw*Cin] = E^T @ im2col(A) (NHWC codes), exact: int32 when N*Ho*Wo <= SAFE_K, else
    int64 (:func:`weight_grad`'s types). With the compiled kernels, a block of images at a time:
    the partial sums of the blocks are integers added exactly, so only a block of im2col is ever
    held: WGRAD_BLOCK_BYTES, and at least the int32 sum's size (each block's sum is a pass over
    it: ResNet-18's 512-channel layer took 8.2 ms in three blocks of 4 MiB, 4.6 in one; and its
    heap peak went down, one [Cout, K] int32 fewer)."""
    n, ho, wo, cout = e.shape
    rows, k = ho * wo, kh * kw * a.shape[3]
    if kernels.load() is None or rows > SAFE_K:
        cols = im2col(a, kh, kw, stride, (padding,) * 4)
        acc = weight_grad(e.reshape(-1, cout), cols)
        _give(cols)
        return acc
    dtype = torch.int32 if n * rows <= SAFE_K else torch.int64
    if int_gemm.route() is int_gemm.Route.FLOAT32:
        acc = float_conv.weight_grad(a, e, (cout, a.shape[3], kh, kw), stride, padding, dtype)
        if acc is not None:
            return acc
    per_block = max(BLOCK_BYTES, WGRAD_BLOCK_BYTES, cout * k * 4)   # at least the int32 sum it adds into
    step = min(max(1, per_block // max(1, rows * k)), SAFE_K // rows)
    acc = None
    for i in range(0, n, step):
        cols = im2col(a[i:i + step], kh, kw, stride, (padding,) * 4)
        part = int_mm(transpose(e[i:i + step].reshape(-1, cout)), cols)
        POOL.give(cols)
        acc = part.to(dtype) if acc is None else acc.add_(part)
    return acc


def _phase_taps(k: int, padding: int, stride: int, phase: int, out_len: int, e_len: int):
    """For input-gradient positions i = phase + stride * j (j < J): the rotated-kernel taps t that
    meet a non-zero of the dilated E (i + t - (k - 1 - p) divisible by the stride), and the
    im2col padding (before, after) that makes a stride-1 window of len(taps) over the undilated E
    give exactly those J positions (negative padding crops)."""
    taps = [t for t in range(k) if (phase + t - (k - 1 - padding)) % stride == 0]
    j = len(range(phase, out_len, stride))
    if not taps or not j:
        return taps, j, (0, 0)
    first = (phase + taps[0] - (k - 1 - padding)) // stride        # E index read by j = 0
    return taps, j, (-first, j - 1 + first + len(taps) - e_len)


def _input_grad_phases(e, w: WeightMats, stride, padding, in_hw, exponent=None, kern=None, stats=None):
    """The strided conv's input gradient phase by phase: positions (py + s*j, px + s*i) take only
    the kernel taps of their phase (a 3x3 stride-2 conv: 1, 2, 2 and 4 taps instead of 9 on a
    4x larger, mostly zero input). Integer sums of the same products: identical results. With
    ``exponent`` (and the compiled kernels ``kern``) the output is float32 values acc * 2^exponent,
    each phase's accumulator dequantized into place (no whole-batch int32 tensor)."""
    n, ho, wo, cout = e.shape
    _, cin, kh, kw = w.shape
    out = (POOL.take((n, in_hw[0], in_hw[1], cin), torch.int32) if exponent is None else
           torch.empty((n, in_hw[0], in_hw[1], cin), dtype=torch.float32))
    bwd = w.bwd.view(kh, kw, cout, cin)
    for py in range(stride):
        ty, jy, (pt, pb) = _phase_taps(kh, padding, stride, py, in_hw[0], ho)
        for px in range(stride):
            tx, jx, (pl, pr) = _phase_taps(kw, padding, stride, px, in_hw[1], wo)
            dst = out[:, py::stride, px::stride]
            if not ty or not tx:
                dst.zero_()              # (zeros: nothing to add to the statistics but 0)
                if stats is not None:
                    stats.append((0, 0, 0))
                continue
            if not jy or not jx:
                continue
            cols = im2col(e, len(ty), len(tx), 1, (pl, pr, pt, pb))
            sub = bwd[ty][:, tx].reshape(-1, cin)
            res = checked_int_mm(cols, sub, pooled=True)
            if exponent is None:
                dst.copy_(res.view(n, jy, jx, cin))
            else:                                   # written straight into the strided phase
                _dequant(kern, res, exponent, dst, stats)
            _give(res)
            POOL.give(cols)
    return out


def _s2d_taps(k: int, padding: int, stride: int, phase: int) -> list[tuple[int, int]]:
    """(d, t) for the kernel taps t that reach input phase ``phase`` of a strided conv: input position
    stride * j + phase takes E[j + d] times tap t, d = (phase + padding - t) / stride."""
    return [((phase + padding - t) // stride, t) for t in range(k) if (phase + padding - t) % stride == 0]


def s2d_input_grad_matrix(w: WeightMats, stride: int, padding: int) -> tuple[torch.Tensor, int, int]:
    """The strided conv's input gradient as one stride-1 convolution of E with a T x T kernel whose
    outputs are the stride * stride input phases side by side (space to depth): the int8 matrix
    [T*T*Cout (im2col order), stride*stride*Cin (phase y, phase x, channel)] holding, at window
    offset (dy, dx) and phase (py, px), the tap that phase meets there (zero where none), with T and
    the first window offset d0 (E row j + d0 + dy feeds input row stride * j + py)."""
    cout, cin, kh, kw = w.shape
    assert kh == kw, "square kernels"
    taps = [_s2d_taps(kh, padding, stride, p) for p in range(stride)]
    ds = [d for phase in taps for d, _ in phase]
    d0, t = min(ds), max(ds) - min(ds) + 1
    rot = w.bwd.view(kh, kw, cout, cin)                 # rot[kh-1-ky, kw-1-kx] = W[:, :, ky, kx] as [Co, Ci]
    mat = torch.zeros(t, t, cout, stride, stride, cin, dtype=torch.int8)
    for py in range(stride):
        for dy, ky in taps[py]:
            for px in range(stride):
                for dx, kx in taps[px]:
                    mat[dy - d0, dx - d0, :, py, px] = rot[kh - 1 - ky, kw - 1 - kx]
    return mat.view(t * t * cout, stride * stride * cin), t, d0


def _input_grad_s2d(kern, e, w: WeightMats, stride, padding, in_hw, exponent, stats=None):
    """float32 NHWC input gradient * 2^exponent of a strided conv (H and W multiples of the stride),
    as one GEMM per block of images over im2col(E) with the space-to-depth matrix
    (:func:`s2d_input_grad_matrix`): each output row holds the stride * stride input pixels of
    one position, dequantized straight into their places. A 3x3 stride-2 layer multiplies 16 taps
    where the phases' 9 suffice, but in one GEMM whose 4 * Cin columns run at the GEMM's rate
    instead of four narrow ones of 1, 2, 2 and 4 taps: 1.2-1.9x faster on ResNet-18's and -20's
    stride-2 layers (reports/benchmarks.md). Where a phase meets no tap (a 1x1 stride-2
    projection), the phases stay faster. Integer sums of the same products (zeros aside):
    identical results."""
    n, ho, wo, cout = e.shape
    cin = w.shape[1]
    jh, jw = in_hw[0] // stride, in_hw[1] // stride
    mat, t, d0 = s2d_input_grad_matrix(w, stride, padding)
    pad = (-d0, jw - 1 + d0 + t - 1 - (wo - 1), -d0, jh - 1 + d0 + t - 1 - (ho - 1))    # (l, r, t, b)
    out = torch.empty((n, in_hw[0], in_hw[1], cin), dtype=torch.float32)
    step = _images_per_block(jh * jw, mat.shape[0])
    for i in range(0, n, step):
        cols = im2col(e[i:i + step], t, t, 1, pad)
        acc = int_mm(cols, mat, pooled=True)
        m = out[i:i + step].shape[0]
        dst = out[i:i + step].view(m * jh, stride, jw, stride * cin).permute(0, 2, 1, 3)
        _dequant(kern, acc.view(-1, stride * cin), exponent, dst, stats)
        _give(acc)
        POOL.give(cols)
    return out


def transpose(x: torch.Tensor) -> torch.Tensor:
    """An int8 matrix transposed into row-major memory (C++ tiles; torch's copy is the reference)."""
    kern = kernels.load() if x.dtype == torch.int8 else None
    return kern.transpose(x) if kern is not None else x.t().contiguous()


def weight_grad(e_rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """[Cout, K] = E^T @ cols (int32, or int64 when K needs chunks), K-chunked so that no int32
    partial sum can overflow."""
    return checked_int_mm(transpose(e_rows), cols)


def sq_from_int(acc: torch.Tensor, exp_in: int, k: int, rounding: str, generator) -> tuple[torch.Tensor, int]:
    """SQ(acc * 2^exp_in, k) on integers: the codes the float quantizer gives for the same value.

    ``acc`` is in logical (row-major) order. exponent = round(log2 max|value|) exactly; shift
    s = lsb - exp_in; nearest: round half to even of acc / 2^s; stochastic:
    floor((floor(acc * 2^(16 - s)) + b) / 2^16) with the 16-bit numbers b of :mod:`eoq.quant.rng`."""
    acc = acc.to(torch.int64)
    kern = kernels.load()
    if kern is not None and acc.numel():
        codes, lsb = kern.sq_int(acc, exp_in, k, Q.Rounding(rounding).code, generator)
        return codes, int(lsb)
    amax = int(acc.abs().max()) if acc.numel() else 0
    lsb = Q.exponent_of(float(amax) * 2.0 ** exp_in) + 1 - k
    m = Q.max_code(k)
    s = lsb - exp_in
    if rounding == "nearest":
        if s <= 0:
            codes = acc << -s
        else:
            q = acc >> s
            r = acc - (q << s)
            half = 1 << (s - 1)
            codes = q + ((r > half) | ((r == half) & ((q & 1) == 1))).to(torch.int64)
    else:
        bits = rng.random_bits(acc.shape, rng.draw_key(generator))
        t = (acc << (16 - s)) if s <= 16 else (acc >> (s - 16))
        codes = (t + bits) >> 16
    return codes.clamp_(-m, m).to(torch.int8), lsb


class _Saved(NamedTuple):
    """What a forward keeps for its backward besides the int8 code tensors: the LSB exponents of
    A and W, the input's spatial size (convolutions) and whether it ran channels-last."""

    a_exp: int
    w_exp: int
    in_hw: tuple = ()
    channels_last: bool = False


def _codes(x: torch.Tensor, q, generator, layer=None) -> tuple[torch.Tensor, int]:
    """SQ codes (int8, x's shape and layout) and LSB exponent of a batch tensor (A or E; a
    data-parallel shard is quantized as part of the whole batch, see eoq.distributed). An input
    that carries Fixup scalars for ``layer`` (layers.fused_bias_input, fused_relu_bias_input) is
    quantized as x + bias or relu(x + pre) + bias, an error marked by the Fixup tail as x * s; an
    error whose max|x| its kernel marked skips the quantizer's max pass."""
    affine = fusion.deferred(x, layer) or fusion.Affine()      # eoq/quant/fusion.py
    if q.rounding == "nearest" and affine.relu_pre is None and affine.mult is None and not distributed.active():
        ahead = fusion.known_codes(x, affine.bias or 0.0, q.bits)     # made by the block tail's pass
        if ahead is not None:
            return ahead[0], ahead[1]
    codes, lsb = Q.sq_integer(x, q.bits, q.rounding, generator, sharded=distributed.active(),
                              bias=affine.bias, relu_pre=affine.relu_pre, mult=affine.mult,
                              amax=fusion.known_max(x), arange=fusion.known_range(x))
    return codes.to(torch.int8), int(lsb)


def _padded_codes(x: torch.Tensor, q, layer) -> tuple[torch.Tensor, int] | None:
    """(the direct kernels' padded input, LSB exponent) of A, made by the quantizer in its one pass
    (Q.sq_integer_padded) where A is a nearest SQ and no codes were made ahead; else None."""
    if q.rounding != "nearest" or distributed.active():
        return None
    affine = fusion.deferred(x, layer) or fusion.Affine()
    if affine.mult is not None or fusion.known_codes(x, affine.bias or 0.0, q.bits) is not None:
        return None
    return Q.sq_integer_padded(x, q.bits, layer.padding[0], direct.channels_padded(x.shape[1]),
                               bias=affine.bias, relu_pre=affine.relu_pre, amax=fusion.known_max(x),
                               arange=fusion.known_range(x))


def _notify(kind, q, x, codes, lsb, owner):
    for obs in OBSERVERS:
        obs.after(kind, q, x, codes.to(torch.float32) * 2.0 ** lsb, owner)


def _gradient(acc: torch.Tensor, exponent: int, layer, conv_shape=None) -> torch.Tensor:
    """G of a weight-gradient accumulator (integer sums of int8 products, value acc * 2^exponent):
    summed over data-parallel shards (exact), rounded once in the weight's logical order. A conv's
    accumulator is [Cout, kh*kw*Cin] (im2col order) and ``conv_shape`` its weight's shape."""
    if distributed.active():
        acc = distributed.all_sum_(acc.to(torch.int64))
    q = layer.quant.G
    kern = kernels.load()
    if conv_shape is not None and kern is not None and not listening():
        g, _ = kern.sq_int_conv(acc, exponent, q.bits, q.rounding.code, layer.generator,
                                conv_shape[1])
        return g.view(conv_shape)
    if conv_shape is not None:
        cout, cin, kh, kw = conv_shape
        acc = acc.view(cout, kh, kw, cin).permute(0, 3, 1, 2).contiguous()
    g, eg = sq_from_int(acc, exponent, q.bits, q.rounding, layer.generator)
    if listening():
        _notify("G", q, acc.to(torch.float32) * 2.0 ** exponent, g, eg, layer)
    return g.to(torch.float32) * 2.0 ** eg


def _grid_codes(w: torch.Tensor, exponent: int) -> torch.Tensor:
    """int8 codes of float values on the grid 2^exponent (exact: w = codes * 2^exponent)."""
    return (w.detach() * 2.0 ** -exponent).round_().to(torch.int8)


def weight_codes(layer) -> tuple[torch.Tensor, int]:
    """The stored int8 weight codes and their exponent (the float parameter is codes * 2^e)."""
    e = int(layer.weight_exp)
    return _grid_codes(layer.weight, e), e


def _give(t: torch.Tensor) -> None:
    """Return an int32 accumulator or int8 im2col buffer (a base tensor, not a view) to the pool."""
    base = t._base if t._base is not None else t
    if base.dtype in (torch.int8, torch.int32) and base.is_contiguous():
        POOL.give(base)


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _to_float_nchw(acc_nhwc: torch.Tensor, exponent: int, channels_last: bool) -> torch.Tensor:
    """int32 NHWC accumulators as float32 values acc * 2^exponent (one pass), logical NCHW; in
    channels-last memory when the layer's input was (free), else NCHW-contiguous (a copy). The
    simulator's conv output has that same layout, so reductions downstream (Fixup scalar
    gradients, pooling) add in the same order and agree bit for bit."""
    kern = kernels.load()
    if kern is not None and acc_nhwc.dtype == torch.int32:
        out = kern.dequant(acc_nhwc, exponent)
    else:
        out = acc_nhwc.to(torch.float32) * 2.0 ** exponent
    return _nchw_view(out, channels_last)


def _nchw_view(out_nhwc: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """An NHWC float tensor as logical NCHW: a free view in channels-last memory, else a copy."""
    out = out_nhwc.permute(0, 3, 1, 2)
    return out if channels_last else out.contiguous()


class IntConvFn(torch.autograd.Function):
    """Conv2d on int8 codes (see module doc). Input and output are float32 tensors holding
    int32 * 2^exponent; keep activations channels-last (``x.contiguous(memory_format=
    torch.channels_last)``) and no layout copy is needed anywhere."""

    @staticmethod
    def forward(ctx, x, w, layer):
        q = layer.quant
        ew = int(layer.weight_exp)
        cl = _channels_last(x)
        pixels = x.shape[0] * x.shape[2] * x.shape[3]
        ctx.layer, ctx.direct, ctx.in_dtype = layer, direct.route(layer, ctx.needs_input_grad[0], pixels), x.dtype
        ctx.handoff = fusion.backward_offered(x, layer) if cl else None
        ctx.tail = fusion.tail_offered(x, layer) if ctx.direct.conv and cl else None
        if ctx.direct.wgrad and cl and not OBSERVERS:      # the quantizer writes the padded input itself
            padded = _padded_codes(x, q.A, layer)
            if padded is not None:
                return _direct_forward(ctx, x, None, padded[1], ew, cl, xu=padded[0])
        a, ea = _codes(x, q.A, layer.generator, layer)
        _notify("A", q.A, x, a, ea, layer)
        if ctx.direct.conv:
            return _direct_forward(ctx, x, to_nhwc(a), ea, ew, cl)
        wc = weight_mats(layer.weight, ew)
        a = to_nhwc(a)
        parts = [] if cl else None       # the output's range, for the next A quantizer's max pass
        out = conv_float(a, wc, layer.stride[0], layer.padding[0], ea + ew, cl, parts)
        if parts:
            st = stats_of(parts, ea + ew)
            fusion.know_range(out, st.lo, st.hi)
        if any(ctx.needs_input_grad):      # the codes, not their kh*kw times larger im2col matrix
            ctx.save_for_backward(a, wc.bwd)
        ctx.meta, ctx.wshape = _Saved(ea, ew, tuple(x.shape[2:]), cl), wc.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):
        if getattr(ctx, "done", False):
            raise RuntimeError("the integer engine reuses its im2col buffers after the backward pass: "
                               "backward twice through one graph (retain_graph) is not supported")
        ctx.done = True
        layer = ctx.layer
        ea, ew, in_hw, cl = ctx.meta
        q = layer.quant
        e, ee = _codes(grad_out, q.E, layer.generator, layer)
        _notify("E", q.E, grad_out, e, ee, layer)
        e = to_nhwc(e)
        if ctx.direct.conv:
            gi, gw, _ = _direct_backward(ctx, e, ee)
            return gi if gi is None else gi.to(ctx.in_dtype), gw, None
        a, wbwd = ctx.saved_tensors
        gi = gw = None
        wc = WeightMats(None, wbwd, ctx.wshape)
        if ctx.needs_input_grad[0]:
            offer, ctx.handoff = ctx.handoff, None        # a Fixup bias's sum, taken by the dequantization
            parts = [] if offer is not None and offer.kind == "sum" else None
            gi = input_grad_float(e, wc, layer.stride[0], layer.padding[0], in_hw, ee + ew, cl, parts)
            if parts and gi.stride() == tuple(offer.strides):
                offer.fill(gi, stats_of(parts, ee + ew).total)
        if ctx.needs_input_grad[1]:
            _, _, kh, kw = wc.shape
            acc = conv_weight_grad(a, e, kh, kw, layer.stride[0], layer.padding[0])
            gw = _gradient(acc, ea + ee, layer, wc.shape)
        return gi if gi is None else gi.to(ctx.in_dtype), gw, None


def _direct_forward(ctx, x, a_nhwc, ea, ew, cl, xu=None):
    """IntConvFn.forward through the direct kernels (eoq/engine/direct.py): no im2col, float32 output
    written by the kernel; the padded input codes are kept for the weight gradient (the unpadded
    codes where it runs on the GEMM path)."""
    layer, kern = ctx.layer, direct.module()
    dw = direct.grid_weights(kern, layer.weight, ew)
    kh, kw = layer.kernel_size
    tail, ctx.tail = ctx.tail, None   # the block tail after the layer: its max pass in the store
                                      # (not kept: the identity would outlive the forward)
    p = layer.padding[0]
    out_shape = (x.shape[0], layer.out_channels, x.shape[2] + 2 * p - kh + 1, x.shape[3] + 2 * p - kw + 1)
    if tail is not None and not (tail[0].dtype == torch.float32 and cl and tuple(tail[0].shape) == out_shape
                                 and tail[0].is_contiguous(memory_format=torch.channels_last)):
        tail = None
    out, xu, lo, hi, ends = direct.conv_range(kern, a_nhwc, dw.fwd, dw.fwd_corr, kh, kw, layer.padding[0], ea + ew,
                                              tail, xu)
    if any(ctx.needs_input_grad):
        ctx.save_for_backward(xu if ctx.direct.wgrad else a_nhwc, dw.bwd, dw.bwd_corr)
    ctx.meta, ctx.wshape = _Saved(ea, ew, tuple(x.shape[2:]), cl), tuple(layer.weight.shape)
    ctx.grad_shape = x.shape        # (the identity error a store may add: fusion.ErrorSum)
    out = _nchw_view(out, cl)
    if ends is not None:
        fusion.know_tail(out, tail[0], tail[1], tail[2], ends)
    return fusion.know_range(out, lo, hi) if cl else out     # (a copy otherwise: another tensor)


def _nhwc_view_strides(shape) -> tuple:
    """The strides of a channels-last tensor of logical ``shape`` [N, C, H, W] (a direct layer's
    gradient view: NHWC memory, :func:`_nchw_view`)."""
    _, c, h, w = shape
    return (h * w * c, 1, w * c, c)


def _direct_backward(ctx, e, ee):
    """IntConvFn.backward through the direct kernels: the input gradient is the stride-1
    convolution of E (padded by k - 1 - p) with the rotated kernel, the weight gradient an int64
    accumulator in im2col order, rounded to G as on the GEMM path."""
    a, bwd, bwd_corr = ctx.saved_tensors         # the padded input (uint8) or the codes (int8)
    layer, kern = ctx.layer, direct.module()
    ea, ew, _, cl = ctx.meta
    _, cin, kh, kw = ctx.wshape
    gi = gw = None
    if ctx.needs_input_grad[0]:
        offer, ctx.handoff = ctx.handoff, None    # the backward of the op in front of the layer, in the store
        pad = kh - 1 - layer.padding[0]
        if offer is not None and offer.strides != _nhwc_view_strides(ctx.grad_shape):
            offer = None                  # another memory order than the offer's: the op's own pass
        pair = offer.error_sum if offer is not None and offer.kind == "sum" else None
        ident = pair.identity if pair is not None else None    # the identity's error, if made
        if ident is not None and not (ident.dtype == torch.float32 and ident.shape == ctx.grad_shape
                                      and ident.is_contiguous(memory_format=torch.channels_last)):
            ident = None
        if offer is None:
            out, _ = direct.conv(kern, e, bwd, bwd_corr, kh, kw, pad, ee + ew)
        elif offer.kind == "relu":
            out, *sums = direct.conv_masked(kern, e, bwd, bwd_corr, kh, kw, pad, ee + ew, offer.live)
        else:
            out, *sums, amax = direct.conv_sum(kern, e, bwd, bwd_corr, kh, kw, pad, ee + ew, ident)
        gi = _nchw_view(out, cl)
        if offer is not None:
            offer.fill(gi, *sums)
        if ident is not None:
            pair.fill(gi, amax)
    if ctx.needs_input_grad[1]:
        acc = (direct.weight_grad(kern, a, e, kh, kw, cin) if ctx.direct.wgrad
               else conv_weight_grad(a, e, kh, kw, 1, layer.padding[0]))
        gw = _gradient(acc, ea + ee, layer, ctx.wshape)
    return gi, gw, None


class IntLinearFn(torch.autograd.Function):
    """Linear on int8 codes; the bias (an integer-stored tensor) is added in float32 like the
    simulator's addmm does."""

    @staticmethod
    def forward(ctx, x, w, b, layer):
        q = layer.quant
        a, ea = _codes(x, q.A, layer.generator, layer)
        _notify("A", q.A, x, a, ea, layer)
        wc, ew = weight_codes(layer)
        out = int_mm(a.contiguous(), wc.t()).to(torch.float32) * 2.0 ** (ea + ew)
        ctx.save_for_backward(a, wc)
        ctx.layer, ctx.meta, ctx.has_bias, ctx.in_dtype = layer, _Saved(ea, ew), b is not None, x.dtype
        return out + b if b is not None else out

    @staticmethod
    def backward(ctx, grad_out):
        a, wc = ctx.saved_tensors
        layer = ctx.layer
        ea, ew = ctx.meta.a_exp, ctx.meta.w_exp
        q = layer.quant
        e, ee = _codes(grad_out, q.E, layer.generator)
        _notify("E", q.E, grad_out, e, ee, layer)
        gi = gw = gb = None
        if ctx.needs_input_grad[0]:
            gi = int_mm(e, wc).to(torch.float32) * 2.0 ** (ee + ew)
        if ctx.needs_input_grad[1]:
            gw = _gradient(weight_grad(e, a), ea + ee, layer)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = e.to(torch.int64).sum(0).to(torch.float32) * 2.0 ** ee
        return gi if gi is None else gi.to(ctx.in_dtype), gw, gb, None

"""Direct int8 convolutions for narrow layers (``csrc/direct.cpp``): no im2col matrix.

In ResNet-20's 16-channel stage the im2col + ``torch._int_mm`` path is slow: a GEMM with 16 output
columns runs at 300-370 GOPS, and the im2col matrix it reads is 9 times the input. A direct
convolution with AVX-512 VNNI keeps 16 output pixels x 16 output channels in registers and
reads the input (NHWC codes, from cache) once per kernel tap:

    acc[pixel, co] += sum over 4 channels of u8(input) * s8(weight)       (``vpdpbusd``)

``vpdpbusd`` multiplies unsigned by signed bytes, so the input side carries codes + 128 (and 128,
the code 0, in the padding) and the offset is removed exactly: sum (a + 128) w = sum a w + 128
sum w, with sum w per output channel computed once per weight update (``corr``). The weight
gradient runs the same way with the errors E on the signed side, four neighbouring output pixels
per lane group, and 128 * sum E subtracted. Integer sums of the same products as the GEMM path:
the results are identical (tests compare them), so the engine stays bit-exact with the simulator.

On CPUs with AMX (Sapphire Rapids and later; Linux grants the tile state on request) the same
sums run on AMX tiles (``tdpbusd``: 16 x 16 int32 += 16 x 64 u8 times 64 x 16 s8), which is 2-4x
faster still. The forward takes 16 output positions in flat padded-width order (y * Wp + x),
whose input row segments lie a uniform number of bytes apart, and drops the positions past the
row. The weight gradient transposes the padded input to [channel][position] and places E at the
same flat positions, so that each kernel tap is a fixed shift. Both give the VNNI kernels'
integers exactly (tests compare all three paths with float64).

Used for stride-1 convolutions whose output channels are a multiple of 16 and at most
``MAX_CHANNELS`` (64: there the direct kernels are 1.07-1.25x faster than the GEMMs on VNNI, forward,
input and weight gradient together; at 128 channels the two tie, at 256 and 512 the GEMMs win;
``benchmarks/bench_direct.py``, timings in reports/benchmarks.md; on VNNI a layer wider than 32
channels takes them only from ``WIDE_MIN_PIXELS`` input pixels, N * H * W, on: below, their weight
packing, once per step, costs more than they save, 0.7 ms of a 10 ms ResNet-20 step at batch 1),
and whose input channels are a multiple of 16 or whose input needs no gradient (the stem: 3
channels, padded to 4), on CPUs with AVX-512 VNNI. ``EOQ_DIRECT=0`` in the environment (read at import) or ``with
direct.disabled():`` uses the im2col path everywhere; ``EOQ_AMX=0`` or ``with
direct.amx_disabled():`` keeps the direct kernels on VNNI instructions.

On AMX tiles the forward and the input gradient also win for wider layers, up to
``AMX_MAX_CHANNELS`` (ResNet-18's 128 and 256 channels at 16x16 and 8x8: 1.6-2.1x the GEMMs' speed,
``benchmarks/bench_direct.py``; its 512 channels at 4x4, where 16-position tiles over the padded
width compute twice the output, tie with the GEMMs), but the weight gradient does not beyond
``AMX_WGRAD_MAX_CHANNELS`` (128; at 256 channels the GEMM's takes 0.84-0.88 of its time): there a layer's
:class:`Route` keeps the weight gradient on the GEMM path, which reads the unpadded codes the
forward then saves instead of the padded input. Same integers on every route (tests).

A conv's store can take work along as it writes its output (``csrc/direct.h`` StoreTotal):
:func:`conv_range` the forward's output range (and a following block tail's maximum),
:func:`conv_masked` the ReLU backward in front of the layer, :func:`conv_sum` a Fixup bias's
gradient sum (and a block's error-sum maximum); eoq/quant/fusion.py says who asks and who reads.
"""
from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import kernels

MAX_CHANNELS = 64       # output channels on VNNI instructions
AMX_MAX_CHANNELS = 256  # output channels of the forward and input gradient on AMX tiles
AMX_WGRAD_MAX_CHANNELS = 128  # output channels of the weight gradient on AMX tiles (wider: the GEMM path)
WIDE_MIN_PIXELS = 2048  # VNNI, more than 32 output channels: the least N * H * W (ResNet-20's 8x8 stage at batch 32)
_state = {"enabled": os.environ.get("EOQ_DIRECT", "1") != "0", "amx": os.environ.get("EOQ_AMX", "1") != "0"}


def disabled():
    """Use the im2col + GEMM path for every layer inside the block (tests compare the two)."""
    return kernels.switched_off(_state)


def amx_disabled():
    """Run the direct convolutions on VNNI instructions only inside the block (no AMX tiles)."""
    return kernels.switched_off(_state, "amx")


def use_amx(kern) -> bool:
    """Whether the direct convolutions use AMX tiles: allowed (``EOQ_AMX`` unset or not 0), and the
    CPU, compiler and OS support them."""
    return _state["amx"] and kern.amx_available()


def module():
    """The kernel module when direct convolutions can run here, else None."""
    if not _state["enabled"]:
        return None
    kern = kernels.load()
    return kern if kern is not None and kern.direct_available() else None


class Route(NamedTuple):
    """Where a conv layer's three products run: ``conv`` the forward and the input gradient on the
    direct kernels (else everything on the GEMM path), ``wgrad`` the weight gradient on them too
    (else on the GEMM path, from the codes the forward saves)."""

    conv: bool
    wgrad: bool


GEMM = Route(False, False)


def route(layer, input_grad: bool, pixels: int | None = None) -> Route:
    """The route the integer engine takes for ``layer`` (an nn.Conv2d), for an input of ``pixels`` =
    N * H * W (None: a large batch)."""
    cout, cin, kh, kw = layer.weight.shape
    kern = module()
    if kern is None or isinstance(layer.padding, str):
        return GEMM
    geometry = (layer.stride == (1, 1) and layer.dilation == (1, 1) and layer.groups == 1 and kh == kw
                and layer.padding_mode == "zeros" and layer.padding[0] == layer.padding[1] <= kh - 1)
    amx = use_amx(kern)
    widest = AMX_MAX_CHANNELS if amx else MAX_CHANNELS
    channels = cout % 16 == 0 and cout <= widest and (cin % 16 == 0 or not input_grad)
    enough = cout <= 32 or pixels is None or pixels >= WIDE_MIN_PIXELS or amx
    if not (geometry and channels and enough):
        return GEMM
    return Route(True, cout <= (AMX_WGRAD_MAX_CHANNELS if amx else MAX_CHANNELS))


def channels_padded(c: int) -> int:
    """Channels rounded up to a multiple of 4 (one vpdpbusd reads 4 channels)."""
    return -(-c // 4) * 4


def pack(codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes [Co, Ci, kh, kw] as the kernel's operand [kh*kw, cp/4, Co, 4] (zero-padded to cp
    input channels) and corr[Co] = 128 * sum of each output channel's codes (int32)."""
    co, ci, kh, kw = codes.shape
    cp = channels_padded(ci)
    c = F.pad(codes, (0, 0, 0, 0, 0, cp - ci))
    packed = c.view(co, cp // 4, 4, kh, kw).permute(3, 4, 1, 0, 2).reshape(kh * kw, cp // 4, co, 4).contiguous()
    return packed, 128 * codes.sum((1, 2, 3), dtype=torch.int32)


class DirectWeights(NamedTuple):
    """A conv's weight codes for the direct kernels: forward operand and correction, and those of
    the input gradient (the kernel rotated by 180 degrees, in and out channels swapped)."""

    fwd: torch.Tensor
    fwd_corr: torch.Tensor
    bwd: torch.Tensor
    bwd_corr: torch.Tensor


def weights(codes: torch.Tensor) -> DirectWeights:
    """Both operands of int8 weight codes [Co, Ci, kh, kw]."""
    return DirectWeights(*pack(codes), *pack(codes.flip(2, 3).transpose(0, 1)))


def grid_weights(kern, w: torch.Tensor, exponent: int) -> DirectWeights:
    """Both operands of float32 weights on the grid 2^exponent, in one kernel pass (tested against
    :func:`weights` of the codes)."""
    return DirectWeights(*kern.direct_pack(w.detach(), exponent))


def pad_input(kern, codes_nhwc: torch.Tensor, pad: int) -> torch.Tensor:
    """uint8 [N, H+2p, W+2p, cp] holding code + 128 (128 in the padding and the extra channels)."""
    return kern.pad_u8(codes_nhwc, pad, channels_padded(codes_nhwc.shape[3]))


def conv(kern, codes_nhwc: torch.Tensor, packed: torch.Tensor, corr: torch.Tensor, kh: int, kw: int,
         pad: int, exponent: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 NHWC conv(codes, w) * 2^exponent (stride 1), and the padded input (kept for the
    weight gradient)."""
    xu = pad_input(kern, codes_nhwc, pad)
    return kern.direct_conv(xu, packed, corr, kh, kw, exponent, use_amx(kern)), xu


def conv_range(kern, codes_nhwc: torch.Tensor | None, packed: torch.Tensor, corr: torch.Tensor, kh: int, kw: int,
               pad: int, exponent: int, tail=None, xu: torch.Tensor | None = None) -> tuple:
    """(:func:`conv`'s output, its padded input, the smallest and largest output value, found by the
    store; no pass), and with ``tail`` = (identity float32 in the output's NHWC memory order, s, b)
    the ends (min t, max t, max|t|) of t = out * s + b + identity as fx_affine's max pass finds them
    (else None). ``xu``: the padded input, made already (by the quantizer), instead of the codes."""
    xu = pad_input(kern, codes_nhwc, pad) if xu is None else xu
    ident, s, b = tail if tail is not None else (torch.empty(0), 1.0, 0.0)
    out, lo, hi, tmin, tmax, tabs = kern.direct_conv_range(xu, packed, corr, kh, kw, exponent, use_amx(kern),
                                                           ident.detach(), s, b)
    return out, xu, lo, hi, ((tmin, tmax, tabs) if tail is not None else None)


def conv_sum(kern, codes_nhwc: torch.Tensor, packed: torch.Tensor, corr: torch.Tensor, kh: int, kw: int,
             pad: int, exponent: int, addend: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """:func:`conv` (without the padded input) and the sum of its output, found by the store: a
    one-element float32 tensor, as ``sum_f32`` gives it (tests compare the two); with ``addend``
    (float32, the output's NHWC memory order) also max|out + addend| as ``fx_sum``'s max pass finds
    it (else -1)."""
    xu = pad_input(kern, codes_nhwc, pad)
    return kern.direct_conv_sum(xu, packed, corr, kh, kw, exponent, use_amx(kern),
                                torch.empty(0) if addend is None else addend.detach())


def conv_masked(kern, codes_nhwc: torch.Tensor, packed: torch.Tensor, corr: torch.Tensor, kh: int, kw: int,
                pad: int, exponent: int, live: torch.Tensor):
    """:func:`conv` with the backward of the ReLU whose mask ``live`` (bits in the output's memory
    order, eoq/nn/mask.py) is given, in its store: (g = conv where live else +0.0, sum g, sum conv,
    max|g|), as ``masked_grad_sums`` returns them for the conv's output (tests compare the two)."""
    xu = pad_input(kern, codes_nhwc, pad)
    return kern.direct_conv_masked(xu, packed, corr, kh, kw, exponent, use_amx(kern), live)


def weight_grad(kern, xu: torch.Tensor, e_nhwc: torch.Tensor, kh: int, kw: int, cin: int) -> torch.Tensor:
    """int64 [Co, kh*kw*Cin] (im2col order): sum over pixels of E times the input window."""
    return kern.direct_wgrad(xu, e_nhwc, kh, kw, cin, use_amx(kern))

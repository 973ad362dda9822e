"""Residual blocks for every norm: 'bn' (conv-BN), 'fixup' (scalars, no norm), 'none' (bare).

Fixup branch, as in the reference code (m = number of convs in the branch):
    h = relu(conv_1(x + b_1a) + b_1b); ...; out = conv_m(h + b_ma) * scale + b_mb
    y = relu(out + identity),  identity = x, or shortcut(x + b_1a) where the shape changes
A shortcut is option A (subsample + zero-pad channels, CIFAR) or B (1x1 projection conv, + BN for
'bn'; ImageNet layout).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import kernels
from ..quant import fusion
from ..nn.batchnorm import QBatchNorm2d
from ..nn.fixup_tail import fixup_tail
from ..nn.layers import FixupScalar, QConv2d, fused_relu_bias_input, fusing_allowed
from ..nn.stream import stream_split

NORMS = ("bn", "fixup", "none")


class ShortcutA(nn.Module):
    """Option A: x[:, :, ::s, ::s] zero-padded to ``planes`` channels (no parameters)."""

    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.pad, self.stride = planes - in_planes, stride

    def subsample(self, x):
        return x[:, :, ::self.stride, ::self.stride]

    def pad_channels(self, x):
        return F.pad(x, (0, 0, 0, 0, 0, self.pad))

    def forward(self, x):
        return self.pad_channels(self.subsample(x))


class _ExactShortcutAFn(torch.autograd.Function):
    """Option A after a Fixup scalar bias, exact (the fixed-point stream): pad(x[:, :, ::s, ::s] + b)
    in float64. The scalar commutes with the subsampling, so it is added to the kept quarter only;
    the backward scatters the error back in x's memory order (what the stream's exact sum reads)
    and sums b's gradient in double (exact: the errors are stream values), rounded once. One
    kernel pass each way (``csrc/shortcut.cpp``); the torch ops below are its reference."""

    @staticmethod
    def forward(ctx, x, b, stride, pad):
        ctx.x_shape, ctx.stride, ctx.b_shape, ctx.channels = x.shape, stride, b.shape, x.shape[1]
        ctx.layout = torch.channels_last if x.dim() == 4 and not x.is_contiguous() \
            and x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        kern = kernels.usable(x)
        if kern is not None and b.dtype == torch.float32 and x.dim() == 4 \
                and (x.is_contiguous() or ctx.layout == torch.channels_last):       # usable: x is float32
            return kern.shortcut_a(x.detach(), float(b), stride, pad)
        sub = x[:, :, ::stride, ::stride].double() + b.detach().double()
        return F.pad(sub, (0, 0, 0, 0, 0, pad))

    @staticmethod
    def backward(ctx, grad):
        kern = kernels.load() if grad.is_cpu else None
        if kern is not None and grad.dtype == torch.float64 and grad.dim() == 4:
            gx, gb = kern.shortcut_a_backward(grad, list(ctx.x_shape), ctx.stride,
                                              ctx.layout == torch.channels_last)
            return gx, gb.view(ctx.b_shape) if ctx.needs_input_grad[1] else None, None, None
        g = grad[:, :ctx.channels]
        gx = torch.zeros(ctx.x_shape, dtype=torch.float32).contiguous(memory_format=ctx.layout)
        gx[:, :, ::ctx.stride, ::ctx.stride] = g
        gb = g.double().sum().float().view(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return gx, gb, None, None


def make_shortcut(kind: str, in_planes: int, planes: int, stride: int, norm: str) -> nn.Module:
    if stride == 1 and in_planes == planes:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_planes, planes, stride)
    conv = QConv2d(in_planes, planes, 1, stride=stride)
    return nn.Sequential(conv, QBatchNorm2d(planes)) if norm == "bn" else conv


class ResidualBlock(nn.Module):
    """A residual block whose branch is ``convs`` (3x3-3x3 basic or 1x1-3x3-1x1 bottleneck)."""

    expansion = 1
    stream_bits: int | None = None     # the fixed-point stream of spec.stream_bits (set by prepare)

    def __init__(self, convs: list[QConv2d], shortcut: nn.Module, norm: str):
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
        self.norm = norm
        self.convs = nn.ModuleList(convs)
        width = [c.out_channels for c in convs]
        if norm == "bn":
            self.bns = nn.ModuleList(QBatchNorm2d(w) for w in width)
        if norm == "fixup":
            self.biases_in = nn.ModuleList(FixupScalar("bias") for _ in convs)
            self.biases_out = nn.ModuleList(FixupScalar("bias") for _ in convs)
            self.scale = FixupScalar("scale")
        self.shortcut = shortcut

    def branch(self, x, tail: bool = True, offer=None):
        """F(x); for Fixup, x is the input before b_1a (b_1a is the first bias applied here).
        ``tail=False``: stop at the last conv's output (before the Fixup multiplier and bias);
        ``offer``: (identity, s, b) of the block tail after it, offered to the last conv's store."""
        last = len(self.convs) - 1
        fixup = self.norm == "fixup"
        if fixup:
            x = self.biases_in[0](x, feeds=self.convs[0])
        for i, conv in enumerate(self.convs):
            if i == last and offer is not None:
                fusion.offer_tail(x, conv, *offer)
            x = conv(x)
            if self.norm == "bn":
                x = self.bns[i](x)
            if i == last:
                if fixup and tail:
                    x = self.biases_out[i](self.scale(x, after=conv))
            elif fixup:    # b_(i+1)a(relu(b_ib(x))), fused with the next conv's A where possible
                x = fused_relu_bias_input(x, self.biases_out[i], self.biases_in[i + 1], self.convs[i + 1])
            else:
                x = F.relu(x)
        return x

    def identity(self, x):
        if isinstance(self.shortcut, nn.Identity):
            return x
        if self.norm == "fixup":
            return self.shortcut(self.biases_in[0](x))
        return self.shortcut(x)

    def residual(self, x):
        """The residual unit x -> F(x) + shortcut(x), before the block's final ReLU."""
        identity = self.identity(x)
        return self.branch(x) + identity

    def ahead_of(self) -> tuple[float, int] | None:
        """(bias, bits) of this block's first A quantizer, for the block before it to make the codes
        in its tail's pass (exact_tail ``ahead``): a Fixup block on the integer engine whose first
        conv's A is a nearest SQ of at most 8 bits and may be fused; else None."""
        if self.norm != "fixup" or not self.stream_bits or not fusing_allowed():
            return None
        conv = self.convs[0]
        q = getattr(conv, "quant", None)
        if getattr(conv, "engine", None) != "int" or q is None or not q.any:
            return None
        a = q.A
        if not (a.enabled and a.quantizer == "sq" and a.rounding == "nearest" and a.bits <= 8):
            return None
        return float(self.biases_in[0].effective().detach()), a.bits

    def forward(self, x, ahead: "ResidualBlock | None" = None):
        """``ahead``: the block after this one (its first A codes made in this tail's pass)."""
        if self.norm != "fixup":
            return F.relu(self.residual(x))
        bits = self.stream_bits          # a fixed-point stream: x rounded here, the rest exact (stream.py)
        # an identity shortcut: the error sum at x can take its max from the first conv's store
        pair = fusion.ErrorSum() if bits and isinstance(self.shortcut, nn.Identity) and fusing_allowed() else None
        x, x_id = stream_split(x, bits, pair)
        if bits and isinstance(self.shortcut, ShortcutA):     # option A after b_1a, exact (float64)
            sc = self.shortcut
            if fusing_allowed():
                identity = _ExactShortcutAFn.apply(x_id, self.biases_in[0].effective(), sc.stride, sc.pad)
            else:          # the modules one by one (observers, the cost count): the same values
                identity = sc.pad_channels(self.biases_in[0](sc.subsample(x_id).double()))
        elif bits and isinstance(self.shortcut, QConv2d):
            # a projection conv: x + b_1a left to its A quantizer, which forms the sum exactly (in
            # double) on the fly, without a float64 copy of x and of x + b (fused_bias_input)
            identity = self.shortcut(self.biases_in[0](x_id, feeds=self.shortcut))
        else:              # an identity (no copy), or any shortcut outside the fixed-point stream
            identity = self.identity(x_id)
        # y = relu(x_m * scale + b_mb + identity), fused under EOQ; the last conv's store may find
        # the ends of x_m * scale + b_mb + identity (the tail's max pass) as it writes x_m
        offer = None
        if bits and fusing_allowed() and identity.dtype == torch.float32 and getattr(self.convs[-1], "engine", None) == "int":
            offer = (identity, float(self.scale.effective().detach()), float(self.biases_out[-1].effective().detach()))
        nxt = ahead.ahead_of() if isinstance(ahead, ResidualBlock) else None
        return fixup_tail(self.branch(x, tail=False, offer=offer), self.scale, self.biases_out[-1], identity,
                          self.convs[-1], bits, pair, nxt)


class BasicBlock(ResidualBlock):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, shortcut: str = "A"):
        convs = [QConv2d(in_planes, planes, 3, stride=stride, padding=1),
                 QConv2d(planes, planes, 3, padding=1)]
        super().__init__(convs, make_shortcut(shortcut, in_planes, planes, stride, norm), norm)


class Bottleneck(ResidualBlock):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int, norm: str, shortcut: str = "B"):
        out = planes * self.expansion
        convs = [QConv2d(in_planes, planes, 1), QConv2d(planes, planes, 3, stride=stride, padding=1),
                 QConv2d(planes, out, 1)]
        super().__init__(convs, make_shortcut(shortcut, in_planes, out, stride, norm), norm)

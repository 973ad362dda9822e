"""The side channel between fused kernels: what a tensor carries for the layer that consumes it.

Fusing an elementwise op into a neighbour's quantizer means one op hands the next an unfinished
tensor. The hand-over is a mark on the tensor, and every mark lives here (nowhere else reads or
writes these attributes). Each mark names the layer it is for, so a tensor that reaches another
consumer is treated as plain.

``quantized for layer`` (attribute ``_eoq_quantized_for``): the tensor is already on ``layer``'s
grid, do not quantize it again.
    written by  nn.layers.fused_bias_input / fused_relu_bias_input (simulator: A(x + b) and
                A(relu(x + pre) + b) in one kernel), nn.layers._ScaleQuantGradFn and
                nn.fixup_tail._FixupTailFn backward (E(grad * s) in one kernel)
    read by     nn.layers._input_quant (A) and nn.layers._error_quant (E)

``deferred affine for layer`` (attribute ``_eoq_deferred``): the tensor is x, and ``layer``'s
integer-engine quantizer must quantize affine(x) instead, applying the :class:`Affine` on the fly
(no affine(x) tensor is ever built).
    written by  nn.layers.fused_bias_input / fused_relu_bias_input (integer engine: the Fixup
                biases and ReLU in front of a conv) and nn.fixup_tail._FixupTailFn backward
                (integer engine: the Fixup multiplier s on the error)
    read by     engine.intengine._codes

``known max`` (attribute ``_eoq_amax``): max|t| as the quantizers' max pass would find it (a
float, +inf for NaN or Inf), taken by the kernel that wrote t, for any consumer (it is a fact
about t's values, so it names no layer): t's quantizer skips its own max pass. The mark holds t's
version counter too: once anything writes t in place (autograd may add a second gradient into it)
the mark no longer counts.
    written by  nn.fixup_tail.masked_exact_sums and nn.layers._relu_bias_backward (the masked
                errors of the Fixup tail, the stem and the branch's ReLU)
    read by     engine.intengine._codes (E of the conv before them)

``known range`` (attribute ``_eoq_range``): (min t, max t), taken by the kernel that wrote t, with
t's version as for the known max: a quantizer of t + bias or relu(t + pre) + bias needs no max
pass either (quantizers.affine_amax). Views that only pass t on (the stream's split, a deferred
bias) carry both marks over (:func:`carry`).
    written by  nn.fixup_tail.exact_tail (a block's output, rounded to the stream) and
                engine.intengine's direct forward (a conv's output, from its store)
    read by     engine.intengine._codes (A of the next block's first conv, of a branch's next conv)

``backward offered to layer`` (attribute ``_eoq_offer``, a :class:`GradHandoff`): the tensor is
relu(x + pre) + bias or x + bias left to ``layer`` (above), and ``layer``'s input gradient may take
that op's backward along in its store: for the ReLU, mask the gradient with its mask and take the
sums the two biases' gradients need; for the bias, take the gradient's sum. The layer's backward
fills the handoff; the op's backward then uses the gradient as it arrives (no pass of its own),
when it is the very tensor the layer filled.
    written by  nn.layers.fused_relu_bias_input and fused_bias_input (integer engine)
    read by     engine.intengine (the direct kernels' input gradient: csrc/direct.cpp conv_masked,
                conv_sum)
The same mark with no layer (kind "tail"): the output y of a Fixup block tail offers its backward
(mask, sums; nn/fixup_tail.py) to the stream's rounding of y's error at the next block's input
(nn/stream.py, csrc/stream.cpp fx_sum_masked); written by nn.fixup_tail._FixupTailFn, read by
nn.stream._StreamFn.

``tail offered to layer`` (attribute ``_eoq_tail_offer``): the tensor is the input of the last conv
of a Fixup branch, whose output x then meets the block tail relu(x * s + b + identity) (nn/
fixup_tail.py): the conv's forward store may find the ends of t = x * s + b + identity as it writes
x, the max pass of the tail's rounding. Its output then carries them (``_eoq_tail``), for that
identity, s and b only.
    written by  models.blocks.ResidualBlock (offer), engine.intengine's direct forward (result)
    read by     engine.intengine (offer), nn.fixup_tail.exact_tail (result)

``codes ahead`` (attribute ``_eoq_codes``): (bias, bits, codes, lsb) for t: the nearest-rounded SQ
codes of t + bias in ``bits`` bits, made by the kernel that wrote t (the block tail's rounding pass,
for the next block's first conv), so that quantizer needs no pass at all. Carried by views as the
known max is.
    written by  nn.fixup_tail.exact_tail (asked by models.blocks.ResidualBlock: ``ahead``)
    read by     engine.intengine._codes

``error sum`` (attribute ``_eoq_error_sum``, an :class:`ErrorSum`): the tensor is the branch input
of a block whose shortcut is the identity; its error and the identity's meet in the stream's exact
sum FX(e_branch + e_identity) (nn/stream.py). The block's tail backward leaves e_identity in it, the
branch's first conv finds max|e_branch + e_identity| in its input-gradient store (as it writes
e_branch), and the stream's backward rounds the sum without a max pass of its own.
    written by  nn.stream.stream_split (for models.blocks.ResidualBlock)
    read by     nn.layers.fused_bias_input (which hands it to the conv with the bias's offer)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Affine:
    """The elementwise function a deferred tensor still needs: ``mult * x``, or
    ``relu(x + relu_pre) + bias`` (``relu_pre`` None: ``x + bias``). At most one of ``mult`` and
    ``bias`` is set (the kernels take either form, not both)."""

    bias: float | None = None
    relu_pre: float | None = None
    mult: float | None = None


def mark_quantized(t: torch.Tensor, layer) -> torch.Tensor:
    """Mark ``t`` as already quantized for ``layer``; returns ``t``."""
    t._eoq_quantized_for = layer
    return t


def quantized_for(t: torch.Tensor, layer) -> bool:
    """Whether ``t`` was marked as already quantized for ``layer``."""
    return getattr(t, "_eoq_quantized_for", None) is layer


def defer(t: torch.Tensor, layer, affine: Affine) -> torch.Tensor:
    """Mark ``t`` as x whose ``affine`` is left to ``layer``'s quantizer; returns ``t``."""
    t._eoq_deferred = (layer, affine)
    return t


def deferred(t: torch.Tensor, layer) -> Affine | None:
    """The affine ``t`` carries for ``layer``, or None."""
    mark = getattr(t, "_eoq_deferred", None)
    return mark[1] if mark is not None and mark[0] is layer else None


def know_max(t: torch.Tensor, amax: float | None) -> torch.Tensor:
    """Mark ``t`` with its max|t| (see module doc; None: no mark); returns ``t``."""
    if amax is not None:
        t._eoq_amax = (float(amax), t._version)
    return t


def known_max(t: torch.Tensor) -> float | None:
    """max|t| marked by the kernel that wrote ``t``, or None (no mark, or t written since)."""
    mark = getattr(t, "_eoq_amax", None)
    return mark[0] if mark is not None and mark[1] == t._version else None


def know_range(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Mark ``t`` with its (min, max) and so its max|t| (see module doc); returns ``t``."""
    t._eoq_range = (float(lo), float(hi), t._version)
    return know_max(t, max(abs(lo), abs(hi)))


def known_range(t: torch.Tensor) -> tuple[float, float] | None:
    """(min t, max t) marked by the kernel that wrote ``t``, or None (no mark, or t written since)."""
    mark = getattr(t, "_eoq_range", None)
    return mark[:2] if mark is not None and mark[2] == t._version else None


def carry(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Copy ``src``'s known max, range and codes ahead to ``dst``, a view of it with the same values;
    returns ``dst``."""
    r = known_range(src)
    if r is not None:
        know_range(dst, *r)
    else:
        know_max(dst, known_max(src))
    mark = getattr(src, "_eoq_codes", None)
    if mark is not None and mark[4] == src._version:
        dst._eoq_codes = mark
    return dst


def know_codes(t: torch.Tensor, bias: float, bits: int, codes: torch.Tensor, lsb: int) -> torch.Tensor:
    """Mark ``t`` with the nearest SQ codes of t + bias in ``bits`` bits (see module doc); returns ``t``."""
    t._eoq_codes = (float(bias), int(bits), codes, int(lsb), t._version)
    return t


def known_codes(t: torch.Tensor, bias: float, bits: int) -> tuple[torch.Tensor, int] | None:
    """(codes, lsb) of t + bias in ``bits`` bits, nearest, if the kernel that wrote ``t`` made them."""
    mark = getattr(t, "_eoq_codes", None)
    if mark is None or mark[4] != t._version or mark[0] != float(bias) or mark[1] != bits:
        return None
    return mark[2], mark[3]


class GradHandoff:
    """What an op in front of a layer offers the layer's input gradient (see module doc): ``kind``
    "relu" (``live``: the ReLU's mask, bits of eoq/nn/mask.py made from a tensor of ``strides``),
    "sum", or "tail" (``live`` and the tail's input ``x``, offered to the stream's rounding); ``ready``
    once the op's forward found the offer usable. ``result`` is what the consumer leaves:
    (g, sum g, sum grad, max|g|) for "relu", (grad, sum grad) for "sum", (g, sum g, sum g x, max|g|)
    for "tail"."""

    def __init__(self, kind: str):
        self.kind = kind
        self.ready = False
        self.live = self.strides = self.result = self.x = None
        self.error_sum: ErrorSum | None = None      # "sum": the block's error sum, if any

    def take(self, grad: torch.Tensor):
        """The result if ``grad`` is the gradient the layer stored it for (unchanged since), else None.
        The offer ends here: its tensors are let go (they would outlive the op's own saved ones)."""
        r, self.result = self.result, None
        self.live = self.x = self.error_sum = None
        self.ready = False
        if r is None or grad.data_ptr() != r[0].data_ptr() or grad._version != r[-1] \
                or grad.shape != r[0].shape or grad.stride() != r[0].stride():
            return None
        return r[:-1]

    def fill(self, g: torch.Tensor, *sums) -> None:
        self.result = (g, *sums, g._version)


def offer_backward(t: torch.Tensor, layer, handoff: GradHandoff) -> torch.Tensor:
    """Offer ``layer`` the backward of the op in front of it (see module doc); returns ``t``."""
    t._eoq_offer = (layer, handoff)
    return t


def backward_offered(t: torch.Tensor, layer) -> GradHandoff | None:
    """The backward ``t`` offers ``layer``, or None."""
    mark = getattr(t, "_eoq_offer", None)
    return mark[1] if mark is not None and mark[0] is layer and mark[1].ready else None


class ErrorSum:
    """A block's error sum FX(e_branch + e_identity) (see module doc): ``identity`` is e_identity once
    the tail's backward made it; ``fill`` records max|e_branch + e_identity| for the e_branch a conv
    wrote, and ``take`` hands it to the stream's backward when both errors are those tensors."""

    def __init__(self):
        self.identity = self.result = None

    def fill(self, branch: torch.Tensor, amax: float) -> None:
        ident = self.identity
        self.result = (branch, branch._version, ident, ident._version, float(amax))

    def take(self, branch: torch.Tensor, identity: torch.Tensor) -> float | None:
        r, self.result, self.identity = self.result, None, None
        if r is None:
            return None
        b, bv, i, iv, amax = r
        same = (branch.data_ptr() == b.data_ptr() and branch._version == bv and branch.stride() == b.stride()
                and identity.data_ptr() == i.data_ptr() and identity._version == iv
                and identity.stride() == i.stride() and branch.shape == b.shape == identity.shape)
        return amax if same else None


def mark_error_sum(t: torch.Tensor, pair: ErrorSum | None) -> torch.Tensor:
    """Mark a block's branch input with its :class:`ErrorSum` (None: no mark); returns ``t``."""
    if pair is not None:
        t._eoq_error_sum = pair
    return t


def error_sum_of(t: torch.Tensor) -> ErrorSum | None:
    """The :class:`ErrorSum` a branch input carries, or None."""
    return getattr(t, "_eoq_error_sum", None)


def offer_tail(t: torch.Tensor, layer, identity: torch.Tensor, s: float, b: float) -> torch.Tensor:
    """Offer ``layer`` the max pass of the block tail after it (see module doc); returns ``t``."""
    t._eoq_tail_offer = (layer, identity, float(s), float(b))
    return t


def tail_offered(t: torch.Tensor, layer):
    """(identity, s, b) of the tail ``t`` offers ``layer``, or None."""
    mark = getattr(t, "_eoq_tail_offer", None)
    return mark[1:] if mark is not None and mark[0] is layer else None


def know_tail(x: torch.Tensor, identity: torch.Tensor, s: float, b: float, ends: tuple) -> torch.Tensor:
    """Mark a conv's output ``x`` with ``ends`` = (min t, max t, max|t|) of t = x * s + b + identity."""
    x._eoq_tail = (identity.data_ptr(), identity._version, float(s), float(b), tuple(ends), x._version)
    return x


def known_tail(x: torch.Tensor, identity: torch.Tensor, s: float, b: float) -> tuple | None:
    """The ends of x * s + b + identity marked on ``x``, if for these identity, s and b (unchanged)."""
    mark = getattr(x, "_eoq_tail", None)
    if mark is None or mark[5] != x._version or mark[0] != identity.data_ptr() or mark[1] != identity._version \
            or mark[2] != float(s) or mark[3] != float(b):
        return None
    return mark[4]

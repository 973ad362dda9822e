"""Weight gradients kept as int8 codes during a training step's backward (``EOQSGD.packed_gradients``).

An integer-engine layer rounds its weight gradient to G (SQ, at most 8 bits) before autograd hands
it over, so ``.grad`` holds int8 codes times a power of two in a float32 tensor: four bytes per
weight where one holds the same value. While the optimizer packs, a post-accumulate-grad hook
replaces each such ``.grad`` by (int8 codes, exponent) as soon as autograd delivers it, so the
gradients of the layers already done no longer sit in float32 beside the rest of the backward;
the fused update reads the codes (the same values, bit for bit).
"""
from __future__ import annotations

import torch

from .. import kernels
from ..nn.layers import GridParam
from ..quant.quantizers import exact_codes


def layer_quantizes_g(grid: GridParam) -> bool:
    """True for a weight whose layer rounds its gradient to G as SQ of at most 8 bits (the values
    that reach .grad are int8 codes times a power of two)."""
    q = getattr(getattr(grid.owner, "quant", None), "G", None)
    return (not grid.grad_quant.enabled and q is not None and q.enabled and q.quantizer == "sq"
            and q.bits <= 8 and grid.name.endswith("weight"))


def pack_hook(optimizer_ref, p) -> None:
    """post-accumulate-grad hook of an integer-stored weight: a gradient that arrives while the
    weight still holds packed codes (a second backward before ``zero_grad``) is added to their
    values, as autograd accumulates ``.grad``; then, while the optimizer packs and the layer runs
    on the integer engine, p.grad -> int8 codes and exponent."""
    opt = optimizer_ref()
    if opt is None or p.grad is None or id(p) not in opt.grid:
        return
    old = opt.packed.pop(id(p), None)
    if old is not None:
        p.grad.add_(old[0].to(torch.float32).mul_(2.0 ** old[1]))   # old + new: IEEE addition commutes
    if not opt.packing or getattr(opt.grid[id(p)].owner, "engine", None) != "int":
        return                  # the simulator's gradients stay float32: packing would only cost time
    codes, lsb = pack_codes(p.grad)
    if codes is not None:
        opt.packed[id(p)] = (codes, lsb)
        p.grad = None


def pack_codes(g: torch.Tensor) -> tuple[torch.Tensor | None, int]:
    """(int8 codes, lsb) with g = codes * 2^lsb exactly, for values that are at most 8-bit codes
    times a power of two (an SQ8 G): lsb = e - 7 with max|g| < 2^e puts the largest code in
    [64, 127], and a grid 2^lsb_G holding codes <= 127 is never finer. (None, 0) when g is not
    such a tensor (or not finite): it stays float. The compiled kernel (``pack_int8``) does the
    same in two passes; :func:`eoq.quant.quantizers.exact_codes` is its reference."""
    kern = kernels.usable(g)
    if kern is not None:
        codes, lsb, ok = kern.pack_int8(g)
        return (codes, int(lsb)) if ok else (None, 0)
    packed = exact_codes(g, 8)
    return packed if packed is not None else (None, 0)

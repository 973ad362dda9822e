"""apply_quant: a :class:`~eoq.quant.spec.TensorQuant` applied to a tensor, observers told.

The spec (spec.py) is plain data; this is where it acts: SQ with fixed random-bit keys, the
sharded SQ of data-parallel training (global max, global row indices), FQ and CQ, and the
observer notification after each quantization.
"""
from __future__ import annotations

from .. import distributed
from . import quantizers as Q
from .observe import OBSERVERS
from .spec import SpecError, TensorQuant


def apply_quant(q: TensorQuant, x, generator=None, kind: str = "", owner=None, key=None):
    """Quantize ``x`` as ``q`` says (float in, float on the grid out); identity for float kinds.

    ``kind`` (W, A, G, E, U, S, M) and ``owner`` (the module) are passed to attached observers.
    ``key`` fixes the random bits of an SQ quantizer (see eoq.quant.rng) instead of drawing them."""
    if not q.enabled:
        return x
    if key is not None and q.quantizer == "sq":
        out = Q.sq(x, q.bits, q.rounding, generator, key=key)
    elif kind in ("A", "E") and distributed.active():
        if q.quantizer != "sq":
            raise SpecError(f"data-parallel training supports SQ activations and errors, not {q.quantizer!r}")
        out = Q.sq(x, q.bits, q.rounding, generator, sharded=True)
    else:
        out = _quantize(q, x, generator)
    for obs in OBSERVERS:
        obs.after(kind, q, x, out, owner)
    return out


def _quantize(q: TensorQuant, x, generator):
    if q.quantizer == "sq":
        return Q.sq(x, q.bits, q.rounding, generator)
    if q.quantizer == "fq":
        return Q.fq(x, q.bits, q.rounding, generator)
    return Q.cq(x, q.bits, q.cq_c, generator)

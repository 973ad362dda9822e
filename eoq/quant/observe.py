"""Observers of quantization: one hook that analysis tools attach to (error statistics, cost).

Every quantization in training goes through :func:`eoq.quant.apply.apply_quant`, which, while an
observer is attached, calls ``observer.after(kind, q, x, out, owner)`` with the tensor kind (W, A,
G, E, S, M), the quantizer settings, the input and output, and the owning module
(``owner.eoq_name`` is its path in the model). The optimizer reports its updates the same way
(kind U, with ``weight_codes`` and ``weight=(exponent, bits)`` of the stored tensor; kind M, with
``lsb``, the buffer's exponent, and x the exact sum mu v + g + wd w in float64). An observer takes
unknown keywords (``**kw``) so that a new one never breaks it. With no observer attached the cost
is one empty-list check.

An observer that samples (an ``active`` attribute, set in its ``step_begin``) is *listening* only
on the steps it samples: on the others the fused kernels, which hand out no intermediate
tensors, stay on, so an idle observer costs nothing. :func:`listening` is what the fusion
decisions ask.
"""
from __future__ import annotations

import contextlib

OBSERVERS: list = []


def listening() -> bool:
    """Whether an attached observer wants to see the quantized tensors of this step."""
    return any(getattr(o, "active", True) for o in OBSERVERS)


@contextlib.contextmanager
def observing(observer):
    OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        OBSERVERS.remove(observer)

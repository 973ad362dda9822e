"""Observers of quantization: one hook that analysis tools attach to (error statistics, cost).

Every quantization in training goes through :func:`eoq.spec.apply_quant`, which, while an
observer is attached, calls ``observer.before(kind, owner)`` and ``observer.after(kind, q, x, out,
owner)`` with the tensor kind (W, A, G, E, U, S, M), the quantizer settings, the input and output,
and the owning module (``owner.eoq_name`` is its path in the model). With no observer attached the
cost is one empty-list check.
"""
from __future__ import annotations

import contextlib

OBSERVERS: list = []


@contextlib.contextmanager
def observing(observer):
    OBSERVERS.append(observer)
    try:
        yield observer
    finally:
        OBSERVERS.remove(observer)

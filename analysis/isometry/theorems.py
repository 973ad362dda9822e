"""Numerical checks of the BDI composition rules (SPEC section 4), used by the tests and the report.

On independent random matrices with i.i.d. N(0, s^2/n) entries (n = 1024 by default):
    serial    phi(AB (AB)^T)        = phi(A A^T) phi(B B^T)
    parallel  phi((A+B)(A+B)^T)     = phi(A A^T) + phi(B B^T)        (zero-mean, independent)
    residual  phi((I+A)(I+A)^T)     = 1 + phi(A A^T)
    quantization noise: rounding an n-fan-in weight matrix with entries in (-1, 1) to k bits adds
              D = Q(W) - W with phi(D D^T) = n sigma(k)^2 / 12
and on a small network (two random linear conv blocks, exact Jacobians in float64):
    serial    phi(J2 J1 (J2 J1)^T) = phi(J1 J1^T) phi(J2 J2^T)
Each check returns the measured value, the prediction, the relative error and its tolerance
(a few standard deviations of the finite-n fluctuation, stated per check).
"""
from __future__ import annotations

import math

import torch

from eoq.quant.quantizers import round_to_lsb, sigma

from .jacobian import exact


def phi(m: torch.Tensor) -> float:
    """phi(M M^T) = tr(M M^T) / N_out = ||M||_F^2 / rows."""
    return float(m.pow(2).sum() / m.shape[0])


def _row(name, measured, predicted, tol, note=""):
    rel = abs(measured - predicted) / abs(predicted)
    return {"check": name, "measured": measured, "predicted": predicted, "rel_error": rel,
            "tolerance": tol, "passed": rel <= tol, "note": note}


def _gauss(n, s, gen):
    return torch.randn(n, n, generator=gen, dtype=torch.float64) * (s / math.sqrt(n))


def check_serial(n: int = 1024, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    a, b = _gauss(n, 1.3, g), _gauss(n, 0.7, g)
    return _row("serial: phi(AB) = phi(A) phi(B)", phi(a @ b), phi(a) * phi(b), 0.02, f"n={n}")


def check_parallel(n: int = 1024, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    a, b = _gauss(n, 1.0, g), _gauss(n, 0.5, g)
    return _row("parallel: phi(A+B) = phi(A) + phi(B)", phi(a + b), phi(a) + phi(b), 0.02, f"n={n}")


def check_residual(n: int = 1024, seed: int = 2) -> dict:
    g = torch.Generator().manual_seed(seed)
    a = _gauss(n, 0.5, g)
    eye = torch.eye(n, dtype=torch.float64)
    return _row("residual: phi(I+A) = 1 + phi(A)", phi(eye + a), 1 + phi(a), 0.02, f"n={n}")


def check_quant_noise(n: int = 1024, k: int = 8, seed: int = 3) -> dict:
    """Rounding W (entries uniform in (-1, 1)) to k bits adds D = Q(W) - W with phi(D D^T) = n sigma^2/12.

    Tolerance: 5 standard deviations of the estimate (n^2 squared uniform errors averaged: relative
    sd sqrt(4/5)/n)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(n, n, generator=g, dtype=torch.float64) * 2 - 1
    d = round_to_lsb(w, k) - w
    predicted = n * sigma(k) ** 2 / 12
    return _row(f"quantization noise: phi(D) = n sigma({k})^2/12", phi(d), predicted, 5 * math.sqrt(0.8) / n,
                f"n={n}, W uniform in (-1, 1)")


def check_small_network(seed: int = 4) -> dict:
    """Two independent random *linear* residual-free conv blocks on 4x8x8 inputs (n = 256)."""
    g = torch.Generator().manual_seed(seed)
    convs = []
    for _ in range(2):
        c = torch.nn.Conv2d(4, 4, 3, padding=1, bias=False).double()
        with torch.no_grad():
            c.weight.copy_(torch.randn(c.weight.shape, generator=g, dtype=torch.float64) / math.sqrt(36))
        convs.append(c)
    x = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
    p1 = exact(convs[0], x).phi1
    p2 = exact(convs[1], convs[0](x).detach()).phi1
    both = exact(lambda v: convs[1](convs[0](v)), x).phi1
    return _row("serial on a small conv network", both, p1 * p2, 0.10,
                "n=256, two linear convs; padding borders break exact freeness")


def all_checks() -> list[dict]:
    """The numerical checks of the isometry theorems (serial, parallel, residual composition,
    quantization noise, a small network), each a row with measured, predicted, relative error,
    tolerance and whether it passed."""
    return [check_serial(), check_parallel(), check_residual(), check_quant_noise(), check_small_network()]


def table(rows: list[dict]) -> str:
    """The rows of :func:`all_checks` as a markdown table."""
    lines = ["| check | measured | predicted | rel. error | tolerance | passed | note |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['check']} | {r['measured']:.6g} | {r['predicted']:.6g} | {r['rel_error']:.2e} | "
                     f"{r['tolerance']:.2e} | {'yes' if r['passed'] else 'NO'} | {r['note']} |")
    return "\n".join(lines)

"""Jacobian spectra of a block f: x -> y, per input sample (SPEC section 4).

For one sample the block Jacobian J is N_out x N_in and A = J J^T. The Block-Dynamical-Isometry
quantities are the normalized traces
    phi1 = phi(J J^T)      = E[tr A] / N_out
    phi2 = phi((J J^T)^2)  = E[tr A^2] / N_out,      variance  = phi2 - phi1^2
with E over input samples (and probes). Three estimators, chosen by ``estimate(method=...)``:
  - "exact": J from torch.func.jacrev (optionally float64), its singular values; small blocks only.
  - "hutchinson": tr A = E_v ||J^T v||^2 and tr A^2 = E_v ||J J^T v||^2 for Rademacher v (one
    vector-Jacobian and one Jacobian-vector product per probe), batched over samples x probes; 95%
    confidence intervals from the spread of the per-(sample, probe) estimates. Exact for J = I.
  - "slq": stochastic Lanczos quadrature of A's spectral density (nodes, weights) from the same
    matrix-free products, for blocks too large to materialise; its moments give phi1, phi2.
``"auto"`` picks exact for N_in * N_out <= 2^24 and Hutchinson otherwise, and says which it used.
Blocks must treat samples independently (eval-mode BN; see isometry.freeze_batchnorm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import stats
from scipy.sparse import linalg as sparse_linalg

from eoq.quant.formats import Choice
from eoq.training.table import RowView


class JacobianMethod(Choice):
    """How phi(JJ^T) and phi((JJ^T)^2) of a block are estimated."""

    AUTO = "auto"               # exact when J has at most 2^24 entries, else hutchinson
    EXACT = "exact"             # J materialised (torch.func.jacrev), its singular values in float64
    HUTCHINSON = "hutchinson"   # matrix-free: Rademacher probes through VJPs and JVPs
    SLQ = "slq"                 # stochastic Lanczos quadrature: moments and the spectral density


METHODS = JacobianMethod.values()


class JacobianError(ValueError):
    """A Jacobian estimate that cannot be made: a non-finite network output or Jacobian-vector
    product, or arguments the estimators refuse (one line, the cause named)."""


@dataclass
class PhiEstimate(RowView):
    """phi1 = phi(JJ^T), phi2 = phi((JJ^T)^2) with 95% half-widths; var = phi2 - phi1^2."""

    phi1: float
    phi1_ci: float
    phi2: float
    phi2_ci: float
    n_in: int
    n_out: int
    method: str
    samples: int
    probes: int = 0
    eigenvalues: np.ndarray | None = field(default=None, repr=False)   # exact: of J J^T, per sample
    density: tuple | None = field(default=None, repr=False)           # slq: (nodes, weights)

    @property
    def var(self) -> float:
        return self.phi2 - self.phi1 ** 2


def _check_finite(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        raise JacobianError(f"{what} holds NaN or Inf: the block's input or output is not finite")


def _mean_ci(values: torch.Tensor) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval: Student's t with n - 1 degrees of
    freedom (a handful of samples is common here; t -> 1.96 for many)."""
    v = values.double()
    n = v.numel()
    if n < 2:
        return float(v.mean()), float("inf")
    return float(v.mean()), float(stats.t.ppf(0.975, n - 1)) * float(v.std()) / math.sqrt(n)


# method="exact" materialises J per sample: refused above this many entries (512 MiB in float64)
EXACT_MAX_ENTRIES = 2 ** 26


def exact(f, xs: torch.Tensor, dtype: torch.dtype | None = None) -> PhiEstimate:
    """Dense Jacobian per sample (xs: a batch of inputs), its normalized traces and spectrum.

    ``dtype`` casts the inputs (float64 needs a block whose parameters are float64 too:
    ``copy.deepcopy(module).double()``)."""
    dtype = dtype or xs.dtype
    with torch.no_grad():
        n_out = f(xs[:1].to(dtype))[0].numel()
    entries = n_out * xs[0].numel()
    if entries > EXACT_MAX_ENTRIES:
        raise JacobianError(f"method='exact' would materialise a {n_out} x {xs[0].numel()} Jacobian per sample "
                            f"({entries * 8 / 2 ** 30:.1f} GiB in float64, x {len(xs)} samples): use 'hutchinson' or "
                            "'slq', which never build it")
    phis1, phis2, eigs = [], [], []
    for x in xs:
        x = x.unsqueeze(0).to(dtype)
        shape = x.shape

        def flat(v):
            return f(v.reshape(shape)).reshape(-1)

        J = torch.func.jacrev(flat)(x.reshape(-1)).detach()
        _check_finite(J, "the Jacobian")
        n_out, n_in = J.shape
        sv = torch.linalg.svdvals(J)
        ev = sv.pow(2)                                    # nonzero eigenvalues of J J^T
        phis1.append(ev.sum() / n_out)
        phis2.append(ev.pow(2).sum() / n_out)
        eigs.append(torch.cat([ev, ev.new_zeros(max(n_out - ev.numel(), 0))]).cpu().numpy())
    p1, c1 = _mean_ci(torch.stack(phis1))
    p2, c2 = _mean_ci(torch.stack(phis2))
    if len(xs) == 1:
        c1 = c2 = 0.0                                     # exact for the one sample
    return PhiEstimate(p1, c1, p2, c2, n_in, n_out, "exact", len(xs), eigenvalues=np.stack(eigs))


def _vjp_jvp(f, X: torch.Tensor, V: torch.Tensor):
    """(J^T v, J J^T v) per sample of a batch, from one VJP and one JVP."""
    X = X.detach().requires_grad_(True)
    with torch.enable_grad():
        Y = f(X)
        (u,) = torch.autograd.grad(Y, X, V)
    _, w = torch.func.jvp(f, (X.detach(),), (u.detach(),))
    return u.detach(), w.detach()


def rademacher(shape, generator, dtype=torch.float32) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=generator).to(dtype).mul_(2).sub_(1)


def hutchinson_terms(f, xs: torch.Tensor, probes: int = 1, generator: torch.Generator | None = None):
    """Per (probe, sample) estimates ||J^T v||^2 / N_out and ||J J^T v||^2 / N_out, and (N_in, N_out)."""
    if probes < 1:
        raise JacobianError("probes must be >= 1")
    _check_finite(xs, "the block input")
    gen = generator or torch.Generator().manual_seed(0)
    X = xs.repeat(probes, *([1] * (xs.dim() - 1)))
    with torch.no_grad():
        y0 = f(xs[:1])
    n_out, n_in = y0[0].numel(), xs[0].numel()
    V = rademacher((X.shape[0], *y0.shape[1:]), gen, xs.dtype)
    u, w = _vjp_jvp(f, X, V)
    _check_finite(u, "J^T v")
    return u.flatten(1).pow(2).sum(1) / n_out, w.flatten(1).pow(2).sum(1) / n_out, (n_in, n_out)


def from_terms(t1: torch.Tensor, t2: torch.Tensor, n_in: int, n_out: int, samples: int) -> PhiEstimate:
    p1, c1 = _mean_ci(t1)
    p2, c2 = _mean_ci(t2)
    return PhiEstimate(p1, c1, p2, c2, n_in, n_out, "hutchinson", samples, len(t1) // max(samples, 1))


def hutchinson(f, xs: torch.Tensor, probes: int = 1, generator: torch.Generator | None = None) -> PhiEstimate:
    """Matrix-free phi1/phi2 from ||J^T v||^2 and ||J J^T v||^2, batched over samples x probes."""
    t1, t2, (n_in, n_out) = hutchinson_terms(f, xs, probes, generator)
    return from_terms(t1, t2, n_in, n_out, len(xs))


def slq(f, x: torch.Tensor, probes: int = 8, steps: int = 40, generator: torch.Generator | None = None) -> PhiEstimate:
    """Spectral density of A = J J^T for one sample by stochastic Lanczos quadrature.

    For a unit probe v, v^T g(A) v ~ sum_i tau_i^2 g(theta_i) with (theta_i, tau_i) the eigenvalues and
    first eigenvector components of the Lanczos tridiagonal T_m; averaging over probes gives
    tr g(A) / N_out. All probes run in one batch; full reorthogonalisation in float64."""
    gen = generator or torch.Generator().manual_seed(0)
    x = x.unsqueeze(0) if x.dim() == 3 else x[:1]
    _check_finite(x, "the block input")
    X = x.repeat(probes, *([1] * (x.dim() - 1)))
    with torch.no_grad():
        out_shape = f(x).shape[1:]
    n = int(np.prod(out_shape))
    m = min(steps, n)

    def matvec(Vd: torch.Tensor) -> torch.Tensor:
        V = Vd.to(x.dtype).reshape(probes, *out_shape)
        _, w = _vjp_jvp(f, X, V)
        return w.reshape(probes, n).double()

    Q = torch.zeros(m + 1, probes, n, dtype=torch.float64)
    v = rademacher((probes, n), gen, torch.float64)
    Q[0] = v / v.norm(dim=1, keepdim=True)
    alpha = torch.zeros(probes, m, dtype=torch.float64)
    beta = torch.zeros(probes, m, dtype=torch.float64)
    k_used = m
    for k in range(m):
        w = matvec(Q[k])
        alpha[:, k] = (w * Q[k]).sum(1)
        w = w - alpha[:, k, None] * Q[k] - (beta[:, k - 1, None] * Q[k - 1] if k > 0 else 0)
        coef = torch.einsum("kpn,pn->kp", Q[:k + 1], w)                 # full reorthogonalisation
        w = w - torch.einsum("kp,kpn->pn", coef, Q[:k + 1])
        beta[:, k] = w.norm(dim=1)
        if float(beta[:, k].min()) < 1e-10 * max(float(alpha[:, : k + 1].abs().max()), 1e-300):
            k_used = k + 1                                             # invariant subspace found
            break
        Q[k + 1] = w / beta[:, k, None]
    nodes, weights = [], []
    for p in range(probes):
        T = torch.diag(alpha[p, :k_used]) + torch.diag(beta[p, :k_used - 1], 1) + torch.diag(beta[p, :k_used - 1], -1)
        theta, S = torch.linalg.eigh(T)
        nodes.append(theta)
        weights.append(S[0].pow(2))
    nodes_t, weights_t = torch.stack(nodes), torch.stack(weights)
    m1 = (weights_t * nodes_t).sum(1)
    m2 = (weights_t * nodes_t.pow(2)).sum(1)
    p1, c1 = _mean_ci(m1)
    p2, c2 = _mean_ci(m2)
    density = (nodes_t.flatten().numpy(), (weights_t.flatten() / probes).numpy())
    return PhiEstimate(p1, c1, p2, c2, x[0].numel(), n, "slq", 1, probes, density=density)


def estimate(f, xs: torch.Tensor, method: JacobianMethod | str = JacobianMethod.AUTO, probes: int = 1,
             generator: torch.Generator | None = None, dtype: torch.dtype | None = None) -> PhiEstimate:
    """phi1/phi2 of block ``f`` over the samples ``xs`` by the chosen method (see module docs)."""
    method = JacobianMethod.parse(method, JacobianError, "method")
    try:
        if method is JacobianMethod.AUTO:
            with torch.no_grad():
                n_out = f(xs[:1])[0].numel()
            method = JacobianMethod.EXACT if n_out * xs[0].numel() <= 2 ** 24 else JacobianMethod.HUTCHINSON
        if method is JacobianMethod.EXACT:
            return exact(f, xs, dtype)
        if method is JacobianMethod.HUTCHINSON:
            return hutchinson(f, xs, probes, generator)
        return slq(f, xs[0], probes=max(probes, 4), generator=generator)
    except RuntimeError as err:
        if "setup_context" in str(err) or "functorch" in str(err):
            raise JacobianError(QUANTIZED_BLOCK) from None
        raise


QUANTIZED_BLOCK = ("this block quantizes (its fused autograd functions have no forward-mode derivative): measure "
                   "its float Jacobian on the quantized weights inside `with analysis.quantization_off(model):`, "
                   "or the quantized backward with analysis.quantized_backward_gains")


@dataclass(frozen=True)
class SingularValues(RowView):
    """The extreme singular values of one sample's block Jacobian and its condition number."""

    largest: float
    smallest: float

    @property
    def condition(self) -> float:
        return self.largest / self.smallest if self.smallest > 0 else math.inf


def extreme_singular_values(f, x: torch.Tensor, tol: float = 1e-6) -> SingularValues:
    """sigma_max and sigma_min of J = df/dx at one sample ``x`` (batch of one), matrix-free: SciPy's
    ``svds`` (ARPACK) on a LinearOperator whose matvec is a Jacobian-vector product and whose
    rmatvec is a vector-Jacobian product, so J is never built. For a block with fewer outputs
    than inputs sigma_min is that of the N_out nonzero ones (J J^T is what BDI looks at)."""
    x = (x.unsqueeze(0) if x.dim() == 3 else x[:1]).detach()
    _check_finite(x, "the block input")
    with torch.no_grad():
        out_shape = f(x).shape
    n_out, n_in = int(np.prod(out_shape[1:])), x[0].numel()

    def jv(v):
        _, w = torch.func.jvp(f, (x,), (torch.as_tensor(v, dtype=x.dtype).reshape(x.shape),))
        return w.detach().reshape(-1).double().numpy()

    def jtu(u):
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(f(xr), xr, torch.as_tensor(u, dtype=x.dtype).reshape(out_shape))
        return g.detach().reshape(-1).double().numpy()

    op = sparse_linalg.LinearOperator((n_out, n_in), matvec=jv, rmatvec=jtu, dtype=np.float64)
    k_small = min(n_out, n_in)
    try:
        big = sparse_linalg.svds(op, k=1, which="LM", tol=tol, return_singular_vectors=False,
                                 random_state=0)[0]
        if k_small == 1:
            small = big
        else:
            small = sparse_linalg.svds(op, k=1, which="SM", tol=tol, return_singular_vectors=False,
                                       random_state=0)[0]
    except RuntimeError as err:
        if "setup_context" in str(err) or "functorch" in str(err):
            raise JacobianError(QUANTIZED_BLOCK) from None
        raise
    return SingularValues(float(big), float(small))


def broadened_density(nodes: np.ndarray, weights: np.ndarray, sigma: float = 0.05, points: int = 400,
                      floor: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """SLQ's (nodes, weights) as a smooth spectral density on a log10 eigenvalue axis, the way
    Ghorbani et al. (2019) and PyHessian draw it: each node a Gaussian of width ``sigma`` (in
    decades) carrying its weight. Returns (eigenvalues, density per decade); the density
    integrates to the total weight, and its moments in eigenvalue approach phi1, phi2 as sigma ->
    0. Nodes below ``floor`` (zero eigenvalues) are drawn at the floor."""
    t = np.log10(np.maximum(np.asarray(nodes, float), floor))
    grid = np.linspace(t.min() - 4 * sigma, t.max() + 4 * sigma, points)
    dens = (np.asarray(weights, float)[:, None] * stats.norm.pdf(grid[None, :], t[:, None], sigma)).sum(0)
    return 10.0 ** grid, dens

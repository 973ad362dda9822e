"""Block Dynamical Isometry of eoq ResNets: per-block phi, theory beside measurement (SPEC section 4).

The network is read as a serial chain: the stem, the residual blocks x -> relu(u(x)), the head.
Each residual block is also measured without its final ReLU, as the residual unit
u(x) = F(x) + shortcut(x) whose Jacobian is J = J_shortcut + J_F. For each:
    phi1 = phi(J J^T), var = phi((J J^T)^2) - phi1^2          (analysis/isometry/jacobian.py)
and for residual units the theory's parallel rule beside the measurement:
    predicted phi1 = phi(shortcut) + omega,  omega = phi(J_F J_F^T) of the branch alone
(phi(shortcut) = 1 for identity shortcuts). End to end, the serial rule predicts the product of the
blocks' phi1 (``serial_product``); ``end_to_end`` measures the composed Jacobian directly. The
rule assumes independent blocks; the ReLU masks on a post-activation ResNet's identity path are
strongly correlated from block to block, which the comparison shows.
Fixup at init: every branch is zero, so every residual unit is exactly the identity (phi1 = 1,
var = 0); plain He init ('none') gives omega ~ 1 and a product that grows like 2^L.

BN is measured with statistics frozen from the analysed images (each sample's Jacobian then treats
the normalisation constants as fixed), and quantized (EOQ) models with their 8-bit weights and
straight-through activations: the forward Jacobian of a rounding step is zero almost everywhere, so
what matters for training is the effective backward operator, measured by
``quantized_backward_gains`` with the real error quantization on.
"""
from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from eoq.models import ResidualBlock
from eoq.nn.batchnorm import QBatchNorm2d
from eoq.nn.layers import QConv2d, QLinear
from eoq.quant.spec import LayerQuant
from eoq.training.table import RowView, Table

from .jacobian import JacobianError, PhiEstimate, estimate


def freeze_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """A copy of ``model`` in eval mode whose BN layers hold the batch statistics of ``images``."""
    model = copy.deepcopy(model)
    bns = [m for m in model.modules() if isinstance(m, QBatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None            # cumulative average = this batch's statistics
    if bns:
        model.train()
        with torch.no_grad(), quantization_off(model):
            model(images)
    return model.eval()


@contextlib.contextmanager
def quantization_off(model: nn.Module):
    """Run quantized layers as their float equivalents on the stored (8-bit) weights, and the
    residual stream in float32 (no fixed-point stream, eoq/nn/stream.py)."""
    saved, streams = {}, {}
    for m in model.modules():
        if isinstance(m, (QConv2d, QLinear)):
            saved[m] = m.quant
            m.quant = LayerQuant()
        if getattr(m, "stream_bits", None) is not None:
            streams[m] = m.stream_bits
            m.stream_bits = None
    try:
        yield model
    finally:
        for m, q in saved.items():
            m.quant = q
        for m, bits in streams.items():
            m.stream_bits = bits


def chain(model) -> list[tuple[str, str, object]]:
    """(name, kind, function) of every block in order: stem, residual blocks, head."""
    names = {id(m): n for n, m in model.named_modules()}
    return ([("stem", "stem", model.stem)] + [(names[id(b)], "block", b) for b in model.blocks()]
            + [("head", "head", model.head)])


def chain_inputs(seq, images) -> list:
    """The input of every function of ``seq`` when ``images`` run through the chain."""
    xs, x = [], images
    with torch.no_grad():
        for _, _, fn in seq:
            xs.append(x)
            x = fn(x)
    return xs


def _shortcut_fn(block: ResidualBlock):
    if isinstance(block.shortcut, nn.Identity):
        return None
    if block.norm == "fixup":
        return lambda x: block.shortcut(block.biases_in[0](x))
    return block.shortcut


@dataclass(frozen=True)
class BlockPhi(RowView):
    """phi of one block's Jacobian (SPEC section 4): phi1 = phi(JJ^T) with its 95% half-width,
    phi2 = phi((JJ^T)^2), var = phi2 - phi1^2. A residual unit (kind "residual") also has the
    branch's omega, the shortcut's phi and the prediction phi_shortcut + omega; nan elsewhere."""

    block: str
    kind: str                 # stem, block (the whole block), residual (its residual unit), head
    phi1: float
    phi1_ci: float
    phi2: float
    var: float
    n_in: int
    n_out: int
    method: str
    omega: float = math.nan
    omega_ci: float = math.nan
    phi_shortcut: float = math.nan
    predicted_phi1: float = math.nan


@dataclass(frozen=True)
class BackwardGain(RowView):
    """Squared gradient-norm gain ||dL/dx_in||^2 / ||dL/dx_out||^2 of one residual block, with
    the float backward and the quantized one (E quantized at every layer)."""

    block: str
    gain_float: float
    gain_quantized: float


def measure_blocks(model: nn.Module, images: torch.Tensor, method: str = "hutchinson", probes: int = 1,
                   theory: bool = True, kinds=("stem", "block", "residual", "head"), seed: int = 0) -> Table:
    """A :class:`BlockPhi` per block (and per residual unit), in the order of the network."""
    if not torch.isfinite(images).all():
        raise JacobianError("the input images hold NaN or Inf")
    model = freeze_batchnorm(model, images)
    gen = torch.Generator().manual_seed(seed)
    names = {id(m): n for n, m in model.named_modules()}
    blocks = {names[id(b)]: b for b in model.blocks()}
    rows = []
    with quantization_off(model):
        seq = chain(model)
        for (name, kind, fn), x in zip(seq, chain_inputs(seq, images)):
            todo = [(name, kind, fn)]
            if kind == "block":
                todo.append((name, "residual", blocks[name].residual))
            for bname, bkind, bfn in todo:
                if bkind not in kinds:
                    continue
                est = estimate(bfn, x, method, probes, gen)
                row = {"block": bname, "kind": bkind, "phi1": est.phi1, "phi1_ci": est.phi1_ci,
                       "phi2": est.phi2, "var": est.var, "n_in": est.n_in, "n_out": est.n_out,
                       "method": str(est.method)}
                if bkind == "residual" and theory:
                    block = blocks[bname]
                    omega = estimate(block.branch, x, method, probes, gen)
                    sc = _shortcut_fn(block)
                    phi_sc = 1.0 if sc is None else estimate(sc, x, method, probes, gen).phi1
                    row.update(omega=omega.phi1, omega_ci=omega.phi1_ci, phi_shortcut=phi_sc,
                               predicted_phi1=phi_sc + omega.phi1)
                rows.append(BlockPhi(**row))
    return Table(rows)


def serial_product(rows: list[dict], kinds=("block",)) -> float:
    """The serial rule: phi of a chain of independent blocks is the product of their phi1."""
    p = 1.0
    for r in rows:
        if r["kind"] in kinds:
            p *= r["phi1"]
    return p


def end_to_end(model: nn.Module, images: torch.Tensor, probes: int = 1, seed: int = 0) -> PhiEstimate:
    """phi1 of the composed Jacobian from the stem output to the last block output, measured directly."""
    model = freeze_batchnorm(model, images)
    with quantization_off(model), torch.no_grad():
        x = model.stem(images)
    blocks = model.blocks()

    def body(h):
        for b in blocks:
            h = b(h)
        return h

    with quantization_off(model):
        return estimate(body, x, "hutchinson", probes, torch.Generator().manual_seed(seed))


def quantized_backward_gains(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             seed: int = 0) -> Table:
    """Per residual block, the squared gradient-norm gain ||dL/dx_in||^2 / ||dL/dx_out||^2 of the real
    backward with quantization on (E quantized at every layer) and of the float backward, on the
    same weights and inputs. In training mode (BN uses batch statistics), as during training."""
    results = {}
    for mode in ("float", "quantized"):
        net = copy.deepcopy(model).train()
        gen = torch.Generator().manual_seed(seed)
        for m in net.modules():
            if hasattr(m, "generator"):
                m.generator = gen
        norms = {}
        handles = []

        def hook(block_name):
            def fwd(module, inp, out):
                def put(key, g):
                    norms.setdefault(block_name, {})[key] = g.pow(2).sum().item()
                inp[0].register_hook(lambda g: put("in", g))
                out.register_hook(lambda g: put("out", g))
            return fwd

        names = {id(m): n for n, m in net.named_modules()}
        for b in net.blocks():
            handles.append(b.register_forward_hook(hook(names[id(b)])))
        ctx = quantization_off(net) if mode == "float" else contextlib.nullcontext()
        x = images.clone().requires_grad_(True)
        with ctx:
            F.cross_entropy(net(x), labels).backward()
        for h in handles:
            h.remove()
        results[mode] = {k: v["in"] / max(v["out"], 1e-300) for k, v in norms.items()}
    return Table(BackwardGain(k, results["float"][k], results["quantized"].get(k, float("nan")))
                 for k in results["float"])

"""Golden vectors: every integer tensor of a few integer-engine training steps, for hardware teams.

``eoq golden --model resnet20 --batch-size 8 --steps 2 --out DIR`` runs ``steps`` SGD steps of a
Fixup ResNet under the ``eoq`` preset on ``--engine int`` and writes ``DIR/golden.npz`` (one array
per tensor) and ``DIR/manifest.json``: for each tensor, in the order the step computes it, its
name, shape, dtype and exponent (value = codes * 2^exponent; null for the few float32 tensors),
the op that made it and what it is. Recorded per step ``s`` (names ``s<s>/...``):

    inputs       input codes (the first conv's A), labels, every stored tensor's codes and exponent
                 (weights, the classifier bias, the Fixup scalars), the momentum buffers (codes,
                 exponent), each tensor's fixed-point learning rate (L, shift), the random-bit keys
    forward      per layer: A codes, the integer accumulator (int32/int64 GEMM sums); the 16-bit
                 stream at every block boundary; the logits (float32)
    loss         dL/dlogits (float32): the one float operation of the step (softmax)
    backward     per layer: E codes, the input-gradient accumulator, the weight-gradient
                 accumulator, G codes; the 16-bit error stream at every block boundary; the
                 Fixup scalars' and classifier bias's gradients (float32, exact sums rounded once)
    update       per stored tensor: G of the optimizer (bias, scalars), momentum codes M, update
                 codes U, the new codes and exponent

The steps run the torch reference path (``kernels.disabled()``, every module on its own): every
random-bit key is then drawn in Python, so it can be recorded beside the quantizer that used it,
and the tests check that the compiled kernels give the same weights. A NumPy-only reference
(:mod:`eoq.reference`) recomputes every tensor from the inputs.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import json
import zipfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from .. import kernels
from ..engine import intengine
from ..models import blocks
from ..nn import stream
from ..nn.layers import QConv2d, QLinear
from ..quant import quantizers as Q
from ..quant import rng
from ..quant.observe import observing
from .atomic import atomic_write
from .loss import step_loss
from . import int_update
from .optimizer import EOQSGD, fixed_point, fixed_weight_decay
from .loop import train_step
from .setup import setup


@dataclass
class Golden:
    """Recorded tensors (name -> array) and their manifest entries, in op order."""

    arrays: dict = field(default_factory=dict)
    entries: list = field(default_factory=list)

    layers: dict = field(default_factory=dict)

    def put(self, name: str, value, exponent=None, op: str = "", what: str = "", bits: int | None = None) -> None:
        """Record a tensor: ``bits`` is its width (signed integer codes of that many bits; None for
        float32 tensors, JSON and keys), ``dtype`` the container it is stored in."""
        if name in self.arrays:
            raise RuntimeError(f"golden: tensor {name!r} recorded twice")
        arr = value.detach().cpu().numpy().copy() if isinstance(value, torch.Tensor) else np.array(value)
        if bits is None and arr.dtype.kind in "iu" and not name.endswith((".key", "keys", ".lr", "labels")):
            raise RuntimeError(f"golden: integer tensor {name!r} recorded without its width")
        self.arrays[name] = arr
        reached = None
        if bits is not None:        # the widest value this tensor holds, as signed bits (declared: bits)
            reached = int(np.abs(arr.astype(np.int64)).max()).bit_length() + 1 if arr.size else 1
            if reached > bits:
                raise RuntimeError(f"golden: {name} holds a value of {reached} bits, wider than its declared {bits}")
        self.entries.append({"name": name, "shape": list(arr.shape), "dtype": str(arr.dtype), "bits": bits,
                             "reached": reached, "exponent": None if exponent is None else int(exponent),
                             "op": op, "what": what})


def _small_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    return codes.to(Q.code_dtype(bits))


def _on_grid(values: torch.Tensor, exponent: int) -> torch.Tensor:
    """The integers values / 2^exponent (exact for values on that grid), as float64."""
    return (values.detach().double() * 2.0 ** -exponent).round()


def _exact_codes(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Exact float64 values as (int64 codes, exponent) on their own grid: the exponent of the lowest
    set bit among them (0 for all zeros), so a value is recorded in one canonical form."""
    v = x.detach().double().numpy()
    nz = v[v != 0]
    if not nz.size:
        return torch.zeros(x.shape, dtype=torch.int64), 0
    m, ex = np.frexp(nz)
    mant = np.abs(np.ldexp(m, 53)).astype(np.int64)                  # exact: 53-bit integer mantissas
    low = (mant & -mant).astype(np.float64)                          # lowest set bit
    e = int((ex - 53 + np.log2(low).astype(np.int64)).min())
    codes = np.ldexp(v, -e)
    if np.abs(codes).max() >= 2.0 ** 62:
        raise RuntimeError("golden: an exact value spans more than 62 bits")
    return torch.from_numpy(codes.astype(np.int64)), e


def _sq_lsb(x: torch.Tensor, bits: int) -> int:
    """SQ's LSB exponent for the (exact) values x."""
    return Q.shift_exponent(x.detach()) + 1 - bits


class Recorder:
    """Observer (eoq.quant.observe) and wrappers that record the tensors of a step into a Golden."""

    active = True

    def __init__(self, golden: Golden, model: nn.Module):
        self.g, self.step, self.phase = golden, 0, "forward"
        self.names = {m: name for name, m in model.named_modules()}
        self.pending_codes: list = []   # exact (codes, lsb) from the integer engine, claimed by the next notify
        self.pending_keys: list = []
        self.last = None                # the module of the latest notify
        self.exps: dict = {}            # (module, kind) -> LSB exponent of its latest A / E
        self.param = None               # the stored tensor the optimizer is updating
        self.depth = 0

    def name(self, suffix: str) -> str:
        return f"s{self.step}/{suffix}"

    # --- observer -------------------------------------------------------------------------------
    def after(self, kind, q, x, out, owner, **kw):
        if self.param is not None:            # the optimizer (G, M, U of one stored tensor)
            self._optimizer_tensor(kind, q, x, out, **kw)
            return
        mod = self.names.get(owner, "?")
        if self.pending_codes:
            codes, lsb = self.pending_codes.pop()
        else:
            lsb = _sq_lsb(x, q.bits)
            codes = _on_grid(out, lsb)
        self.last = owner
        self.exps[(owner, kind)] = lsb
        self._claim_key(f"{mod}.{kind}")
        what = {"A": "activation codes, SQ 8-bit nearest of the layer input",
                "E": "error codes, SQ 8-bit stochastic of dL/d(layer output)",
                "G": "weight-gradient codes, SQ 8-bit stochastic of the weight-gradient accumulator"}.get(kind, kind)
        if kind == "G" and isinstance(owner, QConv2d):
            codes = codes.reshape(owner.weight.shape)
        self.g.put(self.name(f"{mod}.{kind}"), _small_codes(codes, q.bits), lsb, f"SQ{q.bits} {q.rounding}", what,
                   q.bits)

    def _claim_key(self, label: str) -> None:
        if self.pending_keys:
            self.g.put(self.name(f"{label}.key"), np.array(self.pending_keys.pop(), dtype=np.uint32), None,
                       "key", "random-bit key (k0, k1) of this quantizer (eoq.quant.rng)")
        if self.pending_keys:
            raise RuntimeError(f"golden: unclaimed random-bit keys before {label}")

    def _optimizer_tensor(self, kind, q, x, out, **kw):
        p = self.param
        if kind == "U":
            self.g.put(self.name(f"{p}.U"), out.detach().to(torch.int8), kw["weight"][0],
                       f"SR, clamp +-{Q.max_code(q.bits)}",
                       "update codes in units of the weight LSB (exponent: the weight's, before this step)", q.bits)
            return
        lsb = kw["lsb"] if "lsb" in kw else _sq_lsb(x, q.bits)
        codes = _small_codes(_on_grid(out, lsb), q.bits)
        what = {"G": "the gradient quantized by the optimizer (SQ 8-bit stochastic)",
                "M": f"momentum buffer codes after this step (SQ {q.bits}-bit stochastic of the exact sum "
                     "mu v + g + wd w)"}[kind]
        self.g.put(self.name(f"{p}.{kind}"), codes, lsb, f"SQ{q.bits} {q.rounding}", what, q.bits)

    # --- wrapped engine functions ---------------------------------------------------------------
    @contextmanager
    def wrapped(self):
        """Patch the integer engine, the stream and the key draws to report to this recorder."""
        rec = self
        originals = {}

        def patch(module, attr, make):
            originals[(module, attr)] = getattr(module, attr)
            setattr(module, attr, make(getattr(module, attr)))

        def codes_of(fn):
            def wrapper(*a, **k):
                codes, lsb = fn(*a, **k)
                rec.pending_codes.append((codes, int(lsb)))
                return codes, lsb
            return wrapper

        def accumulator(label, kind):
            def make(fn):
                def wrapper(*a, **k):
                    rec.depth += 1
                    try:
                        out = fn(*a, **k)
                    finally:
                        rec.depth -= 1
                    acc = out[0] if isinstance(out, tuple) else out
                    if rec.depth == 0 and label != "skip":
                        rec._accumulator(acc, label, kind)
                    return out
                return wrapper
            return make

        def keys(fn):
            def wrapper(generator, *shape):
                k = fn(generator, *shape)
                if not shape:
                    rec.pending_keys.append(k.tolist())
                else:
                    rec.opt_keys = k.clone()
                return k
            return wrapper

        def gradient(fn):
            def wrapper(acc, exponent, layer, conv_shape=None):
                a = acc.to(torch.int64)
                if conv_shape is not None:
                    cout, cin, kh, kw = conv_shape
                    a = a.view(cout, kh, kw, cin).permute(0, 3, 1, 2)
                rec.g.put(rec.name(f"{rec.names[layer]}.dW_acc"), a, exponent, "E^T @ A (int64)",
                          "weight-gradient accumulator: integer sum of E x A products (int32 partial sums "
                          "added in int64: positions x 127^2 may pass 2^31)", 64)
                return fn(acc, exponent, layer, conv_shape)
            return wrapper

        def fx(fn, summed):
            def wrapper(*a, **k):
                out = fn(*a, **k)
                x = a[0].double() + a[1].double() if summed else a[0]
                bits = a[2] if summed else a[1]
                amax = float(x.detach().abs().max()) if x.numel() else 0.0
                e = Q.fixed_exponent(amax, bits)
                backward = summed or k.get("backward", False)
                where = rec.names.get(rec.last, "?")
                label = f"{where}.{'dstream' if backward else 'stream'}"
                rec.g.put(rec.name(label), _on_grid(out, e).to(torch.int16), e,
                          "FX16 of the exact sum" if summed else "FX16",
                          ("error stream at a block input: FX16(branch error + shortcut error)" if summed else
                           "error stream entering the blocks from the head" if backward else
                           "residual stream after this layer's block (or the stem): FX16 of the exact value"), bits)
                return out
            return wrapper

        def update_sum(fn):
            def wrapper(terms):
                acc, e0 = fn(terms)
                if rec.param is not None:
                    rec.g.put(rec.name(f"{rec.param}.S"), torch.zeros(terms[0][0].shape, dtype=torch.int64)
                              if acc is None else acc, e0, "exact sum, 64-bit accumulator",
                              "the update's exact sum before its rounding: mu v + g + wd w (momentum), "
                              "L (g + wd w) without; terms below the accumulator's LSB dropped (floor)", 64)
                return acc, e0
            return wrapper

        def tail(fn):
            def wrapper(x, scale, bias, identity, layer, bits=None, pair=None, ahead=None):
                pre = (x.detach().double() * scale.effective().detach().double() + bias.effective().detach().double()
                       + identity.detach().double())
                codes, e = _exact_codes(pre)
                rec.g.put(rec.name(f"{rec.names[layer]}.pre"), codes, e, "exact (x s + b + identity)",
                          "the block tail's pre-activation: the last conv's accumulator times the Fixup multiplier, "
                          "plus the last bias and the shortcut, exact (before the ReLU and FX16)", 54)
                return fn(x, scale, bias, identity, layer, bits, pair, ahead)
            return wrapper

        patch(intengine, "_codes", codes_of)
        patch(int_update, "accumulate", update_sum)
        patch(blocks, "fixup_tail", tail)
        patch(intengine, "sq_from_int", codes_of)
        patch(intengine, "conv_forward", accumulator("acc", "A"))
        patch(intengine, "conv_input_grad", accumulator("dX_acc", "E"))
        patch(intengine, "weight_grad", accumulator("skip", None))    # recorded by _gradient
        patch(intengine, "int_mm", accumulator(None, None))
        patch(intengine, "_gradient", gradient)
        patch(rng, "draw_keys", keys)
        patch(stream, "fx", lambda fn: fx(fn, False))
        patch(stream, "fx_sum", lambda fn: fx(fn, True))
        try:
            yield self
        finally:
            for (module, attr), fn in originals.items():
                setattr(module, attr, fn)

    def _accumulator(self, acc, label, kind):
        layer = self.last
        mod = self.names.get(layer, "?")
        if label is None:              # the classifier's GEMMs called by IntLinearFn (its weight-
            if not isinstance(layer, QLinear):      # gradient GEMM runs inside weight_grad, not recorded)
                return
            label, kind = ("acc", "A") if self.phase == "forward" else ("dX_acc", "E")
        exponent = self.exps[(layer, kind)] + int(layer.weight_exp)
        if acc.dim() == 4:
            acc = acc.permute(0, 3, 1, 2)           # NHWC -> NCHW
        what = ("forward accumulator: integer sum of A x W products" if kind == "A" else
                "input-gradient accumulator: integer sum of E x W products")
        self.g.put(self.name(f"{mod}.{label}"), acc.to(torch.int32), exponent, "GEMM int32", what, 32)


def geometry(model: nn.Module) -> dict:
    """Every conv/linear layer's shape and stride, and every residual block's shortcut kind, by name."""
    from ..models.blocks import ResidualBlock, ShortcutA

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, QConv2d):
            out[name] = {"kind": "conv", "in": m.in_channels, "out": m.out_channels, "kernel": list(m.kernel_size),
                         "stride": m.stride[0], "padding": m.padding[0]}
        elif isinstance(m, QLinear):
            out[name] = {"kind": "linear", "in": m.in_features, "out": m.out_features}
        elif isinstance(m, nn.MaxPool2d):
            out[name] = {"kind": "maxpool", "kernel": m.kernel_size, "stride": m.stride, "padding": m.padding}
        elif isinstance(m, ResidualBlock):
            sc = m.shortcut
            kind = ("identity" if isinstance(sc, nn.Identity) else
                    "option A (subsample, zero-pad channels)" if isinstance(sc, ShortcutA) else "1x1 projection conv")
            out[name] = {"kind": "block", "convs": len(m.convs), "shortcut": kind}
    return out


def stored_tensors(optimizer: EOQSGD) -> list:
    """(name, GridParam) of every integer-stored tensor, in the optimizer's order (its key rows)."""
    grid = optimizer.grid
    return [(grid[id(p)].name, grid[id(p)]) for group in optimizer.param_groups for p in group["params"]
            if id(p) in grid]


def record(model: str | nn.Module = "resnet20", batch_size: int = 8, steps: int = 2, images=None, labels=None,
           seed: int = 0, lr: float = 0.1, momentum: float = 0.875, weight_decay: float = 5e-4,
           preset: str = "eoq", after: int = 0, engine: str = "int", stem: str = "small") -> Golden:
    """Run ``after`` unrecorded, then ``steps`` recorded integer-engine steps of a Fixup ``model`` (a
    name, or a Fixup ResNet built by the caller, seeded by the caller) on
    ``images`` (float32 NCHW, normalised, at least batch_size * (steps + after); the recorded steps
    take the first ones) and record them (see module doc). A fixed learning rate (no schedule).
    ``engine`` "sim" records the same steps on the float simulator (no accumulators: it has none).
    At initialisation a Fixup ResNet's classifier and the last conv of every branch are zero, so
    no error reaches the branches for the first three steps: ``after`` >= 3 records them busy.
    ``stem``: an ImageNet-layout net's 'small' stem (3x3/1, no max-pool, for 32x32 images) or its
    'imagenet' stem (7x7/2 conv and 3x3/2 max-pool; 64x64 images keep a 2x2 map before the pool)."""
    if stem not in ("small", "imagenet"):
        raise ValueError(f"golden: stem must be 'small' or 'imagenet', got {stem!r}")
    need = batch_size * (steps + after)
    if images is None or len(images) < need or labels is None or len(labels) < need:
        raise ValueError(f"golden: need {need} images and labels, got {0 if images is None else len(images)}")
    s = setup(model, "fixup", preset, seed=seed, engine=engine, lr=lr, momentum=momentum,
              weight_decay=weight_decay, channels_last=True, small_input=stem == "small")
    if not s.spec.stream_bits or not s.spec.lr_bits or not s.spec.wd_bits:
        raise ValueError(f"golden: preset {s.spec.name!r} has no fixed-point stream, learning rate or weight decay "
                         "(the all-integer update): use eoq or a spec based on it")
    items = stored_tensors(s.optimizer)
    golden = Golden(layers=geometry(s.model))
    golden.weight_decay = list(fixed_weight_decay(weight_decay, s.spec.wd_bits)) if weight_decay else None
    name = model if isinstance(model, str) else type(model).__name__     # a model built by the caller
    golden.put("config", np.array(json.dumps({"model": name, "batch_size": batch_size, "steps": steps, "seed": seed,
                                              "lr": lr, "momentum": momentum, "weight_decay": weight_decay,
                                              "after": after, "engine": engine, "preset": s.spec.to_dict(),
                                              "stem": stem, "image_size": list(images.shape[2:]),
                                              "stored": [n for n, _ in items]})),
               None, "", "run settings (JSON); 'stored': the stored tensors in the optimizer's order")
    rec = Recorder(golden, s.model)
    first = batch_size * steps
    for k in range(after):                      # the fast path (compiled kernels), nothing recorded
        lo = first + k * batch_size
        train_step(s.model, s.optimizer, images[lo:lo + batch_size].contiguous(memory_format=torch.channels_last),
                   labels[lo:lo + batch_size])
    with ExitStack() as stack:
        stack.enter_context(kernels.disabled())
        stack.enter_context(rec.wrapped())
        stack.enter_context(observing(rec))
        for step in range(steps):
            rec.step, rec.phase, rec.exps = step, "forward", {}
            x = images[step * batch_size:(step + 1) * batch_size].contiguous(memory_format=torch.channels_last)
            y = labels[step * batch_size:(step + 1) * batch_size]
            _record_state(rec, s.optimizer, items)
            golden.put(rec.name("labels"), y.to(torch.int64), None, "", "class labels")
            logits = s.model(x)
            golden.put(rec.name("logits"), logits, None, "float32 (acc * 2^e + bias)", "classifier output")
            loss = step_loss(logits, y, s.spec)
            rec.phase = "backward"
            s.optimizer.zero_grad(set_to_none=True)
            dlogits = torch.autograd.grad(loss, logits, retain_graph=True)[0]
            golden.put(rec.name("dlogits"), dlogits, None, "(softmax - onehot) / batch in float64, rounded once to float32",
                       "loss gradient at the logits: the one float operation of the step")
            loss.backward()
            _record_grads(rec, items)
            _optimizer_step(rec, s.optimizer, items)
    return golden


def _record_state(rec: Recorder, opt: EOQSGD, items) -> None:
    groups = {id(p): group for group in opt.param_groups for p in group["params"]}
    for name, grid in items:
        rec.g.put(rec.name(f"{name}.codes"), _small_codes(grid.codes(), grid.bits), int(grid.exponent), "stored",
                  "stored codes before this step", grid.bits)
        buf = opt.momentum_values(grid.param)
        if buf is not None:       # its values (SQ16 codes * 2^e); as int32 codes on the grid of its max
            lsb = _sq_lsb(buf, opt.spec.M.bits)
            codes = _on_grid(buf, lsb)
            if float(codes.abs().max()) > Q.max_code(opt.spec.M.bits):   # the max's grid needs one bit more
                lsb += 1
                codes = _on_grid(buf, lsb)
            if not torch.equal(codes, buf.double() * 2.0 ** -lsb):
                raise RuntimeError(f"golden: momentum buffer of {name} is not on its SQ grid")
            m_bits = opt.spec.M.bits
            rec.g.put(rec.name(f"{name}.M_in"), _small_codes(codes, m_bits), lsb, "stored",
                      f"momentum buffer before this step: the previous step's M values, as codes on the grid its "
                      f"max implies (round(log2 max) + 1 - {m_bits}, one bit coarser where that would need more "
                      f"than {m_bits} bits)", m_bits)
        mant, shift = fixed_point(groups[id(grid.param)]["lr"] * grid.lr_scale, opt.spec.lr_bits)
        rec.g.put(rec.name(f"{name}.lr"), np.array([mant, shift], dtype=np.int64), None, "",
                  "learning rate L * 2^-shift as (L, shift)")


def _record_grads(rec: Recorder, items) -> None:
    for name, grid in items:
        if not name.endswith(".weight"):       # the classifier bias and the Fixup scalars
            rec.g.put(rec.name(f"{name}.grad"), grid.param.grad.detach().clone(), None, "float32 (exact sum)",
                      "gradient: an exact sum, rounded once to float32 (twice summed where used twice)")


def _optimizer_step(rec: Recorder, opt: EOQSGD, items) -> None:
    by_param = {id(grid.param): name for name, grid in items}
    original = opt._grid_step

    rescale = opt._rescale

    def grid_step(p, grid, group, keys):
        rec.param = by_param[id(p)]
        try:
            return original(p, grid, group, keys)
        finally:
            rec.param = None

    def policy(codes, grid, k_max, key):
        before = int(grid.exponent)
        rec.g.put(rec.name(f"{rec.param}.stepped"), _small_codes(codes, grid.bits), before, "clamp(codes - U)",
                  "stored codes minus U, clamped: before the exponent policy", grid.bits)
        out = rescale(codes, grid, k_max, key)
        rec.g.put(rec.name(f"{rec.param}.policy"), np.array([int(grid.exponent) - before], dtype=np.int8), None,
                  "integer tests", "the exponent policy's decision: +1 up (saturated: codes halved, SR), -1 down "
                  "(under-used: codes doubled), 0 unchanged (or held at the floor)", 2)
        return out

    opt._grid_step, opt._rescale = grid_step, policy
    try:
        opt.step()
    finally:
        del opt._grid_step, opt._rescale
    keys = rec.opt_keys
    rec.g.put(rec.name("optimizer.keys"), keys.numpy().astype(np.uint32), None, "key",
              "per stored tensor (optimizer order), keys of G, M, U and the exponent policy's halving")
    for name, grid in items:
        rec.g.put(rec.name(f"{name}.new_codes"), _small_codes(grid.codes(), grid.bits), int(grid.exponent), "stored",
                  "stored codes after this step (the exponent policy applied)", grid.bits)


def _write_npz(fh, arrays: dict) -> None:
    """np.savez_compressed's format (a zip of .npy files, deflated) with every timestamp fixed, so
    that the same tensors give the same bytes (np.savez_compressed stamps the current time).
    Deflate level 1: a ResNet-18 golden (564 MB of arrays) compresses in 6 s to 140 MB, against
    24 s and 131 MB at the default level 6 (a ZipInfo entry takes the level given to writestr,
    not the archive's)."""
    with zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, arr in arrays.items():
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asanyarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, buf.getvalue(), compresslevel=1)


def write(golden: Golden, out) -> Path:
    """golden.npz and manifest.json in ``out`` (created), each written atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "golden.npz") as fh:
        _write_npz(fh, golden.arrays)
    manifest = {"format": FORMAT, "schema": "docs/golden.md",
                "value": "codes * 2^exponent (exponent null: float32 values); bits: the width of the codes "
                         "(signed), dtype: the container they are stored in",
                "steps": "names s<t>/...: recorded step t = 0, 1, ...; step t starts from the state step t-1 left",
                "keys": "s<t>/optimizer.keys: uint32 [stored tensor (config 'stored' order), use (0 G, 1 M, 2 U, "
                        "3 the exponent policy's halving), (k0, k1)]; s<t>/<layer>.<A|E|G>.key: (k0, k1)",
                "lr": "s<t>/<tensor>.lr: int64 (L, s), learning rate L * 2^-s (the tensor's own lr scale applied)",
                "weight_decay": golden.weight_decay,
                "weight_decay_format": "(Lw, sw): weight decay Lw * 2^-sw of the weights (null: none)",
                "layers": golden.layers,
                "order": [e["name"] for e in golden.entries], "tensors": golden.entries}
    with atomic_write(out / "manifest.json", "w") as fh:
        json.dump(manifest, fh, indent=1)
    return out / "golden.npz"


FORMAT = "eoq-golden-2"
REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "numpy_step.py"


@functools.lru_cache(maxsize=1)
def reference():
    """The NumPy reference (eoq/reference/numpy_step.py), loaded from its file: it imports no torch
    and nothing of this package. Loaded once (its exception classes stay the same objects)."""
    spec = importlib.util.spec_from_file_location("eoq_numpy_step", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verify(folder) -> tuple[int, list[str]]:
    """(how many tensors the NumPy reference recomputed, the names it does not reproduce bit for bit)."""
    checked, bad, _ = reference().check(folder)
    return checked, bad

"""Op counts, bytes, energy and latency of one real training step, per layer, phase and format.

Counting is driven by the model: one real training step (forward, loss, backward, optimizer
step) runs under a TorchDispatchMode and torch's ModuleTracker.
  - Layers with known arithmetic are counted from their shapes and quantization spec as they run:
    QConv2d/QLinear (MACs of the forward, backward-error and weight-gradient GEMMs, their
    quantizers), QBatchNorm2d (training-mode BN and its backward), Fixup scalars, and the update
    of every parameter (EOQ integer update or float SGD).
  - Every other aten op (ReLU, residual add, padding, pooling, loss...) is counted from the
    dispatch stream with a per-op rule and attributed to the innermost module that runs it.
Fused kernels (the Fixup block tail, deferred biases) are switched off while counting
(:func:`eoq.nn.layers.unfused`): the count is of the arithmetic, whichever kernels carry it out.
Phases: forward, backward_error (errors flowing to the inputs), weight_grad, update.
Category ``stream``: the fixed-point residual stream's roundings (spec stream_bits, eoq/nn/stream.py),
counted as quantizers, not as the torch ops that simulate them.
Formats: int8/int16/int32/fp16/fp32. In quantized networks the values between layers (conv
accumulators, residual sums, errors from a GEMM) are int32; in float networks fp32; the loss is
always fp32 (its gradient is then quantized like any error).

MACs (multiply + accumulate) are counted as one mult and one add; ``macs()`` sums them for the
conv/linear GEMMs, which must equal torch.utils.flop_counter.FlopCounterMode's FLOPs / 2.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.module_tracker import ModuleTracker

from eoq.nn.batchnorm import QBatchNorm2d
from eoq.nn import stream
from eoq.nn.layers import FixupScalar, QConv2d, QLinear, unfused
from eoq.quant.spec import TensorQuant

PHASES = ("forward", "backward_error", "weight_grad", "update")
BYTES = {"int8": 1, "int16": 2, "int32": 4, "fp16": 2, "fp32": 4}


def fmt_of(q: TensorQuant) -> str:
    if not q.enabled:
        return "fp32"
    return "int8" if q.bits <= 8 else "int16" if q.bits <= 16 else "int32"


@dataclass
class CostTally:
    """counts[(layer, category, phase, op, fmt)] = number of ops (op 'read'/'write': bytes)."""

    counts: dict = field(default_factory=lambda: defaultdict(float))

    def add(self, layer: str, category: str, phase: str, op: str, fmt: str, n: float) -> None:
        if n:
            self.counts[(layer, category, phase, op, fmt)] += float(n)

    def select(self, category=None, phase=None, op=None, layer=None):
        for (lay, cat, ph, o, f), n in self.counts.items():
            if (category is None or cat in _tuple(category)) and (phase is None or ph in _tuple(phase)) \
                    and (op is None or o in _tuple(op)) and (layer is None or lay == layer):
                yield (lay, cat, ph, o, f), n

    def macs(self, phase=None) -> float:
        return sum(n for (_, _, _, o, _), n in self.select(category="gemm", phase=phase, op="mult"))

    def energy_pj(self, energy: dict, include_memory: bool = False, **where) -> float:
        total = 0.0
        for (_, _, _, op, fmt), n in self.select(**where):
            if op in ("read", "write"):
                total += n * energy["byte"]["sram"] if include_memory else 0.0
            else:
                total += n * energy[op][fmt]
        return total

    def cycles(self, cycles: dict, **where) -> float:
        return sum(n * cycles[op][fmt] for (_, _, _, op, fmt), n in self.select(**where) if op not in ("read", "write"))

    def latency(self, cycles: dict, datapath: dict, **where) -> float:
        """Cycles on a datapath (analysis/cost/tables.py: DATAPATHS): per layer and phase the
        larger of the busiest unit's time and the memory time, summed over layers and phases."""
        parts: dict = defaultdict(lambda: {"units": defaultdict(float), "latency": 0.0, "bytes": 0.0})
        for (lay, _, phase, op, fmt), n in self.select(**where):
            part = parts[(lay, phase)]
            if op in ("read", "write"):
                part["bytes"] += n
                continue
            lanes, c = datapath["lanes"][op][fmt], cycles[op][fmt]
            if datapath["pipelined"][op]:
                part["units"][(op, fmt)] += n / lanes
                part["latency"] = max(part["latency"], c)
            else:
                part["units"][(op, fmt)] += n * c / lanes
        bw = datapath["bytes_per_cycle"]
        total = 0.0
        for part in parts.values():
            compute = max(part["units"].values(), default=0.0)
            compute += part["latency"] if compute else 0.0
            if bw is None:          # the serial model: every op in turn, memory not a bound
                compute = sum(part["units"].values())
            total += max(compute, part["bytes"] / bw if bw else 0.0)
        return total

    def layers(self) -> list[str]:
        seen = {}
        for (lay, *_), _ in self.counts.items():
            seen.setdefault(lay, None)
        return list(seen)


def _tuple(x):
    return x if isinstance(x, (tuple, list, set)) else (x,)


def count_bn(t: CostTally, name: str, shape, m: QBatchNorm2d, needs_input_grad: bool) -> None:
    """Training-mode BN on (N, C, H, W), m = N*H*W values per channel, and its backward.

    forward: mean (mC adds, C div), variance (mC adds for x - mu, mC mults, mC adds, C div),
    std = sqrt(var + eps) (C adds, C sqrt), 1/std (C div), normalize (mC mults: (x - mu) reused),
    affine (mC mults, mC adds), running statistics (5C mults, 2C adds).
    backward: dbeta = sum dy (mC adds); dgamma = sum dy * xhat (mC mults, mC adds);
    dx = gamma/std * (dy - dbeta/m - xhat * dgamma/m): C mults, 2C div, mC mults, 2mC adds, mC mults.
    Formats: fp32, or for WAGEUBN-quantized BN int16 statistics and int16/int8 elementwise work.
    """
    n, c = shape[0], shape[1]
    mc = n * c * int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else n * c
    quant = m.stat_bits is not None
    stat = "int16" if quant else "fp32"
    elem = "int16" if quant else "fp32"
    aff = "int8" if quant and m.affine_bits and m.affine_bits <= 8 else elem
    f = "forward"
    t.add(name, "norm", f, "add", elem, 3 * mc + c + 2 * c)
    t.add(name, "norm", f, "mult", elem, 2 * mc + 5 * c)
    t.add(name, "norm", f, "mult", aff, mc)
    t.add(name, "norm", f, "add", aff, mc)
    t.add(name, "norm", f, "div", stat, 3 * c)
    t.add(name, "norm", f, "sqrt", stat, c)
    b = BYTES[elem]
    t.add(name, "norm", f, "read", "byte", 2 * mc * b)
    t.add(name, "norm", f, "write", "byte", mc * b)
    t.add(name, "norm", "weight_grad", "add", elem, 2 * mc)
    t.add(name, "norm", "weight_grad", "mult", elem, mc)
    t.add(name, "norm", "weight_grad", "read", "byte", 2 * mc * b)
    if needs_input_grad:
        t.add(name, "norm", "backward_error", "add", elem, 2 * mc)
        t.add(name, "norm", "backward_error", "mult", elem, 2 * mc + c)
        t.add(name, "norm", "backward_error", "div", stat, 2 * c)
        t.add(name, "norm", "backward_error", "read", "byte", 2 * mc * b)
        t.add(name, "norm", "backward_error", "write", "byte", mc * b)


def count_bn_inference(t: CostTally, name: str, shape, folded: bool = False) -> None:
    """Inference-mode BN (running statistics) on (N, C, H, W), fp32, forward only.

    As written, y = (x - mu) / sqrt(var + eps) * gamma + beta: per channel var + eps (C adds) and
    its square root (C sqrt); per element x - mu (1 add), the division (1 div), * gamma (1 mult) and
    + beta (1 add). Folded, y = a x + b with a = gamma / sqrt(var + eps) and b = beta - mu a per
    channel, computed once when the model is loaded and not counted per inference: 1 mult and 1
    add per element."""
    n, c = shape[0], shape[1]
    mc = n * c * int(torch.tensor(shape[2:]).prod()) if len(shape) > 2 else n * c
    f = "forward"
    if folded:
        t.add(name, "norm", f, "mult", "fp32", mc)
        t.add(name, "norm", f, "add", "fp32", mc)
    else:
        t.add(name, "norm", f, "add", "fp32", 2 * mc + c)
        t.add(name, "norm", f, "div", "fp32", mc)
        t.add(name, "norm", f, "mult", "fp32", mc)
        t.add(name, "norm", f, "sqrt", "fp32", c)
    t.add(name, "norm", f, "read", "byte", mc * 4)
    t.add(name, "norm", f, "write", "byte", mc * 4)


def count_quantizer(t: CostTally, name: str, phase: str, q: TensorQuant, numel: int, src: str = "int32") -> None:
    """SQ/FQ/CQ of n values held in ``src``: max|x| (n cmp), shift (n), round (n adds, plus n random
    bytes for stochastic rounding), clamp (2n cmp)."""
    if not q.enabled or numel == 0:
        return
    t.add(name, "quantize", phase, "cmp", src, 3 * numel)
    t.add(name, "quantize", phase, "shift", src, numel)
    t.add(name, "quantize", phase, "add", src, numel)
    if q.rounding == "stochastic" or q.quantizer == "cq":
        t.add(name, "quantize", phase, "rand", "int8", numel)


class _LayerCounter:
    """Forward hooks: count known layers from their shapes and spec (their backward included)."""

    def __init__(self, tally: CostTally, quantized_net: bool, bn: str = "training"):
        self.t, self.qnet, self.bn = tally, quantized_net, bn

    def __call__(self, module, inputs, output):
        x = inputs[0]
        name = module.eoq_name
        needs_gi = x.requires_grad
        if isinstance(module, (QConv2d, QLinear)):
            self._gemm(module, name, x, output, needs_gi)
        elif isinstance(module, QBatchNorm2d):
            if self.bn == "training":
                count_bn(self.t, name, tuple(x.shape), module, needs_gi)
            else:
                count_bn_inference(self.t, name, tuple(x.shape), folded=self.bn == "folded")
        elif isinstance(module, FixupScalar):
            self._scalar(module, name, output.numel(), needs_gi)

    def _gemm(self, m, name, x, out, needs_gi):
        q = m.quant
        if isinstance(m, QConv2d):
            kh, kw = m.kernel_size
            macs = out.numel() * (m.in_channels // m.groups) * kh * kw
        else:
            macs = out.numel() * m.in_features
        fa, fw, fe = fmt_of(q.A), fmt_of(q.W), fmt_of(q.E)
        ints = lambda *f: all(v.startswith("int") for v in f)
        phases = [("forward", (fa, fw)), ("weight_grad", (fa, fe))]
        phases += [("backward_error", (fe, fw))] if needs_gi else []
        for phase, pair in phases:
            mul = "int8" if ints(*pair) and max(BYTES[p] for p in pair) == 1 else ("int16" if ints(*pair) else "fp32")
            acc = "int32" if ints(*pair) else "fp32"
            self.t.add(name, "gemm", phase, "mult", mul, macs)
            self.t.add(name, "gemm", phase, "add", acc, macs)
        wn, on, xn = m.weight.numel(), out.numel(), x.numel()
        self.t.add(name, "gemm", "forward", "read", "byte", xn * BYTES[fa] + wn * BYTES[fw])
        self.t.add(name, "gemm", "forward", "write", "byte", on * BYTES["int32" if ints(fa, fw) else "fp32"])
        self.t.add(name, "gemm", "weight_grad", "read", "byte", xn * BYTES[fa] + on * BYTES[fe])
        self.t.add(name, "gemm", "weight_grad", "write", "byte", wn * 4)
        if needs_gi:
            self.t.add(name, "gemm", "backward_error", "read", "byte", on * BYTES[fe] + wn * BYTES[fw])
            self.t.add(name, "gemm", "backward_error", "write", "byte", xn * 4)
        if getattr(m, "bias", None) is not None:
            self.t.add(name, "gemm", "forward", "add", "int32" if ints(fa, fw) else "fp32", on)
            self.t.add(name, "gemm", "weight_grad", "add", "int32" if ints(fe) else "fp32", on)
        src = "int32" if self.qnet else "fp32"
        count_quantizer(self.t, name, "forward", q.A, xn, src)
        if q.W.enabled and not (m.store_bits is not None and q.W.bits >= m.store_bits):
            count_quantizer(self.t, name, "forward", q.W, wn, src)
        count_quantizer(self.t, name, "backward_error", q.E, on, src)
        count_quantizer(self.t, name, "weight_grad", q.G, wn, "int32")

    def _scalar(self, m, name, n, needs_gi):
        quant = m.quant.enabled
        add_f, mul_f = ("int16", "int8") if quant else ("fp32", "fp32")
        b = BYTES[mul_f]
        self.t.add(name, "norm", "forward", "read", "byte", n * b)
        self.t.add(name, "norm", "forward", "write", "byte", n * b)
        self.t.add(name, "norm", "weight_grad", "read", "byte", n * b)
        if m.mode == "bias":
            self.t.add(name, "norm", "forward", "add", add_f, n)
            self.t.add(name, "norm", "weight_grad", "add", "int32" if quant else "fp32", n)
        else:
            self.t.add(name, "norm", "forward", "mult", mul_f, n)
            self.t.add(name, "norm", "weight_grad", "mult", mul_f, n)
            self.t.add(name, "norm", "weight_grad", "add", "int32" if quant else "fp32", n)
            if needs_gi:
                self.t.add(name, "norm", "backward_error", "mult", mul_f, n)


def count_update(t: CostTally, model: nn.Module, optimizer) -> None:
    """The optimizer step, per parameter (see eoq/training/optimizer.py for the arithmetic).

    EOQ integer update of n codes: momentum v - (v >> s) + g (n shifts, 2n adds), weight decay (n
    mults, n adds), lr as a shift (n; a multiply when the spec does not round it to a power of two,
    and with a fixed-point lr the integer multiply plus its shift). The multiplies take 8-bit
    mantissas times M codes or W codes: in the M format (int8 for an 8-bit M); the shifts and adds
    form S, which holds the 16-bit products Lw x W codes: in the M format, and at least int16.
    SR (n random bytes, n adds), clamp U (2n cmp), codes - U (n int8 adds), clamp (2n cmp),
    saturation check (n cmp).
    Float SGD: weight decay (n mults + n adds), momentum (n mults + n adds), lr (n mults + n adds).
    """
    grid = getattr(optimizer, "grid", {})
    spec = getattr(optimizer, "spec", None)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in optimizer.param_groups:
        for p in group["params"]:
            n, layer = p.numel(), names.get(id(p), "?").rsplit(".", 1)[0]
            g = grid.get(id(p))
            if g is not None:
                mf = fmt_of(spec.M) if spec is not None and spec.M.enabled else "fp32"
                sf = "int16" if mf == "int8" else mf          # S: at least the 16-bit products
                lr_shift = spec is None or spec.lr_pow2
                fixed = bool(spec is not None and spec.lr_bits)   # L * v, then the shift 2^-s
                decay = 1 if group["weight_decay"] and g.weight_decay else 0
                t.add(layer, "update", "update", "shift", sf, (1 + lr_shift + fixed) * n)
                t.add(layer, "update", "update", "add", sf, 3 * n)
                t.add(layer, "update", "update", "mult", mf, (decay + (not lr_shift)) * n)
                t.add(layer, "update", "update", "rand", "int8", n)
                t.add(layer, "update", "update", "cmp", "int8", 5 * n)
                t.add(layer, "update", "update", "add", "int8", n)
                t.add(layer, "update", "update", "read", "byte", n * (1 + 1 + BYTES[mf]))
                t.add(layer, "update", "update", "write", "byte", n * (1 + BYTES[mf]))
            else:
                wd = 1 if group["weight_decay"] else 0
                t.add(layer, "update", "update", "mult", "fp32", (2 + wd) * n)
                t.add(layer, "update", "update", "add", "fp32", (2 + wd) * n)
                t.add(layer, "update", "update", "read", "byte", 12 * n)
                t.add(layer, "update", "update", "write", "byte", 8 * n)


_FREE = {"view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "detach", "alias",
         "empty", "empty_like", "zeros", "zeros_like", "ones_like", "new_empty", "new_zeros", "full",
         "lift_fresh", "_to_copy", "unsqueeze", "squeeze", "as_strided", "clone", "copy_", "fill_",
         "scalar_tensor", "_local_scalar_dense", "isfinite", "eq", "argmax", "sum_to_size"}


class _FunctionalCounter(TorchDispatchMode):
    """Counts aten ops that run outside the known layers (and outside the optimizer step)."""

    def __init__(self, tally: CostTally, tracker: ModuleTracker, known: set, root: str, quantized_net: bool):
        super().__init__()
        self.t, self.tracker, self.known, self.root, self.qnet = tally, tracker, known, root, quantized_net
        self.enabled = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.enabled:
            self._count(func, args, out)
        return out

    def stream_rounding(self, n: int, backward: bool, summed: bool = False) -> None:
        """FX of n stream values (eoq/nn/stream.py) as a quantizer: max (n cmp), shift, round (n adds);
        ``summed``: of the sum of two errors, whose n adds are counted as elementwise work."""
        if not self.enabled:
            return
        layer, phase = self._where()
        phase = "backward_error" if backward else phase
        if summed:
            self.t.add(layer, "elementwise", phase, "add", "int32" if self.qnet else "fp32", n)
        for op in ("cmp", "shift", "add"):
            self.t.add(layer, "stream", phase, op, "int32", n)
        self.t.add(layer, "stream", phase, "read", "byte", 4 * n)
        self.t.add(layer, "stream", phase, "write", "byte", 2 * n)

    def _where(self) -> tuple[str, str]:
        inner = max(self.tracker.parents, key=len)
        layer = "" if inner in ("Global", self.root) else inner[len(self.root) + 1:]
        return layer, "backward_error" if self.tracker.is_bw else "forward"

    def _count(self, func, args, out):
        parents = self.tracker.parents
        if parents & self.known or stream.rounding():
            return
        op = func.overloadpacket.__name__.rstrip("_")
        if op in _FREE or not isinstance(out, torch.Tensor) and not isinstance(out, (tuple, list)):
            return
        res = out if isinstance(out, torch.Tensor) else next((o for o in out if isinstance(o, torch.Tensor)), None)
        if res is None:
            return
        layer, phase = self._where()
        loss = op in ("_log_softmax", "_log_softmax_backward_data", "nll_loss_forward", "nll_loss_backward",
                      "nll_loss2d_forward")
        fmt = "fp32" if (loss or not self.qnet) else "int32"
        n = res.numel()
        src = args[0] if args and isinstance(args[0], torch.Tensor) else res
        cat = "loss" if loss else "elementwise"
        rules = {
            "relu": [("cmp", n)], "threshold_backward": [("cmp", n)], "clamp_min": [("cmp", n)],
            "add": [("add", n)], "sub": [("add", n)], "rsub": [("add", n)], "neg": [],
            "mul": [("mult", n)], "div": [("div", n)],
            "mean": [("add", src.numel()), ("div", n)], "sum": [("add", src.numel())],
            "max_pool2d_with_indices": [("cmp", n * 9)], "max_pool2d_with_indices_backward": [("add", n)],
            "_log_softmax": [("cmp", n), ("add", 2 * n), ("mult", n)],
            "_log_softmax_backward_data": [("mult", n), ("add", 2 * n)],
            "nll_loss_forward": [("add", src.shape[0] if src.dim() else 1)], "nll_loss_backward": [],
            "_adaptive_avg_pool2d": [("add", src.numel()), ("div", n)],
            "_adaptive_avg_pool2d_backward": [("div", n)],
            "avg_pool2d": [("add", src.numel()), ("div", n)], "avg_pool2d_backward": [("div", n)],
        }
        for kind, count in rules.get(op, []):
            self.t.add(layer, cat, phase, kind, fmt, count)
        # every counted op (and data movement such as padding or slicing) reads and writes its data
        self.t.add(layer, cat, phase, "read", "byte", src.numel() * BYTES[fmt])
        self.t.add(layer, cat, phase, "write", "byte", n * BYTES[fmt])


def count_inference(model: nn.Module, x: torch.Tensor, folded_bn: bool = False) -> CostTally:
    """Count one inference (forward pass, eval mode: BN with its running statistics) of a prepared
    model: the forward phase of the training count, with BN in its inference form (as written, or
    folded into one multiply-add per element)."""
    tally = CostTally()
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            _count(model, tally, lambda: model(x), bn="folded" if folded_bn else "inference")
    finally:
        model.train(was_training)
    return CostTally(defaultdict(float, {k: n for k, n in tally.counts.items() if k[2] == "forward"}))


def _count(model: nn.Module, tally: CostTally, step, bn: str = "training", after=None) -> None:
    """Run ``step`` with the layer hooks and the dispatch counter on; ``after`` (uncounted) then."""
    quantized_net = any(isinstance(m, (QConv2d, QLinear)) and m.quant.any for m in model.modules())
    for name, m in model.named_modules():
        if not hasattr(m, "eoq_name"):
            m.eoq_name = name
    root = type(model).__name__
    known_types = (QConv2d, QLinear, QBatchNorm2d, FixupScalar)
    known = {f"{root}.{n}" if n else root for n, m in model.named_modules() if isinstance(m, known_types)}
    counter = _LayerCounter(tally, quantized_net, bn)
    handles = [m.register_forward_hook(counter) for m in model.modules() if isinstance(m, known_types)]
    try:
        with unfused(), ModuleTracker() as tracker, \
                _FunctionalCounter(tally, tracker, known, root, quantized_net) as mode:
            stream.LISTENERS.append(mode.stream_rounding)       # the fixed-point stream's roundings
            try:
                step()
                mode.enabled = False
                if after is not None:
                    after()
            finally:
                stream.LISTENERS.remove(mode.stream_rounding)
    finally:
        for h in handles:
            h.remove()


def count_training_step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor) -> CostTally:
    """Run one real training step of a prepared model and count what it does."""
    tally = CostTally()

    def forward_backward():
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()

    _count(model, tally, forward_backward, after=optimizer.step)
    count_update(tally, model, optimizer)
    return tally

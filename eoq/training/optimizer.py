"""EOQ SGD: 8-bit integer weight updates, no float master copy; plain SGD for float tensors.

With ``spec.wd_bits`` (the eoq presets) an integer-stored tensor takes the all-integer update of
:mod:`eoq.training.int_update` (fixed-point weight decay, mu v + g + wd w an exact integer sum
rounded once to M, U formed from M's codes exactly; ``_int_grid_step`` here, ``grid_step`` in the
kernel). Without it (eoq-shift, wageubn) the update below keeps weight decay and the momentum sum
in float32. For an integer-stored tensor w = codes * 2^e (see :class:`~eoq.nn.layers.GridParam`):
    g      = G(grad) (+ weight_decay * w)            G already applied by the layer for conv/linear
    v      = M(mu * v + g),  mu = 1 - 2^-s           momentum as a shift; M quantizes the buffer
    delta  = lr * lr_scale * v                       lr rounded to a power of two if spec.lr_pow2, or to
                                                     a fixed-point L * 2^-s if spec.lr_bits (then
                                                     delta / 2^e is formed exactly: in float64, which
                                                     holds the integer product L * v-code)
    U      = clamp(SR(delta / 2^e), -(2^(u-1)-1), 2^(u-1)-1)   int8 update in units of the LSB
    codes <- clamp(codes - U, -(2^(k-1)-1), 2^(k-1)-1)
then the exponent policy (:class:`~eoq.quant.spec.WeightPolicy`) may move e by one bit. The random bits
of G, M, U and the policy's halving come from four keys per tensor drawn at the start of the step
(eoq.quant.rng). The integer-stored tensors are updated by one call into the fused kernel
(``csrc/quant.cpp: grid_step``) when it is built and no observer is attached; the torch code
below is the reference it is tested against bit for bit (``kernels.disabled()`` selects it). Float tensors
(fp32 presets, float-end layers, BN) take the usual momentum SGD with the same lr, momentum and
weight decay: v = mu v + g + wd w; w <- w - lr * lr_scale * v (Nesterov: w <- w - lr * lr_scale *
(g + wd w + mu v), float updates only).

Fixup scalars train at lr / 10 (``scalar_lr_scale``) and, like biases and BN parameters, without
weight decay.
"""
from __future__ import annotations

import contextlib
import enum
import functools
import math
import weakref

import torch
import torch.nn as nn

from .. import kernels
from ..nn.layers import FixupScalar, GridParam
from ..nn.prepare import SCALAR_LR_SCALE, grid_params
from ..quant import rng
from ..quant.apply import apply_quant
from ..quant.observe import OBSERVERS, listening
from ..quant.quantizers import QuantizationError, code_dtype, max_code, round_scaled
from ..quant.spec import QuantSpec, SpecError
from . import grad_codes, int_update


class PlanCol(enum.IntEnum):
    """Columns of the fused optimizer's per-tensor plan row (float64), mirrored in
    ``csrc/common.h`` (enum PlanCol, PLAN_<NAME>), where ``grid_step`` reads them."""

    LR = 0          # effective learning rate of the tensor (lr * lr_scale, in its format)
    BITS = 1        # bits of the stored weight codes
    U_BITS = 2      # bits of the update codes
    U_MODE = 3      # rounding of the update (Rounding.code)
    G_BITS = 4      # bits of G when the optimizer quantizes it (0: the layer did)
    G_MODE = 5      # rounding of G
    M_BITS = 6      # bits of the momentum buffer (0: float)
    M_MODE = 7      # rounding of the momentum buffer
    SAT_NUM = 8     # exponent policy: saturate_frac = num / den; count * den > num * n moves it up
    SHRINK = 9      # exponent policy: max|code| < 2^(k-1-shrink) moves it down
    READY = 10      # 1 once the momentum buffer holds values
    EXACT_LR = 11   # 1 for a fixed-point lr (spec.lr_bits): lr * v / 2^e formed exactly
    MIN_EXP = 12    # exponent policy: the exponent goes down no further
    SAT_DEN = 13    # (the denominator of saturate_frac)
    INT_UPDATE = 14  # 1: the all-integer update (int_update), with the columns below
    LR_MANT = 15    # lr = L * 2^-s_l: L
    LR_SHIFT = 16   # s_l
    WD_MANT = 17    # wd = Lw * 2^-s_w: Lw (0: no weight decay for this tensor)
    WD_SHIFT = 18   # s_w
    MU_SHIFT = 19   # mu = 1 - 2^-s: s (0: no momentum)


def pow2_round(x: float) -> float:
    """2^round(log2 x): the nearest power of two in the log domain (0 stays 0)."""
    return 0.0 if x <= 0 else 2.0 ** round(math.log2(x))


def fixed_point(x: float, bits: int) -> tuple[int, int]:
    """(L, s) with L * 2^-s the nearest number to x > 0 with a ``bits``-bit mantissa:
    2^(bits-1) <= L < 2^bits, L = round(x * 2^s) (half to even). A learning rate in this form is an
    integer multiply and a shift in hardware."""
    if not x > 0:
        raise ValueError(f"fixed_point needs x > 0, got {x}")
    s = bits - 1 - math.floor(math.log2(x))
    mant = round(x * 2.0 ** s)
    if mant >= 2 ** bits:                       # rounded up to the next power of two
        mant, s = mant // 2, s - 1
    elif mant < 2 ** (bits - 1):                # log2 was rounded up at a power of two
        mant, s = round(x * 2.0 ** (s + 1)), s + 1
    return mant, s


WD_RANGE = (2.0 ** -48, 1.0)     # weight decays the integer update takes: 2^-48 <= wd < 1


def fixed_weight_decay(wd: float, bits: int) -> tuple[int, int]:
    """(Lw, sw) with wd ~ Lw * 2^-sw, a ``bits``-bit mantissa (:func:`fixed_point`): weight decay in
    the integer update is an integer multiply of the weight codes and a shift. Refuses a weight
    decay that this format cannot carry (outside [2^-48, 1))."""
    if not (isinstance(wd, (int, float)) and WD_RANGE[0] <= wd < WD_RANGE[1]):
        raise SpecError(f"weight decay {wd!r} cannot be a fixed-point number of the integer update: it must lie "
                        f"in [2^-48, 1) (or be 0)")
    return fixed_point(float(wd), bits)


def momentum_shift(mu: float) -> int | None:
    """s with mu = 1 - 2^-s (None for mu = 0); other values are not a shift."""
    if mu == 0:
        return None
    s = -math.log2(1 - mu) if 0 < mu < 1 else float("nan")
    if not (s == s and s == round(s) and 1 <= s <= 16):
        raise SpecError(f"integer (EOQ) updates need momentum 0 or 1 - 2^-s (0.5, 0.75, 0.875, 0.9375, ...), "
                        f"got {mu}")
    return int(s)


class EOQSGD(torch.optim.Optimizer):
    """SGD for a prepared model: integer-stored tensors (``GridParam``) take the spec's integer update
    (module doc; the all-integer one of eoq.training.int_update when ``spec.wd_bits``), float tensors
    plain momentum SGD. Momentum must be 0 or 1 - 2^-s when the model has integer-stored tensors.

    >>> import torch, eoq
    >>> model = eoq.prepare(eoq.build_model("resnet20", "fixup"), "eoq", torch.Generator().manual_seed(0))
    >>> opt = eoq.EOQSGD(model, eoq.get_preset("eoq"), lr=0.1, momentum=0.875)
    >>> len(opt.grid)                    # integer-stored tensors: 19 convs, classifier, Fixup scalars
    68
    """

    def __init__(self, model: nn.Module, spec: QuantSpec, lr: float, momentum: float = 0.875,
                 weight_decay: float = 5e-4, scalar_lr_scale: float = SCALAR_LR_SCALE,
                 generator: torch.Generator | None = None, nesterov: bool = False):
        if not lr > 0:
            raise ValueError(f"learning rate must be > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.spec, self.generator = spec, generator
        self.grid: dict[int, GridParam] = {id(g.param): g for g in grid_params(model)}
        if self.grid:
            momentum_shift(momentum)
            if spec.wd_bits and weight_decay:
                fixed_weight_decay(weight_decay, spec.wd_bits)
            if nesterov:
                raise SpecError("Nesterov momentum applies to float updates only; this model has "
                                "integer-stored weights (plain momentum as a shift)")
        self.nesterov = nesterov
        scalar_ids = {id(m.value) for m in model.modules() if isinstance(m, FixupScalar)}
        groups = {"grid": [], "decay": [], "no_decay": [], "scalar": []}
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if id(p) in self.grid:
                groups["grid"].append(p)
            elif id(p) in scalar_ids:
                groups["scalar"].append(p)
            elif p.dim() > 1:
                groups["decay"].append(p)
            else:
                groups["no_decay"].append(p)
        param_groups = [
            {"params": groups["grid"], "kind": "grid", "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": groups["decay"], "kind": "float", "lr_scale": 1.0, "weight_decay": weight_decay},
            {"params": groups["no_decay"], "kind": "float", "lr_scale": 1.0, "weight_decay": 0.0},
            {"params": groups["scalar"], "kind": "float", "lr_scale": scalar_lr_scale, "weight_decay": 0.0},
        ]
        for g in self.grid.values():
            if g.lr_scale != 1.0:
                g.lr_scale = scalar_lr_scale
        super().__init__([g for g in param_groups if g["params"]], {"lr": lr, "momentum": momentum})
        self.packing = False
        self.packed: dict[int, tuple[torch.Tensor, int]] = {}
        if spec.wd_bits:
            me = weakref.ref(self)
            for g in self.grid.values():
                if grad_codes.layer_quantizes_g(g):
                    g.param.register_post_accumulate_grad_hook(functools.partial(grad_codes.pack_hook, me))

    @contextlib.contextmanager
    def packed_gradients(self):
        """Within: each gradient of an integer-stored weight that its integer-engine layer rounded
        to G (8-bit SQ) is kept as int8 codes and an exponent as soon as autograd has it (its float32 ``.grad`` is
        freed: a quarter of the memory, and the gradients of the layers already done no longer sit
        in float32 beside the rest of the backward), and :meth:`step` reads those codes, the same
        values. ``.grad`` of those weights stays None and :meth:`gradient` gives the values, until
        :meth:`zero_grad` (a later backward adds to them, as autograd accumulates ``.grad``). The
        training step (``eoq.training.loop.train_step``) runs its backward within."""
        self.packing = True
        try:
            yield
        finally:
            self.packing = False

    def gradient(self, p) -> torch.Tensor | None:
        """The gradient of ``p`` as float32 values: ``p.grad``, or the packed codes * 2^exponent."""
        packed = self.packed.get(id(p))
        if packed is not None:
            return packed[0].to(torch.float32).mul_(2.0 ** packed[1])
        return p.grad

    def zero_grad(self, set_to_none: bool = True):
        self.packed.clear()
        super().zero_grad(set_to_none=set_to_none)

    def _unpack(self) -> None:
        """Packed gradients back into ``.grad`` (the torch reference path reads .grad)."""
        for pid in list(self.packed):
            p = self.grid[pid].param
            p.grad = self.gradient(p)
        self.packed.clear()

    def effective_lr(self, group: dict, grid: GridParam | None = None) -> float:
        lr = group["lr"] * (grid.lr_scale if grid is not None else group["lr_scale"])
        if grid is None:
            return lr
        if self.spec.lr_pow2:
            return pow2_round(lr)
        if self.spec.lr_bits:
            mant, s = fixed_point(lr, self.spec.lr_bits)
            return math.ldexp(mant, -s)
        return lr

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        grid_items = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None and id(p) not in self.packed:
                    continue
                grid = self.grid.get(id(p))
                if grid is None:
                    self._float_step(p, group)
                else:
                    grid_items.append((p, grid, group))
        if grid_items:
            momentum_shift(grid_items[0][2]["momentum"])     # a schedule may change it: still a shift
            keys = rng.draw_keys(self.generator, len(grid_items), 4)
            if not self._fused_grid_step(grid_items, keys):
                self._unpack()                       # the reference path below reads .grad
                for (p, grid, group), key in zip(grid_items, keys.tolist()):
                    self._grid_step(p, grid, group, [tuple(k) for k in key])
        return loss

    def _momentum(self, p, g, mu):
        if mu == 0:
            return g
        state = self.state[p]
        buf = state.get("momentum_buffer")
        if buf is None:
            buf = state["momentum_buffer"] = g.clone()
        else:
            buf.mul_(mu).add_(g)
        return buf

    def _float_step(self, p, group):
        g = p.grad
        if group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        v = self._momentum(p, g, group["momentum"])
        if self.nesterov and group["momentum"]:
            v = g.add(v, alpha=group["momentum"])          # g + mu v (PyTorch's Nesterov form)
        p.add_(v, alpha=-self.effective_lr(group))

    def weight_decay_fixed(self, group: dict) -> tuple[int, int] | None:
        """(Lw, sw) with wd = Lw * 2^-sw, the weight decay of integer-stored tensors in the integer
        update (``spec.wd_bits``); None without weight decay."""
        wd = group["weight_decay"]
        return fixed_weight_decay(wd, self.spec.wd_bits) if wd else None

    def _int_grid_step(self, p, grid: GridParam, group, keys):
        """The all-integer update of one tensor (eoq.training.int_update): S = mu v + g + wd w exact,
        M = SR to M bits of S, U = SR(L M / 2^(sl + ew)), codes - U, the exponent policy."""
        gen, spec, state = self.generator, self.spec, self.state[p]
        g = apply_quant(grid.grad_quant, p.grad, gen, "G", grid.owner, key=keys[0])
        mu = group["momentum"]
        mant, sl = fixed_point(group["lr"] * grid.lr_scale, spec.lr_bits)
        e_w = int(grid.exponent)
        decay = self.weight_decay_fixed(group) if grid.weight_decay else None
        lead = 1 if mu else mant                   # without momentum the sum is formed times L directly
        terms = [(g, lead, 0)]
        if decay is not None:
            terms.append((p.detach(), decay[0] * lead, decay[1]))
        u_max = max_code(grid.update.bits)
        if mu:
            s_mu = momentum_shift(mu)
            buf = state.get("momentum_codes")
            if buf is not None:                      # v = codes * 2^lsb_v: (2^s - 1) v 2^-s exactly
                terms.append((buf, (1 << s_mu) - 1, s_mu - int(state["momentum_exponent"])))
            acc, e0 = int_update.accumulate(terms)
            if acc is None:
                codes_v, lsb = torch.zeros(p.shape, dtype=torch.int64), 1 - spec.M.bits
            else:
                codes_v, lsb = int_update.round_sq(acc, e0, spec.M.bits, keys[1])
            for obs in OBSERVERS:
                obs.after("M", spec.M, torch.zeros(p.shape, dtype=torch.float64) if acc is None
                          else acc.double().mul_(2.0 ** e0), codes_v.to(torch.float32).mul_(2.0 ** lsb),
                          grid.owner, lsb=lsb)
            if buf is None:
                buf = state["momentum_codes"] = torch.empty(p.shape, dtype=code_dtype(spec.M.bits))
                state["momentum_exponent"] = torch.zeros((), dtype=torch.int32)
            buf.copy_(codes_v)
            state["momentum_exponent"].fill_(lsb)
            y, f = codes_v * mant, sl + e_w - lsb
        else:
            acc, e0 = int_update.accumulate(terms)
            y, f = (torch.zeros(p.shape, dtype=torch.int64), 0) if acc is None else (acc, sl + e_w - e0)
        update = int_update.sr_clamped(y, f, u_max, keys[2])
        self._keep_update(p, update.to(torch.int8 if grid.update.bits <= 8 else torch.int32))
        k_max = max_code(grid.bits)
        codes = grid.code_values()
        if OBSERVERS:
            delta = y.double().mul_(2.0 ** -f)
            for obs in OBSERVERS:
                obs.after("U", grid.update, delta, update.to(torch.float32), grid.owner, weight_codes=codes,
                          weight=(float(grid.exponent), grid.bits))
        codes = codes.sub_(update.to(codes.dtype)).clamp_(-k_max, k_max)
        codes = self._rescale(codes, grid, k_max, keys[3])
        p.copy_(codes.mul_(torch.exp2(grid.exponent)).add_(0.0))     # + 0.0: a zero code is +0.0, never -0.0

    def _grid_step(self, p, grid: GridParam, group, keys):
        """The reference integer update of one tensor; keys = (G, M, U, rescale) random-bit keys."""
        gen, spec = self.generator, self.spec
        if spec.wd_bits:
            return self._int_grid_step(p, grid, group, keys)
        g = apply_quant(grid.grad_quant, p.grad, gen, "G", grid.owner, key=keys[0])
        if grid.weight_decay and group["weight_decay"]:
            g = g.add(p, alpha=group["weight_decay"])
        v = self._momentum(p, g, group["momentum"])
        if spec.M.enabled and group["momentum"]:
            v.copy_(apply_quant(spec.M, v, gen, "M", grid.owner, key=keys[1]))
        inv_lsb = torch.exp2(-grid.exponent)
        u_max = max_code(grid.update.bits)
        if spec.lr_bits:      # exact: the integer product L * v-code, then a shift (float64 holds it)
            delta = v.double() * (self.effective_lr(group, grid) * 2.0 ** -float(grid.exponent))
        else:
            delta = v * (self.effective_lr(group, grid) * inv_lsb)    # in units of the weight LSB
        update = round_scaled(delta, 0, u_max, grid.update.rounding, key=keys[2])
        self._keep_update(p, update.to(torch.int8 if grid.update.bits <= 8 else torch.int32))
        k_max = max_code(grid.bits)
        codes = (p * inv_lsb).round_()
        for obs in OBSERVERS:
            obs.after("U", grid.update, delta, update, grid.owner, weight_codes=codes,
                      weight=(float(grid.exponent), grid.bits))
        codes = codes.sub_(update).clamp_(-k_max, k_max)
        codes = self._rescale(codes, grid, k_max, keys[3])
        p.copy_(codes.mul_(torch.exp2(grid.exponent)))

    def _keep_update(self, p, update: torch.Tensor) -> None:
        """state["last_update"] := update, in place when it exists: the fused kernel's plan holds that
        tensor and writes every later update into it (a new tensor here would leave the state
        showing this step's update after the fused steps that follow)."""
        old = self.state[p].get("last_update")
        if old is not None and old.dtype == update.dtype and old.shape == update.shape:
            old.copy_(update)
        else:
            self.state[p]["last_update"] = update

    def _rescale(self, codes: torch.Tensor, grid: GridParam, k_max: int, key) -> torch.Tensor:
        """The exponent policy: up one bit on saturation (SR halving), down one when under-used."""
        policy = self.spec.weight_policy
        amax = float(codes.abs().max())
        if amax >= k_max and int_update.saturated(int((codes.abs() >= k_max).sum()), codes.numel(),
                                                  policy.saturate_frac):
            grid.exponent += 1
            return round_scaled(codes.double(), 1, k_max, "stochastic", key=key, codes=True).to(codes.dtype)
        if 0 < amax < 2 ** (grid.bits - 1 - policy.shrink_bits) and float(grid.exponent) > policy.min_exponent:
            grid.exponent -= 1
            return codes * 2
        return codes

    def momentum_values(self, p) -> torch.Tensor | None:
        """The momentum buffer of ``p`` as float32 values (None before its first step). The
        all-integer update keeps it as M-bit codes (``momentum_codes``, int8 for M8) and a
        per-tensor LSB exponent (``momentum_exponent``): v = codes * 2^exponent, exact in float32."""
        state = self.state.get(p, {})
        if "momentum_codes" in state:
            return state["momentum_codes"].to(torch.float32).mul_(2.0 ** int(state["momentum_exponent"]))
        return state.get("momentum_buffer")

    def state_dict(self):
        """torch's state dict with every momentum buffer as float32 values ("momentum_buffer"), the
        format of float updates and of checkpoints; codes held in memory are converted (exactly)."""
        sd = super().state_dict()
        params = [p for group in self.param_groups for p in group["params"]]
        state = {}
        for index, st in sd["state"].items():
            if "momentum_codes" in st:
                st = dict(st)
                st["momentum_buffer"] = self.momentum_values(params[index])
                del st["momentum_codes"], st["momentum_exponent"]
            state[index] = st
        return {**sd, "state": state}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._plan_cache = None                  # the kernel plan holds references to old buffers
        if not self.spec.wd_bits:
            return
        for p in [p for group in self.param_groups for p in group["params"] if id(p) in self.grid]:
            st = self.state.get(p, {})
            if "momentum_buffer" in st:          # values on M's grid -> codes and their LSB exponent
                st["momentum_codes"], lsb = int_update.momentum_codes(st.pop("momentum_buffer"), self.spec.M.bits)
                st["momentum_exponent"] = torch.tensor(lsb, dtype=torch.int32)

    def _fused_grid_step(self, items, keys) -> bool:
        """All integer-stored tensors in one kernel call; False when the kernel cannot take them."""
        if listening() or kernels.usable(items[0][0]) is None:
            return False
        plan = self._plan(items)
        if plan is None:
            return False
        params, bufs, buf_exps, exps, updates, rows, decays = plan
        grads, grad_exps = [], []
        integer = bool(self.spec.wd_bits)
        for (p, grid, group), decay in zip(items, decays):
            packed = self.packed.get(id(p))
            if packed is not None:               # int8 G codes, value codes * 2^exponent
                grads.append(packed[0])
                grad_exps.append(packed[1])
            else:
                grads.append(p.grad.add(p, alpha=group["weight_decay"]) if decay and not integer else p.grad.contiguous())
                grad_exps.append(0)
        self._step_columns(items, decays, rows, integer)
        try:
            kernels.load().grid_step(params, grads, grad_exps, bufs, buf_exps, exps, updates, rows, keys,
                                     float(items[0][2]["momentum"]))
        except RuntimeError as err:
            if "NaN or Inf" in str(err):
                raise QuantizationError("cannot quantize a tensor holding NaN or Inf: the training "
                                        "diverged (optimizer step)") from None
            raise
        rows[:, PlanCol.READY] = 1.0                       # momentum buffers now hold values
        return True

    def _step_columns(self, items, decays, rows, integer: bool) -> None:
        """The plan's columns that a schedule changes: the learning rate (and, for the all-integer
        update, L, s_l, Lw, s_w and s), written only when an lr, weight decay or the momentum moved
        since the last step; each distinct lr * lr_scale is rounded once."""
        key = tuple((g["lr"], g["weight_decay"], g["momentum"]) for g in self.param_groups)
        done = getattr(self, "_columns_done", None)
        if done is not None and done[0] == key and done[1] is rows:
            return
        lrs, cols = {}, []
        mu_shift = (momentum_shift(items[0][2]["momentum"]) or 0) if integer else 0
        for (p, grid, group), decay in zip(items, decays):
            scaled = (group["lr"], grid.lr_scale)
            if scaled not in lrs:
                lrs[scaled] = (self.effective_lr(group, grid),
                               fixed_point(group["lr"] * grid.lr_scale, self.spec.lr_bits) if integer else (0, 0))
            lr, (mant, sl) = lrs[scaled]
            wd = (self.weight_decay_fixed(group) if decay else None) if integer else None
            cols.append((lr, mant, sl, *(wd or (0, 0)), mu_shift))
        at = [PlanCol.LR, PlanCol.LR_MANT, PlanCol.LR_SHIFT, PlanCol.WD_MANT, PlanCol.WD_SHIFT, PlanCol.MU_SHIFT]
        rows[:, at] = torch.tensor(cols, dtype=torch.float64)
        self._columns_done = (key, rows)

    def _plan(self, items):
        """Per-tensor settings for the kernel, built once per set of tensors (None: not supported)."""
        ident = tuple(id(p) for p, _, _ in items)
        cached = getattr(self, "_plan_cache", None)
        if cached is not None and cached[0] == ident:
            return cached[1]
        spec, mu = self.spec, items[0][2]["momentum"]
        m_on = spec.M.enabled and spec.M.quantizer == "sq"
        if spec.M.enabled and not m_on:
            return None
        params, bufs, buf_exps, exps, updates, rows, decays = [], [], [], [], [], [], []
        integer, no_exponent = bool(spec.wd_bits), torch.zeros((), dtype=torch.int32)
        sat = int_update.saturation_ratio(spec.weight_policy.saturate_frac)
        for p, grid, group in items:
            gq, decay = grid.grad_quant, bool(grid.weight_decay and group["weight_decay"])
            if (gq.enabled and (gq.quantizer != "sq" or decay)) or group["momentum"] != mu \
                    or p.dtype != torch.float32 or not p.is_contiguous():
                return None
            state = self.state[p]
            if integer:
                ready = "momentum_codes" in state
                if mu and not ready:
                    state["momentum_codes"] = torch.zeros(p.shape, dtype=code_dtype(spec.M.bits))
                    state["momentum_exponent"] = torch.zeros((), dtype=torch.int32)
                bufs.append(state.get("momentum_codes", p))
                buf_exps.append(state.get("momentum_exponent", no_exponent))
            else:
                ready = "momentum_buffer" in state
                if mu and not ready:
                    state["momentum_buffer"] = torch.empty_like(p)
                bufs.append(state.get("momentum_buffer", p))
                buf_exps.append(no_exponent)
            u_dtype = torch.int8 if grid.update.bits <= 8 else torch.int32
            if state.get("last_update") is None or state["last_update"].dtype != u_dtype:
                state["last_update"] = torch.empty(p.shape, dtype=u_dtype)
            params.append(p)
            exps.append(grid.exponent)
            updates.append(state["last_update"])
            decays.append(decay)
            row = {PlanCol.LR: 0.0, PlanCol.BITS: grid.bits, PlanCol.U_BITS: grid.update.bits,
                   PlanCol.U_MODE: grid.update.rounding.code, PlanCol.G_BITS: gq.bits or 0,
                   PlanCol.G_MODE: gq.rounding.code, PlanCol.M_BITS: spec.M.bits if m_on else 0,
                   PlanCol.M_MODE: spec.M.rounding.code, PlanCol.SAT_NUM: sat[0], PlanCol.SAT_DEN: sat[1],
                   PlanCol.SHRINK: spec.weight_policy.shrink_bits, PlanCol.READY: float(ready),
                   PlanCol.EXACT_LR: float(bool(spec.lr_bits)), PlanCol.MIN_EXP: spec.weight_policy.min_exponent,
                   PlanCol.INT_UPDATE: float(bool(spec.wd_bits)), PlanCol.LR_MANT: 0.0, PlanCol.LR_SHIFT: 0.0,
                   PlanCol.WD_MANT: 0.0, PlanCol.WD_SHIFT: 0.0, PlanCol.MU_SHIFT: 0.0}
            rows.append([row[c] for c in PlanCol])
        plan = (params, bufs, buf_exps, exps, updates, torch.tensor(rows, dtype=torch.float64), decays)
        self._plan_cache = (ident, plan)
        return plan

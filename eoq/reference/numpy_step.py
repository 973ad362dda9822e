"""An executable reference of one EOQ integer training step, in NumPy only (no torch).

    python eoq/reference/numpy_step.py DIR        # DIR from `eoq golden`: recompute and compare

It reads a golden file (``eoq golden``: golden.npz + manifest.json) of a Fixup ResNet (resnet20/32/
44/56/110, resnet18/34/50) under the ``eoq`` preset, takes only its *inputs* (the first layer's input
codes, the labels, the stored codes, exponents and momentum buffers, the learning rates, the
random-bit keys, and dL/dlogits, the one float operation of a step) and recomputes every other
tensor of every recorded step, chaining the steps (the second starts from the weights the first
computed). It is the second, independent implementation of the integer engine, written for
reading: every number is an integer array and an exponent (value = codes * 2^e), every op exact
integer arithmetic, and the only roundings are the four of the method:

    SQ(x, k)   LSB e = round(log2 max|x|) + 1 - k (exactly: see exponent_of), codes clamped to
               +-(2^(k-1)-1); nearest: half to even; stochastic: floor((floor(x*2^(16-e)) + b) / 2^16)
               with b the 16-bit counter hash of eoq.quant.rng (random_bits)
    FX(x, 16)  the residual stream and its error: the smallest e that holds max|x| in 16 bits,
               round half to even
    float32    the Fixup scalars' gradients (an exact sum, rounded once)
    SR         the momentum buffer (SQ of the exact sum mu v + g + wd w), the update and the
               exponent policy's halving

The integer engine forms the elementwise sums in float64 and hands accumulators on as float32;
they equal this reference's exact integers within the datapath widths the README tabulates
("Golden vectors"): |acc| < 2^24 between layers (K <= 1,040), every sum within 53 bits (the
exponent policy's floor at 2^-40 keeps a drifting Fixup bias there), scalar gradient sums < 2^53.

Every recorded operation declares its output width as the method states it (``Step.declared``:
8-bit codes, int32 accumulators, int64 weight-gradient sums, the 16-bit stream, the tail's exact
sum within 53 bits, the update's 64-bit accumulator, M and U at the spec's widths) and asserts it
(WidthError, exit 2), as the inputs are checked at theirs; a run prints per operation the widest
value reached against the declared width.

Convolutions are written as sums over kernel taps of integer matrix products (int64), the
transposed convolution as a scatter: not the engine's im2col or phase decomposition. The layout
comes from the manifest's ``layers`` (each conv's kernel, stride and padding; each block's convs
and shortcut): the CIFAR ResNets (3x3 stem, option-A shortcuts) and the ImageNet ResNets 18/34/50
(7x7/2 stem and 3x3/2 max-pool, or the 3x3/1 stem of 32x32 inputs; basic or bottleneck blocks;
1x1 projection shortcuts), with global average pooling over a power-of-two area. The max-pool
takes each window's first maximum in row-major tap order and routes its error there.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

M32 = 0xFFFFFFFF
MIN_EXPONENT = -100


# ----------------------------------------------------------------------------- random bits
def lowbias32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def random_bits(n: int, key) -> np.ndarray:
    """b_i in [0, 2^16) for the row-major indices i < n: two per hash of the pair index."""
    k0, k1 = (int(k) for k in key)
    i = np.arange(n, dtype=np.uint64)
    h = lowbias32(lowbias32(((i >> np.uint64(1)) + np.uint64(k0)) & np.uint64(M32)) ^ np.uint64(k1))
    return np.where(i & np.uint64(1), h & np.uint64(0xFFFF), h >> np.uint64(16)).astype(np.int64)


# ----------------------------------------------------------------------------- exact numbers
def shl(v: np.ndarray, s: int) -> np.ndarray:
    """v * 2^s for s >= 0: int64, or Python integers (an object array) where int64 would overflow
    (terms on grids far apart, such as a Fixup bias whose exponent has drifted down)."""
    if s < 0:
        raise ValueError("shl: negative shift")
    if v.dtype != object and v.size and s and int(np.abs(v).max()).bit_length() + s > 62:
        v = v.astype(object)
    return v << s


def small(v: np.ndarray) -> np.ndarray:
    """Codes that fit int64 (after a rounding) back from Python integers."""
    return v.astype(np.int64) if v.dtype == object else v


def align(*terms):
    """Terms (ints, exponent) on their common (smallest) exponent: (list of int64 arrays, e)."""
    e = min(t[1] for t in terms)
    return [shl(v if getattr(v, "dtype", None) == object else np.asarray(v, dtype=np.int64), ev - e)
            for v, ev in terms], e


def add(*terms):
    vs, e = align(*terms)
    out = vs[0]
    for v in vs[1:]:
        out = out + v
    return out, e


def exponent_of(m: int, e: int) -> int:
    """round(log2(m * 2^e)) for an integer m >= 0, exactly: with m * 2^e = f * 2^p, f in [1/2, 1),
    p when f >= 2^-1/2 (2 m^2 >= 4^bitlength), else p - 1; 0 for m = 0; at least MIN_EXPONENT."""
    if m == 0:
        return 0
    bl = m.bit_length()
    p = bl + e
    return max(p if 2 * m * m >= 1 << (2 * bl) else p - 1, MIN_EXPONENT)


def round_shift(v: np.ndarray, s: int) -> np.ndarray:
    """round(v / 2^s), half to even (s > 0), or v * 2^-s (s <= 0)."""
    if s <= 0:
        return shl(v, -s)
    q = v >> s
    r = v - (q << s)
    half = 1 << (s - 1)
    return q + ((r > half) | ((r == half) & ((q & 1) == 1)))


def sr_shift(v: np.ndarray, s: int, key) -> np.ndarray:
    """floor((floor(v * 2^(16 - s)) + b) / 2^16): stochastic rounding of v / 2^s."""
    t = shl(v, 16 - s) if s <= 16 else v >> (s - 16)
    return (t + random_bits(v.size, key).reshape(v.shape)) >> 16


def sq(x, bits: int, key=None):
    """SQ(x, bits) of an exact value x = (ints, e): (codes, LSB exponent); key: stochastic rounding."""
    v, e = x
    m = (1 << (bits - 1)) - 1
    lsb = exponent_of(int(np.abs(v).max()) if v.size else 0, e) + 1 - bits
    codes = round_shift(v, lsb - e) if key is None else sr_shift(v, lsb - e, key)
    return small(np.clip(codes, -m, m)), lsb


def fx(x, bits: int = 16):
    """FX(x, bits): the smallest exponent E with max|x| <= (2^(bits-1)-1) 2^E (at least
    MIN_EXPONENT; 0 for x = 0), round half to even."""
    v, e = x
    m, top = int(np.abs(v).max()) if v.size else 0, (1 << (bits - 1)) - 1
    if m == 0:
        return np.zeros_like(v), 0

    def holds(s):
        return m <= top << s if s >= 0 else m << -s <= top

    s = m.bit_length() - (bits - 1)
    while not holds(s):
        s += 1
    while holds(s - 1):
        s -= 1
    s = max(e + s, MIN_EXPONENT) - e
    return small(round_shift(v, s)), e + s


def canonical(x):
    """An exact value (ints, e) on its own grid: the common trailing zero bits moved into the
    exponent (0 for all zeros), the form the golden file records intermediates in."""
    v, e = x
    v = small(np.asarray(v))
    nz = np.abs(v[v != 0])
    if not nz.size:
        return np.zeros_like(v), 0
    k = int(np.log2((nz & -nz).min()))        # the lowest set bit among them
    return v >> k, e + k


def f32_exact(x: np.ndarray) -> tuple[np.ndarray, int]:
    """float32 values as exact (int64, exponent): on the grid of the smallest one's last bit."""
    x = np.asarray(x, dtype=np.float32)
    nz = x[x != 0].astype(np.float64)
    e = int(np.frexp(nz)[1].min()) - 24 if nz.size else 0
    v = np.ldexp(x.astype(np.float64), -e)
    if np.any(np.abs(v) > 2.0 ** 62) or np.any(v != np.round(v)):
        raise OverflowError("float32 values span too many octaves for int64")
    return v.astype(np.int64), e


def f32_of(m: int, e: int) -> np.float32:
    """The exact value m * 2^e (Python integers) rounded once to float32, half to even."""
    mag, s = abs(m), max(abs(m).bit_length() - 24, 0)
    q, r = mag >> s, mag & ((1 << s) - 1)
    if s and (r > 1 << (s - 1) or (r == 1 << (s - 1) and q & 1)):
        q += 1
    return np.float32(math.ldexp(q if m >= 0 else -q, s + e))


def to_f32(v, e: int) -> np.ndarray:
    """Exact values v * 2^e, each rounded once to float32."""
    v = np.asarray(v)
    return np.array([f32_of(int(m), e) for m in v.ravel()], dtype=np.float32).reshape(v.shape)


def value_f32(x) -> np.ndarray:
    """An exact value known to fit float32 (the engine's float32 tensors between layers)."""
    out = to_f32(*x)
    v, e = x
    if not np.array_equal(np.ldexp(out.astype(np.float64), -e), v.astype(np.float64)):
        raise OverflowError("a value between layers does not fit float32")
    return out


# ----------------------------------------------------------------------------- convolutions
def conv(a: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """out[n, o, y, x] = sum_{c, i, j} a_pad[n, c, s y + i, s x + j] w[o, c, i, j] (int64)."""
    n, c, h, wd = a.shape
    o, _, kh, kw = w.shape
    ap = np.pad(a.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = ap[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j].astype(np.int64))
    return out


def conv_input_grad(e: np.ndarray, w: np.ndarray, stride: int, pad: int, hw) -> np.ndarray:
    """dx[n, c, s y + i - p, s x + j - p] += e[n, o, y, x] w[o, c, i, j]: the transposed conv as a scatter."""
    n, o, ho, wo = e.shape
    _, c, kh, kw = w.shape
    dxp = np.zeros((n, c, hw[0] + 2 * pad + stride, hw[1] + 2 * pad + stride), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += \
                np.einsum("nohw,oc->nchw", e.astype(np.int64), w[:, :, i, j].astype(np.int64))
    return dxp[:, :, pad:pad + hw[0], pad:pad + hw[1]]


def conv_weight_grad(e: np.ndarray, a: np.ndarray, stride: int, pad: int, kh: int, kw: int) -> np.ndarray:
    """dw[o, c, i, j] = sum_{n, y, x} e[n, o, y, x] a_pad[n, c, s y + i, s x + j] (int64)."""
    n, o, ho, wo = e.shape
    ap = np.pad(a.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    out = np.zeros((o, a.shape[1], kh, kw), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            patch = ap[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            out[:, :, i, j] = np.einsum("nohw,nchw->oc", e.astype(np.int64), patch)
    return out


def max_pool(x: np.ndarray, k: int, stride: int, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """out[n, c, y, x] = max of the k x k window at (s y - p, s x - p) (positions outside the input
    are not candidates), and which tap gave it: the first maximum in row-major tap order (ties are
    common after a ReLU; the first is the one the backward routes the error to)."""
    n, c, h, w = x.shape
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    low = np.iinfo(np.int64).min
    xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=low)
    best = np.full((n, c, ho, wo), low, dtype=np.int64)
    arg = np.zeros((n, c, ho, wo), dtype=np.int64)
    for i in range(k):
        for j in range(k):
            v = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            take = v > best
            best, arg = np.where(take, v, best), np.where(take, i * k + j, arg)
    return best, np.stack([arg, np.full_like(arg, k), np.full_like(arg, stride), np.full_like(arg, pad)])


def max_pool_backward(err: np.ndarray, argmax: np.ndarray, shape) -> np.ndarray:
    """The max-pool's input error: each output's error added to the position its window's max came
    from (windows overlap: an input can receive several, an exact integer sum)."""
    arg, k, stride, pad = argmax[0], int(argmax[1].flat[0]), int(argmax[2].flat[0]), int(argmax[3].flat[0])
    n, c, h, w = shape
    out = np.zeros((n, c, h + 2 * pad + k, w + 2 * pad + k), dtype=np.int64)
    ho, wo = err.shape[2:]
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride] += np.where(arg == i * k + j, err, 0)
    return out[:, :, pad:pad + h, pad:pad + w]


def shortcut_kind(text: str) -> str:
    """The manifest's shortcut description as 'identity', 'A' or 'B' (NotCovered otherwise)."""
    if text == "identity":
        return "identity"
    if text.startswith("option A"):
        return "A"
    if text.startswith("1x1 projection"):
        return "B"
    raise NotCovered(f"a block shortcut of kind {text!r}")


# ----------------------------------------------------------------------------- the network
class Step:
    """One training step of a Fixup ResNet: ``run`` fills ``out`` (name -> array, exponent)."""

    def __init__(self, golden, step: int, state: dict, config: dict, exponents: dict | None = None,
                 layers: dict | None = None):
        self.g, self.t, self.state, self.cfg = golden, step, state, config
        self.exponents = exponents or {}          # the golden manifest's exponent of every tensor
        self.layers = layers or {}                # the manifest's network layout (name -> geometry)
        self.out: dict = {}
        spec = config["preset"]
        self.bits = {k: spec[k]["bits"] for k in ("A", "E", "G", "U", "M")}
        self.stream = spec["stream_bits"]
        self.widths, self.reached = self.declared(), {}

    def key(self, name):
        return self.g[f"s{self.t}/{name}.key"]

    def declared(self) -> dict:
        """Each operation's output width, signed bits, as the method states it (README step and
        update tables, SPEC): codes of the quantizers, the int32 GEMM accumulators, the int64
        weight-gradient sums, the 16-bit stream, the tail's exact sum within 53 bits, the update's
        64-bit accumulator, M and U at the spec's widths, the stored codes."""
        b = self.bits
        return {"A": b["A"], "E": b["E"], "G": b["G"], "acc": 32, "dX_acc": 32, "dW_acc": 64,
                "stream": self.stream, "dstream": self.stream, "pre": 54, "S": 64, "M": b["M"], "U": b["U"],
                "stepped": 8, "new_codes": 8, "policy": 2}

    def put(self, name, codes, e=None):
        """Record a computed tensor; an integer one must fit its operation's declared width
        (WidthError otherwise), and the widest value per operation is kept (``reached``)."""
        codes = np.asarray(codes)
        op = name.rsplit(".", 1)[-1]
        bits = self.widths.get(op)
        if bits is not None and codes.size and codes.dtype != np.float32:
            top = int(np.abs(codes.astype(object) if codes.dtype == object else codes).max())
            if top > (1 << (bits - 1)) - 1:
                raise WidthError(f"s{self.t}/{name}: |value| {top} does not fit the {bits} bits its operation "
                                 f"({op}) declares")
            self.reached[op] = max(self.reached.get(op, 0), top.bit_length() + 1)
        self.out[f"s{self.t}/{name}"] = (codes, e)

    def w(self, name):
        return self.state[name]["codes"], self.state[name]["exp"]

    def scalar(self, name):
        codes, e = self.w(name + ".value")
        return codes.astype(np.int64), e

    def layer_forward(self, name, x, stride, pad, codes_in=None):
        """A = SQ(x) (or the given input codes), acc = conv(A, W): returns (acc, its exponent)."""
        a, ea = codes_in if codes_in is not None else sq(x, self.bits["A"])
        w, ew = self.w(name + ".weight")
        acc = conv(a, w, stride, pad)
        if codes_in is None:
            self.put(name + ".A", a, ea)
        self.put(name + ".acc", acc, ea + ew)
        self.saved[name] = (a, ea, stride, pad)
        return acc, ea + ew

    def layer_backward(self, name, err, input_grad=True):
        """E = SQ_sr(err); dX = E conv^T W; dW = E (x) A, G = SQ_sr(dW): returns (dX, exponent)."""
        a, ea, stride, pad = self.saved[name]
        w, ew = self.w(name + ".weight")
        e, ee = sq(err, self.bits["E"], self.key(name + ".E"))
        self.put(name + ".E", e, ee)
        dx = None
        if input_grad:
            dx = (conv_input_grad(e, w, stride, pad, a.shape[2:]), ee + ew)
            self.put(name + ".dX_acc", dx[0], dx[1])
        dw = conv_weight_grad(e, a, stride, pad, w.shape[2], w.shape[3])
        self.put(name + ".dW_acc", dw, ea + ee)
        self.grads[name + ".weight"] = sq((dw, ea + ee), self.bits["G"], self.key(name + ".G"))
        self.put(name + ".G", *self.grads[name + ".weight"])
        return dx

    def scalar_grad(self, name, total):
        """A Fixup scalar's gradient: an exact sum, rounded once to float32 (a second use adds in float32)."""
        v = np.array([f32_of(int(total[0].sum()), total[1])], dtype=np.float32)
        prev = self.sgrads.get(name)
        self.sgrads[name] = v if prev is None else (prev + v).astype(np.float32)

    def run(self):
        """Forward, loss gradient (from the golden file), backward, update: the layout (every conv's
        kernel, stride and padding, the max-pool, each block's convs and shortcut) is the
        manifest's ``layers``."""
        self.saved, self.grads, self.sgrads = {}, {}, {}
        lay = self.layers
        a0 = (self.g[f"s{self.t}/conv1.A"].astype(np.int64), self.exp("conv1.A"))
        # ---- forward: the stem, conv1 -> + b -> ReLU (-> max-pool) -> FX16
        c1 = lay["conv1"]
        acc, e = self.layer_forward("conv1", None, c1["stride"], c1["padding"], codes_in=a0)
        pre0 = add((acc, e), self.scalar("bias1"))
        r0 = np.maximum(pre0[0], 0)
        pool = lay.get("maxpool")
        if pool:
            r0, argmax = max_pool(r0, pool["kernel"], pool["stride"], pool["padding"])
        x = fx((r0, pre0[1]), self.stream)
        self.put("conv1.stream", *x)
        tape = []
        for b in self.blocks:
            x, record = self.block_forward(b, x)
            tape.append(record)
        hw = x[0].shape[2] * x[0].shape[3]
        if hw & (hw - 1):
            raise NotCovered(f"global average pooling over {hw} positions is not a shift")
        pooled = (x[0].sum(axis=(2, 3)), x[1] - (hw.bit_length() - 1))     # the sum, then a shift
        a_fc, ea = sq(add(pooled, self.scalar("bias2")), self.bits["A"])
        w_fc, ew = self.w("fc.weight")
        acc_fc = a_fc @ w_fc.astype(np.int64).T
        self.put("fc.A", a_fc, ea)
        self.put("fc.acc", acc_fc, ea + ew)
        b_codes, eb = self.w("fc.bias")
        logits = value_f32((acc_fc, ea + ew)) + value_f32((b_codes.astype(np.int64), eb))
        self.put("logits", logits.astype(np.float32))
        # ---- loss: the one float operation; the golden file's dL/dlogits is used from here on
        dlogits = self.g[f"s{self.t}/dlogits"]
        self.softmax_gap = softmax_gap(logits, self.g[f"s{self.t}/labels"], dlogits)
        # ---- backward
        e, ee = sq(f32_exact(dlogits), self.bits["E"], self.key("fc.E"))
        self.put("fc.E", e, ee)
        dx = (e @ w_fc.astype(np.int64), ee + ew)
        self.put("fc.dX_acc", *dx)
        dw = (e.T @ a_fc, ea + ee)
        self.put("fc.dW_acc", *dw)
        self.grads["fc.weight"] = sq(dw, self.bits["G"], self.key("fc.G"))
        self.put("fc.G", *self.grads["fc.weight"])
        self.sgrads["fc.bias"] = to_f32(e.sum(axis=0), ee)
        self.scalar_grad("bias2", dx)
        n, c, h, wd = x[0].shape
        err = fx((np.broadcast_to(dx[0][:, :, None, None], (n, c, h, wd)).copy(), dx[1] - (hw.bit_length() - 1)),
                 self.stream)                                                # avgpool backward: a shift
        self.put("fc.dstream", *err)
        for record in reversed(tape):
            err = self.block_backward(record, err)
        if pool:                                                             # to each window's first max
            err = (max_pool_backward(err[0], argmax, pre0[0].shape), err[1])
        g0 = (np.where(pre0[0] > 0, err[0], 0), err[1])
        self.scalar_grad("bias1", g0)
        self.layer_backward("conv1", g0, input_grad=False)
        for name, v in self.sgrads.items():
            self.put(name + ("" if name.startswith("fc.") else ".value") + ".grad", v)
        self.update()

    @property
    def blocks(self):
        return [name for name, d in self.layers.items() if d["kind"] == "block"]

    def block_forward(self, b, x):
        """y = FX16(relu(conv_m(h_m + b_ma) * scale + b_mb + identity)), h_1 = x and
        h_(i+1) = relu(conv_i(h_i + b_ia) + b_ib); identity = x, option A of x + b_1a, or the 1x1
        projection conv of SQ(x + b_1a). Returns (y, what the backward needs)."""
        lay = self.layers
        m = lay[b]["convs"]
        convs = [f"{b}.convs.{i}" for i in range(m)]
        b_in = [self.scalar(f"{b}.biases_in.{i}") for i in range(m)]
        b_out = [self.scalar(f"{b}.biases_out.{i}") for i in range(m)]
        s = self.scalar(b + ".scale")
        kind = shortcut_kind(lay[b]["shortcut"])
        stride = math.prod(lay[c]["stride"] for c in convs)
        cin = x[0].shape[1]
        if kind == "identity":
            identity = x
        elif kind == "A":               # pad(x[:, :, ::s, ::s] + b_1a), zero channels
            sub = add((x[0][:, :, ::stride, ::stride], x[1]), b_in[0])
            cout = lay[convs[-1]]["out"]
            identity = (np.pad(sub[0], ((0, 0), (0, cout - cin), (0, 0), (0, 0))), sub[1])
        else:                           # B: a 1x1 conv of A = SQ(x + b_1a)
            sc = lay[b + ".shortcut"]
            identity = self.layer_forward(b + ".shortcut", add(x, b_in[0]), sc["stride"], sc["padding"])
        h, pres = add(x, b_in[0]), []
        for i, c in enumerate(convs):
            acc, e = self.layer_forward(c, h, lay[c]["stride"], lay[c]["padding"])
            if i < m - 1:
                pre = add((acc, e), b_out[i])
                pres.append(pre)
                h = add((np.maximum(pre[0], 0), pre[1]), b_in[i + 1])
        pre = add((acc * s[0], e + s[1]), b_out[-1], identity)
        self.put(convs[-1] + ".pre", *canonical(pre))
        y = fx((np.maximum(pre[0], 0), pre[1]), self.stream)
        self.put(convs[-1] + ".stream", *y)
        return y, (b, convs, kind, stride, x, pres, (acc, e), pre)

    def block_backward(self, record, err):
        """The block's backward from the error of its output; returns FX16(branch error + shortcut error)."""
        b, convs, kind, stride, x_in, pres, (acc, e), pre = record
        g = (np.where(pre[0] > 0, err[0], 0), err[1])                      # the block's ReLU
        self.scalar_grad(b + f".biases_out.{len(convs) - 1}", g)
        self.scalar_grad(b + ".scale", (g[0] * acc, g[1] + e))
        s = self.scalar(b + ".scale")
        d = self.layer_backward(convs[-1], (g[0] * s[0], g[1] + s[1]))
        for i in reversed(range(len(convs) - 1)):
            self.scalar_grad(b + f".biases_in.{i + 1}", d)
            h = (np.where(pres[i][0] > 0, d[0], 0), d[1])
            self.scalar_grad(b + f".biases_out.{i}", h)
            d = self.layer_backward(convs[i], h)
        self.scalar_grad(b + ".biases_in.0", d)
        last = convs[0]
        cin = x_in[0].shape[1]
        if kind == "identity":
            gid = g
        elif kind == "A":               # the kept channels, scattered to the kept pixels
            kept = g[0][:, :cin]
            self.scalar_grad(b + ".biases_in.0", (kept, g[1]))
            full = np.zeros(x_in[0].shape, dtype=np.int64)
            full[:, :, ::stride, ::stride] = kept
            gid = (full, g[1])
        else:                           # the projection's input error; b_1a's second use
            gid = self.layer_backward(b + ".shortcut", g)
            self.scalar_grad(b + ".biases_in.0", gid)
            last = b + ".shortcut"
        err = fx(add(d, gid), self.stream)
        self.put(last + ".dstream", *err)
        return err

    def exp(self, name):
        return self.exponents[f"s{self.t}/{name}"]

    # ------------------------------------------------------------------------- the optimizer
    def update(self):
        """The all-integer update (README step table, SPEC): per stored tensor,
        S = mu v + g + wd w exact (64-bit accumulator), M = SR to M bits of S, U = SR(L M / 2^(sl+ew))
        clamped, codes - U clamped, then the exponent policy (an integer saturation test)."""
        cfg, spec = self.cfg, self.cfg["preset"]
        keys = self.g[f"s{self.t}/optimizer.keys"]
        mu = cfg["momentum"]
        s_mu = momentum_shift(mu)
        wd = fixed_point(cfg["weight_decay"], spec["wd_bits"]) if cfg["weight_decay"] else None
        u_max, policy = (1 << (self.bits["U"] - 1)) - 1, spec["weight_policy"]
        num, den = ratio(policy["saturate_frac"])
        for row, name in enumerate(cfg["stored"]):
            st = self.state[name]
            k = keys[row]
            codes, e, bits = st["codes"].astype(np.int64), st["exp"], st["bits"]
            k_max = (1 << (bits - 1)) - 1
            layer = name.rsplit(".", 1)[0]
            mant, shift = (int(v) for v in self.g[f"s{self.t}/{name}.lr"])
            lead = 1 if s_mu else mant            # no momentum: the sum is formed times L
            if name.endswith(".weight"):          # G from the layer, plus weight decay
                gq, eg = self.grads[name]
                terms = [(gq * lead, eg)]
                if wd is not None:
                    terms.append((codes * (wd[0] * lead), e - wd[1]))
            else:                                 # the optimizer's G of a bias or a Fixup scalar
                gr = self.sgrads["fc.bias" if name == "fc.bias" else layer]
                gq, eg = sq(f32_exact(gr), self.bits["G"], k[0])
                self.put(name + ".G", gq, eg)
                terms = [(gq * lead, eg)]
            if s_mu:
                if st.get("m") is not None:
                    mv, ev = st["m"]
                    terms.append((mv * ((1 << s_mu) - 1), ev - s_mu))
            acc, e0 = accumulate(terms)
            self.put(name + ".S", np.zeros_like(codes) if acc is None else acc, e0)
            if s_mu:
                m = sq((acc, e0), self.bits["M"], k[1]) if acc is not None \
                    else (np.zeros_like(codes), 1 - self.bits["M"])
                self.put(name + ".M", *m)
                y, f = m[0] * mant, shift + e - m[1]
            else:
                m = None
                y, f = (np.zeros_like(codes), 0) if acc is None else (acc, shift + e - e0)
            u = sr_clamped(y, f, u_max, k[2])
            self.put(name + ".U", u, e)
            codes = np.clip(codes - u, -k_max, k_max)
            self.put(name + ".stepped", codes, e)
            before = e
            amax = int(np.abs(codes).max())
            count = int(np.count_nonzero(np.abs(codes) >= k_max))
            if amax >= k_max and count * den > num * codes.size:
                e += 1                                                       # SR halving
                codes = sr_shift(codes, 1, k[3])                             # |codes / 2| < k_max
            elif 0 < amax < 1 << (bits - 1 - policy["shrink_bits"]) and e > policy.get("min_exponent", MIN_EXPONENT):
                e -= 1
                codes = codes * 2
            self.put(name + ".policy", np.array([e - before], dtype=np.int8))
            self.put(name + ".new_codes", codes, e)
            st["codes"], st["exp"], st["m"] = codes, e, m


# ----------------------------------------------------------------------------- the update's arithmetic
def fixed_point(x: float, bits: int) -> tuple[int, int]:
    """(L, s): L * 2^-s nearest to x > 0 with 2^(bits-1) <= L < 2^bits (half to even)."""
    s = bits - 1 - math.floor(math.log2(x))
    mant = round(x * 2.0 ** s)
    if mant >= 1 << bits:
        mant, s = mant // 2, s - 1
    elif mant < 1 << (bits - 1):
        mant, s = round(x * 2.0 ** (s + 1)), s + 1
    return mant, s


def momentum_shift(mu: float) -> int:
    """s with mu = 1 - 2^-s; 0 for mu = 0 (no momentum)."""
    if mu == 0:
        return 0
    s = -math.log2(1 - mu)
    if s != round(s):
        raise ValueError(f"momentum {mu} is not 1 - 2^-s")
    return int(s)


def ratio(frac: float) -> tuple[int, int]:
    """The decimal fraction as (num, den): 0.05 -> (1, 20)."""
    from fractions import Fraction
    r = Fraction(repr(float(frac)))
    return r.numerator, r.denominator


def accumulate(terms):
    """(S, E0) of exact terms (ints, e): the 64-bit accumulator's LSB is 2^E0, E0 = T + 2 - 62 with 2^T
    above every term's magnitude (bitlength + e); a term's bits below 2^E0 are dropped (floor).
    (None, 0) when every term is zero."""
    tops = [int(np.abs(v).max()).bit_length() + ev for v, ev in terms if v.size and np.abs(v).max() > 0]
    if not tops:
        return None, 0
    e0 = max(tops) + 2 - 62
    total = np.zeros(np.shape(terms[0][0]), dtype=np.int64)
    for v, ev in terms:          # each aligned term is below 2^60 in magnitude, their sum below 2^62
        v = small(np.asarray(v))
        total = total + (v << (ev - e0) if ev >= e0 else v >> min(e0 - ev, 63))   # >> 63: floor to 0 or -1
    if int(np.abs(total).max()) >= 1 << 62:
        raise OverflowError("the update accumulator overflowed its 64 bits")
    return total, e0


def sr_clamped(y: np.ndarray, f: int, m: int, key) -> np.ndarray:
    """clamp(SR(y / 2^f), -m, m), exact (Python integers where needed)."""
    y = np.asarray(y)
    top = int(np.abs(y).max()).bit_length() if y.size else 0
    if top + 16 + max(-f, 0) > 62:       # Python integers only where int64 could overflow
        y = y.astype(object)
    if f >= 0:
        t = (y << 16) >> f if f <= 16 else y >> (f - 16)
        bits = random_bits(y.size, key).reshape(y.shape)
        out = (t + (bits.astype(object) if y.dtype == object else bits)) >> 16
    else:
        out = y << -f
    return np.clip(out, -m, m).astype(np.int64)


def softmax_gap(logits, labels, dlogits) -> float:
    """max |(softmax - onehot) / batch (float64) - the golden dL/dlogits|: the float op, checked loosely."""
    z = logits.astype(np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(labels)), labels] -= 1
    return float(np.abs(p / len(labels) - dlogits).max())


# ----------------------------------------------------------------------------- golden files
class NotCovered(ValueError):
    """A golden file of a network this reference does not implement."""


class BadGolden(ValueError):
    """A golden folder that cannot be read: missing, corrupt or truncated files, another format
    version, a tensor the manifest lists but the npz lacks."""


FORMAT = "eoq-golden-2"


def load(folder):
    folder = Path(folder)
    import zipfile
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        raise BadGolden(f"{folder}: no manifest.json (eoq golden --out DIR writes one)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadGolden(f"{folder}/manifest.json is not valid JSON ({err.__class__.__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else None
        raise BadGolden(f"{folder}: manifest format {got!r}, this reference reads {FORMAT!r}")
    try:
        with np.load(folder / "golden.npz") as z:
            arrays = {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise BadGolden(f"{folder}: no golden.npz") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise BadGolden(f"{folder}/golden.npz is corrupt or truncated ({err.__class__.__name__})") from None
    missing = [e["name"] for e in manifest.get("tensors", []) if e.get("name") not in arrays]
    if missing:
        raise BadGolden(f"{folder}/golden.npz lacks {len(missing)} tensor(s) the manifest lists, e.g. {missing[0]!r}")
    return arrays, manifest


def initial_state(g, manifest, config):
    exps = {e["name"]: e["exponent"] for e in manifest["tensors"]}
    state = {}
    for name in config["stored"]:
        m = f"s0/{name}.M_in"
        state[name] = {"codes": g[f"s0/{name}.codes"].astype(np.int64), "exp": exps[f"s0/{name}.codes"],
                       "bits": 8, "m": (g[m].astype(np.int64), exps[m]) if m in g else None}
    return state, exps


def as_buffer(m, bits: int):
    """Momentum codes (SQ, LSB e) as the golden file stores a buffer: codes on the grid its max
    implies, round(log2 max|v|) + 1 - bits, or one coarser where the codes would need more than
    ``bits`` bits (never above e: exact)."""
    codes, e = m
    top = int(np.abs(codes).max())
    lsb = exponent_of(top, e) + 1 - bits
    if top << (e - lsb) > (1 << (bits - 1)) - 1:    # that grid would need one bit more: one coarser
        lsb += 1
    return shl(codes, e - lsb), lsb


def recompute(folder):
    """Every recomputed tensor (name -> (array, exponent)), the golden arrays, the manifest, the softmax
    gaps, and per operation (widest value reached, its declared width) in signed bits."""
    g, manifest = load(folder)
    config = json.loads(str(g["config"]))
    if not all(config["preset"].get(k) for k in ("stream_bits", "lr_bits", "wd_bits")):
        raise ValueError("the reference covers the eoq preset (fixed-point stream, learning rate and weight decay)")
    state, exps = initial_state(g, manifest, config)
    m_bits = config["preset"]["M"]["bits"]
    for name, st in state.items():          # the inputs at their widths: 8-bit stored codes, M-bit buffers
        for what, v, bits in (("codes", st["codes"], st["bits"]), ("M_in", st["m"][0] if st["m"] else None, m_bits)):
            if v is not None and v.size and int(np.abs(v).max()) > (1 << (bits - 1)) - 1:
                raise WidthError(f"s0/{name}.{what}: an input wider than its {bits} bits")
    layers = manifest.get("layers") or {}
    if "conv1" not in layers or "fc" not in layers:
        raise NotCovered(f"the manifest describes no ResNet layout (layers: conv1 ... fc) for {config['model']}")
    for name, d in layers.items():
        if d.get("kind") not in ("conv", "linear", "maxpool", "block"):
            raise NotCovered(f"layer {name!r} of kind {d.get('kind')!r}")
        if d["kind"] == "block":
            shortcut_kind(d.get("shortcut", ""))
    out, gaps, reached = {}, [], {}
    for t in range(config["steps"]):
        if t:                     # the state this reference carried over, in the golden file's form
            for name, st in state.items():
                out[f"s{t}/{name}.codes"] = (st["codes"], st["exp"])
                if st["m"] is not None:
                    out[f"s{t}/{name}.M_in"] = as_buffer(st["m"], config["preset"]["M"]["bits"])
        step = Step(g, t, state, config, exps, layers)
        step.run()
        out.update(step.out)
        gaps.append(step.softmax_gap)
        for op, used in step.reached.items():
            reached[op] = (max(reached.get(op, (0, 0))[0], used), step.widths[op])
    return out, g, manifest, gaps, reached


def compare(folder, result=None) -> list[str]:
    """Names of golden tensors that the reference does not reproduce bit for bit (value and exponent);
    ``result``: recompute(folder) when already at hand."""
    out, g, manifest, _, _ = result or recompute(folder)
    bad = []
    for e in manifest["tensors"]:
        name = e["name"]
        if name not in out:
            continue
        arr, exp = out[name]
        if arr.shape != g[name].shape or not np.array_equal(arr, g[name]) or exp != e["exponent"]:
            bad.append(name)
    return bad


class WidthError(OverflowError):
    """A recomputed tensor wider than the width its manifest declares."""


def widths(out: dict, manifest: dict) -> dict:
    """Per tensor kind (the name's last part: A, acc, E, M, U, ...): (the widest value the reference
    computed, as signed bits: bit length of max|v| + 1; the declared bits). Raises WidthError when a
    tensor exceeds its declared width (codes must lie in +-(2^(bits-1)-1))."""
    declared = {e["name"]: e.get("bits") for e in manifest["tensors"]}
    seen: dict = {}
    for name, (arr, _) in out.items():
        bits = declared.get(name)
        if not bits or not np.asarray(arr).size:
            continue
        arr = np.asarray(arr)
        top = int(np.abs(arr if arr.dtype != np.uint64 else arr.astype(object)).max())
        kind = name.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
        if top > (1 << (bits - 1)) - 1:
            raise WidthError(f"{name}: |value| {top} does not fit its declared {bits} bits")
        used = top.bit_length() + 1
        old = seen.get(kind, (0, bits))
        seen[kind] = (max(old[0], used), max(old[1], bits))
    return seen


def check(folder) -> tuple[int, list[str], float]:
    """(tensors recomputed, names not reproduced bit for bit, the softmax check's largest gap)."""
    result = out, _, manifest, gaps, _ = recompute(folder)
    return sum(e["name"] in out for e in manifest["tensors"]), compare(folder, result), max(gaps)


def main(argv) -> int:
    if len(argv) != 1:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        result = out, _, manifest, gaps, used = recompute(argv[0])
        bad = compare(argv[0], result)
        widths(out, manifest)                  # and the widths the golden file declares
    except (BadGolden, NotCovered, WidthError) as err:
        print(f"numpy_step: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:          # an error inside the reference: one line, never a pass
        print(f"numpy_step: error: the reference failed on {argv[0]}: {err.__class__.__name__}: {err}",
              file=sys.stderr)
        return 3
    checked, total = sum(e["name"] in out for e in manifest["tensors"]), len(manifest["tensors"])
    print(f"{checked} of {total} golden tensors recomputed, {len(bad)} differ; "
          f"softmax (float64) within {max(gaps):.1e} of the golden dL/dlogits")
    print("widest value reached / declared width per operation, bits: "
          + ", ".join(f"{k} {u}/{d}" for k, (u, d) in sorted(used.items())))
    for name in bad[:20]:
        print("  differs:", name)
    print(f"torch imported: {'torch' in sys.modules}; eoq imported: {any(m == 'eoq' or m.startswith('eoq.') for m in sys.modules)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

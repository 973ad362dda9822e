"""Quantization-error statistics per layer and tensor kind (W, A, G, E, U, S, M), over training.

A :class:`QStatsCollector` attaches to eoq's quantization hook (eoq/quant/observe.py). On every
``every``-th step it records, for every quantized tensor x -> q:
    sqnr_db    10 log10( sum x^2 / sum (q - x)^2 )           (inf when q == x)
    rel_error  ||q - x|| / ||x||
    bias       mean(q - x) / rms(x)                          (signed, relative to the tensor's scale)
    saturated  fraction of x beyond the largest code's rounding interval, |x| > (M + 1/2) * 2^lsb
    zeroed     fraction of the nonzero x that quantize to 0 (stored W/S: fraction of zero codes)
    exponent   the LSB exponent lsb of the grid (value = code * 2^lsb; SQ: round(log2 max|x|) + 1 - k)
and histograms of the values (64 bins over [-max|x|, max|x|]) and of the integer codes (at most
512 bins: wider code ranges are summed in groups of ``code_step`` codes). For the
updates U (x = lr * v / 2^e in units of the weight LSB, q = U) it adds the fraction of zero updates
and the update-to-weight ratio ||U|| / ||codes||. Off-steps cost one flag check per quantization;
with no collector attached there is no cost at all.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from eoq import kernels
from eoq.quant.quantizers import FQ_FRACTION_BITS, max_code, shift_exponent
from eoq.training.atomic import atomic_write
from eoq.training.csvfile import read_rows, write_rows

COLUMNS = ("step", "layer", "kind", "bits", "quantizer", "numel", "sqnr_db", "rel_error", "bias", "saturated",
           "zeroed", "exponent", "zero_updates", "update_weight_ratio")


def grid_of(kind: str, q, amax: torch.Tensor) -> tuple[float, int]:
    """(LSB exponent, largest code) of the grid ``q`` puts a tensor with max|x| = ``amax`` on
    (U: units of the weight LSB)."""
    if kind == "U":
        return 0.0, max_code(q.bits)
    e = float(shift_exponent(amax))
    if q.quantizer == "cq":
        return e - (q.cq_c.bit_length() - 1), q.cq_c - 1
    if q.quantizer == "fq":
        return e + 1 - q.bits - FQ_FRACTION_BITS, max_code(q.bits) << FQ_FRACTION_BITS
    return e + 1 - q.bits, max_code(q.bits)


def tensor_stats(kind: str, q, x: torch.Tensor, out: torch.Tensor, bins: int = 64) -> tuple[dict, dict]:
    """The statistics row and the histograms of one quantization x -> out.

    Two passes of the compiled kernel (``eoq/csrc/stats.cpp``: sums in double, exact integer
    counts) for float32 tensors; otherwise the torch reference (:class:`_TorchPasses`, sums in
    float32). The two agree to rounding in the sums and exactly in every
    count (tests/test_qstats.py)."""
    x = x.detach().reshape(-1)
    y = out.detach().reshape(-1)
    kern = kernels.usable(x) if y.dtype == torch.float32 else None
    if kern is not None:
        x, y = x.contiguous(), y.contiguous()
    passes = _KernelPasses(kern, x, y) if kern is not None else _TorchPasses(x, y)
    n = x.numel()
    amax, sx, se, serr, n_nonzero, n_nonzero_out = passes.moments()
    lsb, m = grid_of(kind, q, torch.tensor(amax, dtype=torch.float64))
    unit = 2.0 ** lsb
    lim = amax if amax > 0 else 1.0
    saturated, values, codes = passes.hists((m + 0.5) * unit, lim, bins, unit, m)
    rms = math.sqrt(sx / max(n, 1))
    row = {"bits": q.bits, "quantizer": q.quantizer if kind != "U" else "update", "numel": n,
           "sqnr_db": 10 * math.log10(sx / se) if se > 0 else float("inf") if sx > 0 else float("nan"),
           "rel_error": math.sqrt(se / sx) if sx > 0 else float("nan"),
           "bias": serr / n / rms if rms > 0 else 0.0,
           "saturated": saturated / max(n, 1),
           "zeroed": (n_nonzero - n_nonzero_out) / n_nonzero if n_nonzero else 0.0,  # every quantizer keeps 0
           "exponent": lsb}
    code_counts, step = coarse_codes(codes.numpy())
    hists = {"values": values.numpy().astype(np.int32), "value_edges": np.linspace(-lim, lim, bins + 1),
             "codes": code_counts, "code_min": -m, "code_step": step, "lsb": unit, "max_code": m}
    return row, hists


MAX_CODE_BINS = 512


def coarse_codes(counts: np.ndarray) -> tuple[np.ndarray, int]:
    """A code histogram as int32 counts (fresh memory, not a view of a torch tensor: those kept
    their buffers alive and grew a training run's memory by 200 MB per sampled step), codes summed
    in groups of ``step`` adjacent codes when there are more than MAX_CODE_BINS (the 16-bit momentum:
    65,535 codes would take 17 MB per sampled step); bin i counts codes code_min + i * step ..
    code_min + (i + 1) * step - 1."""
    step = -(-len(counts) // MAX_CODE_BINS)
    if step > 1:
        counts = np.pad(counts, (0, -len(counts) % step)).reshape(-1, step).sum(1)
    return counts.astype(np.int32), step


class _KernelPasses:
    """The two passes of ``stats.cpp``."""

    def __init__(self, kern, x, y):
        self.kern, self.x, self.y = kern, x, y

    def moments(self):
        return self.kern.stats_moments(self.x, self.y)

    def hists(self, threshold, lim, bins, unit, m):
        return self.kern.stats_hists(self.x, self.y, threshold, lim, bins, unit, m)


class _TorchPasses:
    """The same statistics from torch ops (any dtype): the reference of the kernel."""

    def __init__(self, x, y):
        self.x, self.y = x.float(), y.float()

    def moments(self):
        x, y = self.x, self.y
        err = y - x
        amax = float(x.abs().max()) if x.numel() else 0.0
        return (amax, float(torch.dot(x, x)), float(torch.dot(err, err)), float(err.sum()),
                int(torch.count_nonzero(x)), int(torch.count_nonzero(y)))

    def hists(self, threshold, lim, bins, unit, m):
        x, y = self.x, self.y
        saturated = int(torch.count_nonzero(x.abs() > threshold))
        values = torch.histc(x, bins, -lim, lim).long()
        codes = (y * (1.0 / unit)).to(torch.int64).clamp_(-m, m).add_(m)   # y / unit: exact integers
        return saturated, values, torch.bincount(codes, minlength=2 * m + 1)


class QStatsCollector:
    """Observer recording quantization statistics every ``every`` steps (see module docs)."""

    def __init__(self, every: int = 50, bins: int = 64, histograms: bool = True):
        if every < 1:
            raise ValueError(f"qstats sampling interval must be >= 1, got {every}")
        self.every, self.bins, self.histograms = every, bins, histograms
        self.step, self.active = 0, False
        self.rows: list[dict] = []
        self.hists: dict[str, np.ndarray] = {}

    def step_begin(self, step: int) -> None:
        self.step, self.active = step, step % self.every == 0

    def after(self, kind, q, x, out, owner, weight_codes=None, weight=None, **_):
        if not self.active:
            return
        if weight_codes is not None and weight is not None:
            self._stored(owner, weight_codes, *weight)
        row, hists = tensor_stats(kind, q, x, out, self.bins)
        layer = getattr(owner, "eoq_name", "?")
        row = {"step": self.step, "layer": layer, "kind": kind, **row,
               "zero_updates": float("nan"), "update_weight_ratio": float("nan")}
        if kind == "U":
            u = out.detach().double()
            row["zero_updates"] = float((u == 0).double().mean())
            if weight_codes is not None:
                row["update_weight_ratio"] = float(u.norm() / weight_codes.double().norm().clamp_min(1e-30))
        self.rows.append(row)
        if self.histograms:
            key = f"{self.step}/{layer}/{kind}"
            for name, value in hists.items():
                self.hists[f"{key}/{name}"] = np.asarray(value)

    def _stored(self, owner, codes, exponent: float, bits: int) -> None:
        """Integer-stored weights (W) or Fixup scalars (S): exact by construction (no SQNR), but
        their saturation, zero codes, exponent and code histogram."""
        kind = "S" if type(owner).__name__ == "FixupScalar" else "W"
        c = codes.detach().double().flatten()
        m = max_code(bits)
        layer = getattr(owner, "eoq_name", "?")
        self.rows.append({"step": self.step, "layer": layer, "kind": kind, "bits": bits, "quantizer": "stored",
                          "numel": c.numel(), "sqnr_db": float("nan"), "rel_error": 0.0, "bias": 0.0,
                          "saturated": float((c.abs() >= m).double().mean()),
                          "zeroed": float((c == 0).double().mean()), "exponent": exponent,
                          "zero_updates": float("nan"), "update_weight_ratio": float("nan")})
        if self.histograms:
            lo = int(c.min()) if c.numel() else 0
            ci = c.long().numpy()
            key = f"{self.step}/{layer}/{kind}"
            self.hists[f"{key}/codes"], step = coarse_codes(np.bincount(ci - lo, minlength=1))
            self.hists[f"{key}/code_min"] = np.asarray(lo)
            self.hists[f"{key}/code_step"] = np.asarray(step)
            self.hists[f"{key}/lsb"] = np.asarray(2.0 ** exponent)
            self.hists[f"{key}/max_code"] = np.asarray(m)

    def load(self, directory, before: int) -> None:
        """Take back the samples of steps < ``before`` that ``save`` wrote (a resumed run; samples
        saved from later steps, if any, are taken again)."""
        d = Path(directory)
        if (d / "qstats.csv").exists():
            old = read_rows(d / "qstats.csv", ints=("step", "bits", "numel"), text=("layer", "kind", "quantizer"))
            self.rows = [r for r in old if r["step"] < before] + self.rows
        if self.histograms and (d / "qstats_hist.npz").exists():
            with np.load(d / "qstats_hist.npz") as z:
                self.hists = {**{k: z[k] for k in z.files if _hist_step(k) < before}, **self.hists}

    def save(self, directory) -> None:
        """``qstats.csv`` (tidy: one row per step, layer, kind) and ``qstats_hist.npz``, atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        write_rows(d / "qstats.csv", self.rows, COLUMNS)
        if self.histograms:
            with atomic_write(d / "qstats_hist.npz") as fh:
                np.savez_compressed(fh, **self.hists)


def _hist_step(key: str) -> int:
    return int(key.split("/", 1)[0])


def read_qstats(directory) -> list[dict]:
    """The rows of ``directory``/qstats.csv (written by :class:`QStatsCollector`): one per sampled
    step, layer and tensor kind, every statistic a float."""
    rows = read_rows(Path(directory) / "qstats.csv", text=("layer", "kind", "quantizer"))
    for r in rows:         # every statistic a float (a step index too, as the figures expect)
        for k in COLUMNS:
            if k not in ("layer", "kind", "quantizer"):
                r[k] = float(r[k])
    return rows

"""The table of one EOQ training step: every operation, its number format and its count.

The rows come from the cost model's count of a real step (:func:`analysis.cost.counter.count_training_step`
on a Fixup ResNet-20, ``eoq`` preset, integer engine, batch 128), summed over layers by phase,
category, op and format: the README's table and the cost model are one list, not two. ``STEP_OPS``
only names and explains each counted (phase, category, op), in the order data flows through a
step, from the input codes to the new weight codes; a test checks that the count has no entry
``STEP_OPS`` lacks and that ``STEP_OPS`` lists nothing the count lacks, and that the README holds
this module's rendering.

    python -m analysis.cost.step_table                 # print the markdown table
    python -m analysis.cost.step_table --write README.md   # replace the table between its markers
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path
from typing import NamedTuple

import torch

from .counter import PHASES, CostTally, count_training_step

BEGIN, END = "<!-- step-table: python -m analysis.cost.step_table --write README.md -->", "<!-- /step-table -->"

_INT = "int8 x int8 -> int32 (direct VNNI/AMX kernels, torch._int_mm, or exact float32 sums without int8 dot products)"
_EXACT = "exact (float64 holding integers x 2^e)"
_ON_EXACT = "rounds the exact value (float64 in the kernel)"


class StepOp(NamedTuple):
    """One counted operation: where it is in the step, what it computes, how ``--engine int``
    computes it today."""

    phase: str
    category: str
    op: str
    what: str
    engine: str


_LOSS = "float64 (eoq/training/loss.py)"

STEP_OPS = [
    StepOp("forward", "quantize", "cmp", "A quantizer SQ(x, 8): max abs(x) and the clamp to +-127", _ON_EXACT),
    StepOp("forward", "quantize", "shift", "A quantizer: shift by the power-of-two scale", _ON_EXACT),
    StepOp("forward", "quantize", "add", "A quantizer: round to nearest", _ON_EXACT),
    StepOp("forward", "gemm", "mult", "conv / linear: A codes x W codes", _INT),
    StepOp("forward", "gemm", "add", "conv / linear: accumulation (and the classifier bias)", _INT),
    StepOp("forward", "norm", "add", "Fixup scalar biases x + b (two per conv, stem and head)",
           "fused into the next A quantizer or the block tail, " + _EXACT),
    StepOp("forward", "norm", "mult", "Fixup multiplier x * s after each block's last conv",
           "fused block tail, " + _EXACT),
    StepOp("forward", "elementwise", "add", "residual adds (option-A shortcut: subsample, zero channels)",
           "fused block tail, " + _EXACT),
    StepOp("forward", "elementwise", "cmp", "ReLU", _EXACT),
    StepOp("forward", "stream", "cmp", "residual stream FX(y, 16) at the stem's and each block's output: "
           "max abs(y)", "float64 -> 16-bit values (eoq/nn/stream.py)"),
    StepOp("forward", "stream", "shift", "residual stream: shift to its exponent", "float64 -> 16-bit values"),
    StepOp("forward", "stream", "add", "residual stream: round half to even", "float64 -> 16-bit values"),
    StepOp("forward", "elementwise", "div", "global average pool: / (8 x 8), a shift",
           "float32, exact (16-bit values)"),
    StepOp("forward", "loss", "cmp", "softmax cross-entropy: max of the logits", _LOSS),
    StepOp("forward", "loss", "add", "softmax cross-entropy: exp-sum and log", _LOSS),
    StepOp("forward", "loss", "mult", "softmax cross-entropy", _LOSS),
    StepOp("backward_error", "loss", "add", "loss gradient softmax(z) - onehot(y) at the logits", _LOSS),
    StepOp("backward_error", "loss", "mult", "loss gradient: / batch size", _LOSS + ", rounded once to float32"),
    StepOp("backward_error", "quantize", "cmp", "E quantizer SQ(e, 8): max abs(e) and the clamp", _ON_EXACT),
    StepOp("backward_error", "quantize", "shift", "E quantizer: shift by the power-of-two scale", _ON_EXACT),
    StepOp("backward_error", "quantize", "add", "E quantizer: stochastic rounding (add 16 random bits)", _ON_EXACT),
    StepOp("backward_error", "quantize", "rand", "E quantizer: the random bits (counter hash)", "int (hash)"),
    StepOp("backward_error", "gemm", "mult", "error to the layer input: E codes x W codes", _INT),
    StepOp("backward_error", "gemm", "add", "error to the layer input: accumulation", _INT),
    StepOp("backward_error", "norm", "mult", "Fixup multiplier backward e * s",
           "fused into the E quantizer, " + _EXACT),
    StepOp("backward_error", "elementwise", "cmp", "ReLU backward: mask by y > 0", _EXACT),
    StepOp("backward_error", "elementwise", "add", "error at a block input: branch error + shortcut error", _EXACT),
    StepOp("backward_error", "elementwise", "div", "average-pool backward: / 64, a shift", "float32, exact"),
    StepOp("backward_error", "stream", "cmp", "error stream FX(e, 16) at each block input and the head: max abs(e)",
           "float64 -> 16-bit values"),
    StepOp("backward_error", "stream", "shift", "error stream: shift to its exponent", "float64 -> 16-bit values"),
    StepOp("backward_error", "stream", "add", "error stream: round half to even", "float64 -> 16-bit values"),
    StepOp("weight_grad", "gemm", "mult", "weight gradient: E codes x A codes", _INT),
    StepOp("weight_grad", "gemm", "add", "weight gradient: accumulation (int64 across int32 chunks)", _INT),
    StepOp("weight_grad", "quantize", "cmp", "G quantizer SQ(g, 8): max abs(g) and the clamp", "integer"),
    StepOp("weight_grad", "quantize", "shift", "G quantizer: shift", "integer"),
    StepOp("weight_grad", "quantize", "add", "G quantizer: stochastic rounding", "integer"),
    StepOp("weight_grad", "quantize", "rand", "G quantizer: the random bits", "int (hash)"),
    StepOp("weight_grad", "norm", "add", "Fixup scalar gradients: sum e (biases), sum e * x (multiplier)",
           "exact sums (float64), rounded once to 24 significant bits"),
    StepOp("weight_grad", "norm", "mult", "Fixup multiplier gradient: e * x", _EXACT),
    StepOp("update", "update", "shift", "momentum mu v = v - (v >> s) (M-bit codes -> M+s bits), the shifts "
           "aligning the terms of S and the lr's 2^-s", "exact (int64 accumulator)"),
    StepOp("update", "update", "add", "S = mu v + g + wd w, an exact sum of aligned integers (64-bit accumulator); "
           "M = SR(S) to M bits (one rounding); codes - U", "exact int64 sum, then one SR (eoq/training/int_update.py)"),
    StepOp("update", "update", "mult", "wd w = Lw x W codes (8 x 8 -> 16 bits), L x M codes (8 x M -> M+8 bits)",
           "exact integer products"),
    StepOp("update", "update", "rand", "random bits of M, U and the exponent policy's halving", "int (hash)"),
    StepOp("update", "update", "cmp", "U = SR(L M / 2^(s + e)) clamped to +-31 (6 bits), codes clamped to +-127, "
           "saturation test count x 20 > n", "integer"),
]


class StepRow(NamedTuple):
    phase: str
    what: str
    op: str
    fmt: str
    count: float
    engine: str


def counted(tally: CostTally) -> dict:
    """{(phase, category, op, fmt): count summed over layers}, memory traffic left out."""
    agg: dict = defaultdict(float)
    for (_, cat, phase, op, fmt), n in tally.counts.items():
        if op not in ("read", "write"):
            agg[(phase, cat, op, fmt)] += n
    return dict(agg)


def step_rows(tally: CostTally) -> list[StepRow]:
    """One row per STEP_OPS entry and format it is counted in, in STEP_OPS order."""
    agg = counted(tally)
    rows = []
    for s in STEP_OPS:
        for (phase, cat, op, fmt), n in sorted(agg.items()):
            if (phase, cat, op) == (s.phase, s.category, s.op):
                rows.append(StepRow(s.phase, s.what, op, fmt, n, s.engine))
    return rows


def resnet20_step() -> CostTally:
    """The count the README's table shows: one step of a Fixup ResNet-20, ``eoq``, integer engine,
    batch 128 (counts depend on shapes only, not on the data)."""
    from eoq.training.setup import setup
    s = setup("resnet20", "fixup", "eoq", seed=0, rounding_seed=0, engine="int")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 3, 32, 32, generator=g).contiguous(memory_format=torch.channels_last)
    return count_training_step(s.model, s.optimizer, x, torch.randint(0, 10, (128,), generator=g))


def markdown(rows: list[StepRow]) -> str:
    lines = ["| phase | operation | op | format | per step | `--engine int` computes it as |",
             "|---|---|---|---|---:|---|"]
    for r in sorted(rows, key=lambda r: PHASES.index(r.phase)):        # stable: STEP_OPS order in a phase
        lines.append(f"| {r.phase} | {r.what} | {r.op} | {r.fmt} | {r.count:.3g} | {r.engine} |")
    return "\n".join(lines)


def replace_block(text: str, table: str) -> str:
    """``text`` with the part between BEGIN and END replaced by ``table``."""
    if BEGIN not in text or END not in text:
        raise ValueError(f"no step-table markers ({BEGIN!r} ... {END!r}) in the file")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis.cost.step_table", description=__doc__.splitlines()[0])
    ap.add_argument("--write", metavar="README", help="replace the table between the markers in this file")
    args = ap.parse_args(argv)
    table = markdown(step_rows(resnet20_step()))
    if args.write:
        path = Path(args.write)
        path.write_text(replace_block(path.read_text(), table))
    else:
        print(table)


if __name__ == "__main__":
    main()

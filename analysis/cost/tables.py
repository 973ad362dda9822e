"""Energy (pJ per op) and latency (cycles per op) tables per number format, with their sources.

Default energies: Horowitz, "Computing's energy problem", ISSCC 2014, 45 nm (SPEC section 5):
    add:  int8 0.03, int32 0.1, fp16 0.4, fp32 0.9 pJ
    mult: int8 0.2,  int32 3.1, fp16 1.1, fp32 3.7 pJ
    memory: SRAM 10-100 pJ per 64-bit access (we take 8 KB SRAM, 10 pJ / 64 bit = 1.25 pJ/byte),
            DRAM 1.3-2.6 nJ per 64-bit access (we take 1.3 nJ / 64 bit = 162.5 pJ/byte, not used by
            default: on-chip traffic is what the training-step estimate counts).
Assumptions (no Horowitz figure; each can be overridden from a JSON file, see ``load_tables``):
    int16 add 0.05 and mult 0.8 pJ   between int8 and int32 (add ~ linear, mult ~ quadratic in bits)
    comparison = add of the same format; shift = int8 add (a barrel shifter, no carry chain)
    division and square root = 10 x the multiply of the same format (iterative dividers and
        square-root units take ~ one multiply per iteration, ~10 iterations for 24-bit mantissas)
    random bits (stochastic rounding) = 1 int8 add per element (an LFSR byte)
Default latencies in cycles (a simple in-order datapath, assumption): int add/cmp/shift 1,
int8 mult 1, int16 mult 2, int32 mult 3, fp16 add 2 / mult 3, fp32 add 3 / mult 4, division 20 and
square root 20 for fp32 (10 for int16/fp16), random byte 1.
"""
from __future__ import annotations

import copy
import json

FORMATS = ("int8", "int16", "int32", "fp16", "fp32")
OPS = ("mult", "add", "cmp", "div", "sqrt", "shift", "rand")

_ADD = {"int8": 0.03, "int16": 0.05, "int32": 0.1, "fp16": 0.4, "fp32": 0.9}
_MULT = {"int8": 0.2, "int16": 0.8, "int32": 3.1, "fp16": 1.1, "fp32": 3.7}

DEFAULT_ENERGY_PJ = {
    "add": dict(_ADD), "cmp": dict(_ADD), "mult": dict(_MULT),
    "div": {f: 10 * v for f, v in _MULT.items()}, "sqrt": {f: 10 * v for f, v in _MULT.items()},
    "shift": {f: _ADD["int8"] for f in FORMATS}, "rand": {f: _ADD["int8"] for f in FORMATS},
    "byte": {"sram": 1.25, "dram": 162.5},
}
DEFAULT_CYCLES = {
    "add": {"int8": 1, "int16": 1, "int32": 1, "fp16": 2, "fp32": 3},
    "cmp": {"int8": 1, "int16": 1, "int32": 1, "fp16": 1, "fp32": 1},
    "mult": {"int8": 1, "int16": 2, "int32": 3, "fp16": 3, "fp32": 4},
    "div": {"int8": 10, "int16": 10, "int32": 20, "fp16": 10, "fp32": 20},
    "sqrt": {"int8": 10, "int16": 10, "int32": 20, "fp16": 10, "fp32": 20},
    "shift": {f: 1 for f in FORMATS}, "rand": {f: 1 for f in FORMATS},
}
ASSUMPTIONS = (
    "int8/int32/fp16/fp32 add and multiply energies: Horowitz, ISSCC 2014, 45 nm",
    "int16 add 0.05 pJ and multiply 0.8 pJ: interpolated (add ~ linear, multiply ~ quadratic in bits)",
    "comparison costs an add of the same format; a shift costs an int8 add",
    "division and square root cost 10 multiplies of the same format (iterative units, ~10 steps): "
    "no Horowitz figure exists",
    "one random byte for stochastic rounding costs an int8 add (LFSR)",
    "SRAM 1.25 pJ/byte (10 pJ per 64-bit access, Horowitz's 8 KB SRAM); reported apart from the ratios",
    "cycles: int add/cmp/shift/int8 mult 1, int16 mult 2, int32 mult 3, fp16 add 2 / mult 3, fp32 add 3 / "
    "mult 4, int8/int16/fp16 div and sqrt 10, int32/fp32 div and sqrt 20 (assumed serial datapath)",
    "power ratio = energy ratio per training step (equal throughput assumed)",
    "quantized networks hold values between layers as int32 (accumulators), the loss in fp32; Fixup "
    "scalars act on 8-bit codes (int8 multiply, int16 add), BN's WAGEUBN variant in int16/int8",
)
SOURCES = {
    "energy": "Horowitz, ISSCC 2014 (45 nm) for int8/int32/fp16/fp32 add and mult and memory; "
              "int16, comparison, shift, division, square root and random bits are assumptions "
              "stated in analysis/cost/tables.py",
    "cycles": "assumed in-order datapath (analysis/cost/tables.py)",
}


class TableError(ValueError):
    pass


def load_tables(path: str | None = None) -> tuple[dict, dict]:
    """The default tables, updated from a JSON file {"energy_pj": {op: {fmt: x}}, "cycles": {...}}."""
    energy, cycles = copy.deepcopy(DEFAULT_ENERGY_PJ), copy.deepcopy(DEFAULT_CYCLES)
    if path is None:
        return energy, cycles
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise TableError(f"cannot read cost table {path!r}: {err}") from None
    for key, table in (("energy_pj", energy), ("cycles", cycles)):
        for op, per_fmt in data.get(key, {}).items():
            if op not in table:
                raise TableError(f"{path}: unknown op {op!r} in {key}; known: {', '.join(table)}")
            for fmt, value in per_fmt.items():
                if fmt not in table[op]:
                    raise TableError(f"{path}: unknown format {fmt!r} for {key}.{op}")
                if not isinstance(value, (int, float)) or value < 0:
                    raise TableError(f"{path}: {key}.{op}.{fmt} must be a non-negative number")
                table[op][fmt] = float(value)
    unknown = set(data) - {"energy_pj", "cycles"}
    if unknown:
        raise TableError(f"{path}: unknown keys {sorted(unknown)}; use 'energy_pj' and 'cycles'")
    return energy, cycles

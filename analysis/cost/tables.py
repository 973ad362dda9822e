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
# Latency beyond a serial op count: a parallel datapath (an assumption, every entry overridable).
# lanes[op][fmt]: units of that op and format working in parallel; an op on a pipelined unit
# issues one per cycle per lane (its latency, cycles[op][fmt], is paid once per layer and phase),
# on an unpipelined one (division, square root: iterative) one per cycles[op][fmt] per lane.
# Within a layer and phase the units run concurrently and memory traffic overlaps compute, so
# the layer-phase takes max(busiest unit, bytes / bytes_per_cycle) cycles (a roofline bound);
# layers and phases run one after another. The serial model (DATAPATHS["serial"]: one
# unpipelined unit per op, no memory bound) gives exactly sum(count x cycles per op).
_WIDE = {"int8": 256, "int16": 128, "int32": 64, "fp16": 64, "fp32": 32}
DEFAULT_DATAPATH = {
    "lanes": {"add": dict(_WIDE), "cmp": dict(_WIDE), "shift": dict(_WIDE),
              "mult": {"int8": 256, "int16": 64, "int32": 16, "fp16": 64, "fp32": 32},
              "rand": {f: 64 for f in FORMATS}, "div": {f: 4 for f in FORMATS}, "sqrt": {f: 4 for f in FORMATS}},
    "pipelined": {"add": True, "cmp": True, "shift": True, "mult": True, "rand": True, "div": False, "sqrt": False},
    "bytes_per_cycle": 64.0,
}
DATAPATHS = {
    "serial": {"lanes": {op: {f: 1 for f in FORMATS} for op in OPS},
               "pipelined": {op: False for op in OPS}, "bytes_per_cycle": None},
    "parallel": DEFAULT_DATAPATH,
}
DATAPATH_ASSUMPTIONS = (
    "parallel datapath (assumed, overridable under \"datapath\"): lanes per op and format - add/cmp/shift "
    "int8 256, int16 128, int32 64, fp16 64, fp32 32; mult int8 256, int16 64, int32 16, fp16 64, fp32 32; "
    "random bytes 64; division and square root 4 iterative (unpipelined) units per format",
    "pipelined units issue one op per cycle per lane and pay their latency once per layer and phase; "
    "units run concurrently and memory overlaps compute: a layer-phase takes max(busiest unit, "
    "bytes / 64 bytes per cycle) cycles (roofline); layers and phases run in sequence",
)
SOURCES = {
    "energy": "Horowitz, ISSCC 2014 (45 nm) for int8/int32/fp16/fp32 add and mult and memory; "
              "int16, comparison, shift, division, square root and random bits are assumptions "
              "stated in analysis/cost/tables.py",
    "cycles": "assumed in-order datapath (analysis/cost/tables.py)",
}


class TableError(ValueError):
    pass


def load_datapath(path: str | None = None) -> dict:
    """The parallel datapath, updated from the "datapath" entry of a JSON file: {"lanes": {op:
    {fmt: n}}, "pipelined": {op: bool}, "bytes_per_cycle": x}."""
    datapath = copy.deepcopy(DEFAULT_DATAPATH)
    given = _read(path).get("datapath", {}) if path is not None else {}
    unknown = set(given) - set(datapath)
    if unknown:
        raise TableError(f"{path}: unknown keys in datapath {sorted(unknown)}; use lanes, pipelined, bytes_per_cycle")
    for op, per_fmt in given.get("lanes", {}).items():
        if op not in datapath["lanes"]:
            raise TableError(f"{path}: unknown op {op!r} in datapath.lanes; known: {', '.join(datapath['lanes'])}")
        for fmt, value in per_fmt.items():
            if fmt not in FORMATS or not isinstance(value, (int, float)) or value <= 0:
                raise TableError(f"{path}: datapath.lanes.{op}.{fmt} must be a positive number of a known format")
            datapath["lanes"][op][fmt] = float(value)
    for op, value in given.get("pipelined", {}).items():
        if op not in datapath["pipelined"] or not isinstance(value, bool):
            raise TableError(f"{path}: datapath.pipelined.{op} must be true or false for a known op")
        datapath["pipelined"][op] = value
    if "bytes_per_cycle" in given:
        bw = given["bytes_per_cycle"]
        if bw is not None and (not isinstance(bw, (int, float)) or bw <= 0):
            raise TableError(f"{path}: datapath.bytes_per_cycle must be a positive number or null (no bound)")
        datapath["bytes_per_cycle"] = bw
    return datapath


def _read(path: str) -> dict:
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise TableError(f"cannot read cost table {path!r}: {err}") from None


def load_tables(path: str | None = None) -> tuple[dict, dict]:
    """The default tables, updated from a JSON file {"energy_pj": {op: {fmt: x}}, "cycles": {...}}
    (its "datapath" entry is read by :func:`load_datapath`)."""
    energy, cycles = copy.deepcopy(DEFAULT_ENERGY_PJ), copy.deepcopy(DEFAULT_CYCLES)
    if path is None:
        return energy, cycles
    data = _read(path)
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
    unknown = set(data) - {"energy_pj", "cycles", "datapath"}
    if unknown:
        raise TableError(f"{path}: unknown keys {sorted(unknown)}; use 'energy_pj', 'cycles' and 'datapath'")
    return energy, cycles

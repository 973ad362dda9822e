"""Behaviour reference: 20 EOQ training steps on the embedded data, hashed tensor by tensor.

A refactoring that moves code must not change what is trained. This script trains ResNet-20
(Fixup, the ``eoq`` preset) for 20 steps of batch 128 on the embedded CIFAR-10 subset, once on
the simulator and once on the integer engine, and hashes every tensor of the checkpoint (model,
optimizer state, generator). ``--write`` stores the hashes in ``behaviour.json`` beside this file,
``--check`` (the default) compares against them and names the first tensor that differs.

The hashes hold for the torch version and CPU instruction set they were made with (stored with
them): float32 ops outside the quantizers (softmax, the simulator's convolutions) may round
differently elsewhere, so tests/test_behaviour.py skips on another machine.

Usage: python tests/reference/behaviour.py [--write]
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).parent
REFERENCE = HERE / "behaviour.json"


def machine() -> dict:
    """The torch version and a hash of the CPU's feature flags (Linux)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return {"torch": torch.__version__, "cpu": hashlib.sha256(flags.encode()).hexdigest()[:12]}


def _hash(value) -> str:
    if isinstance(value, torch.Tensor):
        t = value.detach().contiguous().cpu().reshape(-1)
        return hashlib.sha256(t.view(torch.uint8).numpy().tobytes() + str(t.dtype).encode()).hexdigest()[:16]
    return hashlib.sha256(repr(value).encode()).hexdigest()[:16]


def _flatten(prefix: str, obj, out: dict) -> None:
    if isinstance(obj, dict):
        for k in sorted(obj, key=str):
            _flatten(f"{prefix}.{k}" if prefix else str(k), obj[k], out)
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (dict, torch.Tensor)) for v in obj):
        for i, v in enumerate(obj):
            _flatten(f"{prefix}[{i}]", v, out)
    else:
        out[prefix] = _hash(obj)


def hashes() -> dict:
    """{engine: {tensor path: hash}} of a 20-step EOQ run on each engine."""
    from eoq.cli import main

    result = {}
    for engine in ("sim", "int"):
        with tempfile.TemporaryDirectory() as tmp:
            code = main(["train", "--data", "embedded", "--model", "resnet20", "--norm", "fixup", "--preset", "eoq",
                         "--engine", engine, "--epochs", "1", "--train-limit", "2560", "--val", "0",
                         "--test-limit", "200", "--threads", "1", "--no-progress", "--out", f"{tmp}/r"])
            assert code == 0, f"training failed with exit status {code}"
            state = torch.load(f"{tmp}/r/checkpoint.pt", weights_only=True)
        flat: dict = {}
        _flatten("", {k: state[k] for k in ("model", "optimizer", "generator")}, flat)
        result[engine] = flat
    return result


def check() -> str | None:
    """None when the run matches the stored reference, else the first difference."""
    ref = json.loads(REFERENCE.read_text())
    now = hashes()
    for engine, flat in ref["hashes"].items():
        for key, h in flat.items():
            if now[engine].get(key) != h:
                return f"{engine}: {key} differs ({now[engine].get(key)} vs reference {h})"
        extra = set(now[engine]) - set(flat)
        if extra:
            return f"{engine}: tensors not in the reference: {sorted(extra)[:5]}"
    return None


if __name__ == "__main__":
    if "--write" in sys.argv:
        REFERENCE.write_text(json.dumps({"machine": machine(), "hashes": hashes()}, indent=1) + "\n")
        print(f"wrote {REFERENCE}")
    else:
        diff = check()
        print("behaviour unchanged" if diff is None else f"behaviour changed: {diff}")
        sys.exit(0 if diff is None else 1)

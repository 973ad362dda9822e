"""Peak memory of a training step: fp32+BN, fp32+Fixup, simulated EOQ and integer EOQ, one thread.

Each (model, batch, configuration) runs in a fresh process: the model, optimizer and one batch of
CIFAR-10 test images are set up, then three training steps run. Three readings of what a step
needs beyond the model and the data:

- **heap peak** (exact; the goal's measure): the most bytes in use at once during the three steps
  minus those in use before them, counted by ``heap_peak.c`` (compiled here with the system C
  compiler and loaded with LD_PRELOAD: every malloc/free of the process, PyTorch's tensors, its
  workspaces and the kernels' buffers alike). Saved activations, gradients, optimizer state made on
  the first step, workspaces and pools; not what the heap keeps after a free.
- **peak RSS growth**: ``ru_maxrss`` after the steps minus the RSS before them (resident set, what
  the OS sees); it moves by tens of MiB with the heap's state (glibc keeps freed blocks).
- **saved**: the bytes autograd keeps from one forward for the backward (``saved_tensors_hooks``,
  each storage once): the activations' cost alone.

Each is measured ``--repeats`` times (fresh processes) and the median printed. The last lines are
``int_eoq/fp32_bn <model> batch <b> = <heap ratio> (heap peak), ...`` for every model and batch.
Without a C compiler the heap column says so and the RSS and saved readings remain.

    python benchmarks/bench_memory.py                     # ResNet-20 and ResNet-18, batch 128, 32 and 1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CONFIGS = {"fp32_bn": ("bn", "fp32", "sim"), "fp32_fixup": ("fixup", "fp32", "sim"),
           "sim_eoq": ("fixup", "eoq", "sim"), "int_eoq": ("fixup", "eoq", "int")}
CASES = (("resnet20", 128), ("resnet20", 1), ("resnet18", 128), ("resnet18", 32), ("resnet18", 1))


def _child(model: str, batch: int, config: str) -> None:
    """Runs in the measured process: prints {"before": MiB, "peak": MiB}."""
    import resource

    import torch
    from common import setup, test_images

    from eoq.training.loop import train_step
    from eoq.training.setup import setup as eoq_setup

    setup(1)
    norm, preset, engine = CONFIGS[config]
    s = eoq_setup(model, norm, preset, seed=0, rounding_seed=1, engine=engine, lr=0.05, momentum=0.875)
    x, y = test_images(max(batch, 2))
    x, y = x[:batch].contiguous(memory_format=torch.channels_last), y[:batch]

    def rss() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * resource.getpagesize() / 2 ** 20

    heap = _heap_counter()
    before = rss()
    heap_before = heap.eoq_heap_current() if heap else 0
    if heap:
        heap.eoq_heap_reset_peak()
    for _ in range(3):
        train_step(s.model, s.optimizer, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    heap_peak = (heap.eoq_heap_peak() - heap_before) / 2 ** 20 if heap else None
    print(json.dumps({"before": before, "peak": peak, "heap": heap_peak, "saved": saved_for_backward(s.model, x)}))


def _heap_counter():
    """heap_peak.c's counters when this process was started with it preloaded, else None."""
    import ctypes

    lib = ctypes.CDLL(None)
    if not hasattr(lib, "eoq_heap_peak"):
        return None
    for f in (lib.eoq_heap_peak, lib.eoq_heap_current):
        f.restype = ctypes.c_long
    return lib


def heap_shim() -> str | None:
    """heap_peak.c built once into the eoq cache (keyed by its text), or None without a compiler."""
    import hashlib
    import os
    import shutil
    from pathlib import Path

    src = Path(__file__).with_name("heap_peak.c")
    cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if cc is None:
        return None
    out = (Path.home() / ".cache" / "eoq" /
           f"heap_peak-{hashlib.sha256(src.read_bytes()).hexdigest()[:12]}.so")
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(f".{os.getpid()}.tmp")
        r = subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", str(tmp), str(src), "-ldl"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"heap_peak.c did not compile ({r.stderr.strip().splitlines()[-1:]}): no heap column")
            return None
        os.replace(tmp, out)
    return str(out)


def saved_for_backward(model, x) -> float:
    """MiB that autograd keeps from a forward for the backward (each storage counted once): what
    the activations cost, free of the allocator's pools and of when the OS takes pages back."""
    import torch

    seen: dict = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(seen.values()) / 2 ** 20


def measure(model: str, batch: int, config: str, shim: str | None) -> tuple:
    """(heap peak or None, peak RSS growth, saved for backward), MiB, from one fresh process."""
    import os

    env = dict(os.environ, LD_PRELOAD=shim) if shim else None
    out = subprocess.run([sys.executable, __file__, "--child", model, str(batch), config],
                         capture_output=True, text=True, check=True, env=env)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["heap"], r["peak"] - r["before"], r["saved"]


def _table(title: str, model_rows: list, configs) -> str:
    head = ("| model | batch | " + " | ".join(configs) + " | int_eoq / fp32_bn |\n"
            "|---|---:|" + "---:|" * (len(configs) + 1) + "\n")
    return f"{title}\n\n" + head + "\n".join(model_rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the table as markdown here (eoq report --memory)")
    ap.add_argument("--child", nargs=3, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.child[2])
        return
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    shim = heap_shim()
    print(f"CPU: {cpu}; MiB over 3 training steps, median of {args.repeats} fresh processes; heap counter: "
          f"{shim or 'none (no C compiler)'}")
    ratios, rows = {}, {"heap": [], "rss": [], "saved": []}
    for model, batch in CASES:
        runs = {c: [measure(model, batch, c, shim) for _ in range(args.repeats)] for c in CONFIGS}
        med = {}
        for i, kind in enumerate(("heap", "rss", "saved")):
            med[kind] = {c: (statistics.median(r[i] for r in runs[c]) if runs[c][0][i] is not None else None)
                         for c in CONFIGS}
        print(f"{model} batch {batch}: " + "; ".join(
            f"{kind} " + ", ".join(f"{c} {v:.1f}" for c, v in m.items() if v is not None) for kind, m in med.items()),
            flush=True)
        ratios[(model, batch)] = {k: (m["int_eoq"] / max(m["fp32_bn"], 1e-9) if m["int_eoq"] is not None else None)
                                  for k, m in med.items()}
        for kind, m in med.items():
            if m["int_eoq"] is not None:
                rows[kind].append(f"| {model} | {batch} | " + " | ".join(f"{m[c]:.1f}" for c in CONFIGS)
                                  + f" | {ratios[(model, batch)][kind]:.2f} |")
    if args.out:
        titles = {"heap": "**Heap peak** (exact: the most bytes in use at once during 3 training steps, minus "
                          "those in use before; every malloc of the process, counted by benchmarks/heap_peak.c), MiB:",
                  "rss": "**Peak RSS growth** over the 3 steps (`ru_maxrss` minus the RSS before), MiB:",
                  "saved": "**Saved for backward**: the bytes autograd keeps from one forward (each storage once), MiB:"}
        with open(args.out, "w") as fh:
            fh.write(f"One thread, median of {args.repeats} fresh processes per cell; CPU: {cpu}; "
                     f"`python benchmarks/bench_memory.py --out {args.out}`.\n\n"
                     + "\n".join(_table(titles[k], rows[k], CONFIGS) for k in rows if rows[k]))
    for (model, batch), r in ratios.items():
        heap = f"{r['heap']:.3f} (heap peak), " if r["heap"] is not None else ""
        print(f"int_eoq/fp32_bn {model} batch {batch} = {heap}{r['rss']:.3f} (peak RSS), {r['saved']:.3f} (saved for backward)")


if __name__ == "__main__":
    main()

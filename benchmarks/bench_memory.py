"""Peak memory of a training step: fp32+BN, fp32+Fixup, simulated EOQ and integer EOQ, one thread.

Each (model, batch, configuration) runs in a fresh process (``ru_maxrss`` is a process's peak): the
model, optimizer and one batch of CIFAR-10 test images are set up, RSS is read, three training steps
run, and the peak RSS growth over those steps (``ru_maxrss`` after - RSS before; resident set size,
MiB) is what a step needs beyond the model and the data: saved activations, gradients, workspaces,
optimizer state made on the first step, allocator pools. It moves by tens of MiB with the heap's
state (glibc keeps freed blocks), so beside it the bytes autograd saves for the backward of one
forward are counted exactly (``saved_tensors_hooks``): the activations' cost alone. Each is measured ``--repeats`` times
(fresh processes) and the median printed. The last lines are ``int_eoq/fp32_bn <model> batch <b> =
<ratio>`` for every model and batch size.

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
CASES = (("resnet20", 128), ("resnet20", 1), ("resnet18", 32), ("resnet18", 1))


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

    before = rss()
    for _ in range(3):
        train_step(s.model, s.optimizer, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before": before, "peak": peak, "saved": saved_for_backward(s.model, x)}))


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


def measure(model: str, batch: int, config: str) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", model, str(batch), config],
                         capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r["peak"] - r["before"], r["saved"]


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
    print(f"CPU: {cpu}; peak RSS growth over 3 training steps, MiB, median of {args.repeats} fresh processes")
    ratios, rows = {}, []
    for model, batch in CASES:
        runs = {c: [measure(model, batch, c) for _ in range(args.repeats)] for c in CONFIGS}
        med = {c: statistics.median(p for p, _ in r) for c, r in runs.items()}
        saved = {c: r[0][1] for c, r in runs.items()}          # the same in every process
        print(f"{model} batch {batch}: " + ", ".join(f"{c} {v:.0f}" for c, v in med.items())
              + "; saved for backward " + ", ".join(f"{c} {v:.1f}" for c, v in saved.items()), flush=True)
        ratios[(model, batch)] = (med["int_eoq"] / max(med["fp32_bn"], 1e-9),
                                  saved["int_eoq"] / max(saved["fp32_bn"], 1e-9))
        rows.append(f"| {model} | {batch} | " + " | ".join(f"{med[c]:.0f}" for c in CONFIGS)
                    + f" | {ratios[(model, batch)][0]:.2f} | "
                    + " | ".join(f"{saved[c]:.1f}" for c in CONFIGS) + f" | {ratios[(model, batch)][1]:.2f} |")
    if args.out:
        head = ("| model | batch | " + " | ".join(f"{c} peak" for c in CONFIGS) + " | int_eoq / fp32_bn | "
                + " | ".join(f"{c} saved" for c in CONFIGS) + " | int_eoq / fp32_bn |\n"
                "|---|---:|" + "---:|" * (2 * len(CONFIGS) + 2) + "\n")
        with open(args.out, "w") as fh:
            fh.write(f"Peak RSS growth over 3 training steps (peak), MiB, one thread, median of {args.repeats} fresh "
                     f"processes, and what autograd saves from one forward for the backward (saved), MiB; "
                     f"CPU: {cpu}.\n\n" + head + "\n".join(rows) + "\n")
    for (model, batch), (r, rs) in ratios.items():
        print(f"int_eoq/fp32_bn {model} batch {batch} = {r:.3f} (peak RSS), {rs:.3f} (saved for backward)")


if __name__ == "__main__":
    main()

"""Data-parallel training on torch.distributed (gloo), deterministic by design.

Started by ``torchrun --nproc_per_node N -m eoq train ...`` (WORLD_SIZE, RANK and MASTER_ADDR in
the environment). Every process holds the whole model and takes rows [r*B/N, (r+1)*B/N) of each
global batch of B (same data order and augmentation everywhere, B divisible by N). How each
tensor crosses processes, and what that buys:

- A and E (batch tensors): each shard is quantized with the exponent of the *global* max|x|
  (one all-reduce MAX of a scalar per quantization) and with the random bits of its rows' global
  indices, so every code equals the code the whole batch gets in one process.
- The loss is the shard's mean divided by N, so the gradients add up to the global mean's.
- G of quantized layers: the weight-gradient sums are all-reduced *before* G quantization, so it
  rounds once, with the same random bits on every process. The integer engine all-reduces its
  int64 accumulators: exact, and the G codes are bit-identical to one process with the batch.
  The simulator all-reduces float32 sums (exact while partial sums stay below 2^24 LSB units).
- Every other gradient (Fixup scalars, BN, float layers): float32 all-reduce SUM after the
  backward pass. Its summation order differs from one process's, so these agree to float32
  rounding (relative 1e-6), not bit for bit.
- The optimizer then runs identically everywhere (same generator draws), so no weights are sent.
Fused simulator kernels are bypassed under data parallelism (their max is per process). The
training loop runs on the CPU, so the backend is gloo; nccl needs the loop on GPUs first.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

_STATE: dict = {"active": False, "rank": 0, "world": 1}


def active() -> bool:
    return _STATE["active"]


def rank() -> int:
    return _STATE["rank"]


def world() -> int:
    return _STATE["world"]


def init_from_env() -> bool:
    """Join the process group torchrun describes; False (and nothing done) for a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")          # the training loop is CPU-only
        _STATE["owned"] = True
    attach()
    return True


def shutdown(clean: bool = True) -> None:
    """Leave the process group that init_from_env joined; after a ``clean`` end, first wait until
    every process got here. This alone did not stop the occasional exit-time abort of a process
    ('terminate called without an active exception'); the CLI also skips the interpreter's
    teardown afterwards (eoq/cli.py: _leave)."""
    if _STATE.pop("owned", False) and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()
    detach()


def attach() -> None:
    """Use an already initialised default process group (tests spawn their own)."""
    _STATE.update(active=dist.get_world_size() > 1, rank=dist.get_rank(), world=dist.get_world_size())


def detach() -> None:
    _STATE.update(active=False, rank=0, world=1)


def shard(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's rows of a global batch."""
    n = len(y)
    if n % world():
        raise ValueError(f"batch of {n} cannot be split evenly over {world()} processes")
    part = n // world()
    return x[rank() * part:(rank() + 1) * part], y[rank() * part:(rank() + 1) * part]


def all_max(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def index_offset(local_numel: int) -> int:
    """Global logical index of this shard's first element (shards are equal, batch-major)."""
    return rank() * local_numel


def all_sum_(t: torch.Tensor) -> torch.Tensor:
    """In-place SUM across processes (int64 exactly; float in the backend's order)."""
    dist.all_reduce(t)
    return t


def all_reduce_grads(params) -> None:
    """SUM the gradients of ``params`` over the processes (the caller chooses which: the quantized
    layers reduce their own weight gradients in their backward, eoq/training/loop.py)."""
    for p in params:
        dist.all_reduce(p.grad)

"""Data-parallel training (2 processes, gloo over loopback) against one process with the whole batch."""
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(out: Path, procs: int, preset: str, engine: str, steps: int = 2):
    args = ["train", "--data", "embedded", "--train-limit", str(16 * steps), "--test-limit", "20",
            "--batch-size", "16", "--epochs", "1", "--preset", preset, "--engine", engine, "--seed", "3",
            "--lr", "0.1", "--warmup", "0", "--schedule", "constant", "--threads", "1", "--no-progress",
            "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if procs == 1:
        cmd = [sys.executable, "-m", "eoq"] + args
    else:
        cmd = [str(TORCHRUN), "--nproc_per_node", str(procs), "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "eoq"] + args
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "checkpoint.pt", weights_only=True)["model"]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
@pytest.mark.parametrize("preset,engine", [("eoq", "int"), ("eoq", "sim"), ("fp32", "sim")])
def test_two_processes_match_one_process_with_the_combined_batch(tmp_path, preset, engine):
    """EOQ (both engines; batch 16 keeps the simulator's float sums exact): every conv/linear weight
    code is identical after two steps; the Fixup scalars (float32 all-reduce, other summation
    order) agree to one LSB of their 8-bit grid.
    fp32: every parameter agrees to float32 rounding (rel 1e-5)."""
    one = train(tmp_path / "one", 1, preset, engine)
    two = train(tmp_path / "two", 2, preset, engine)
    assert one.keys() == two.keys()
    for name, a in one.items():
        b = two[name]
        if preset == "fp32":
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
        elif name.endswith("value"):                       # Fixup scalar on its grid: within 1 LSB
            lsb = 2.0 ** float(one[name[:-len("value")] + "exp"])
            assert float((a - b).abs().max()) <= lsb, name
        else:
            assert torch.equal(a, b), name

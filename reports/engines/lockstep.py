"""Run the simulator and the integer engine side by side on the real training stream and report
the first step after which any tensor of the two models differs (or that none did).

    python reports/engines/lockstep.py STEPS      (channels-last, peak lr 0.15, seed 0, 1 thread)
"""
import sys

import torch

from eoq.augment import steps_per_epoch, train_batches
from eoq.config import TrainConfig
from eoq.schedule import lr_at
from eoq.train import build_run, train_step


def main(steps: int) -> None:
    torch.set_num_threads(1)
    runs = {e: build_run(TrainConfig(engine=e, channels_last=True, lr=0.15, epochs=5, threads=1))
            for e in ("sim", "int")}
    data = runs["sim"].data
    total = steps_per_epoch(len(data.train_y), 128) * 5
    for step, x, y in train_batches(data.train_x, data.train_y, 128, 0, 0, 0, True):
        if step >= steps:
            break
        lr = lr_at(step, total, 0.15, "onecycle", 0.15)
        x = x.contiguous(memory_format=torch.channels_last)
        for r in runs.values():
            for g in r.optimizer.param_groups:
                g["lr"] = lr
            train_step(r.model, r.optimizer, x, y)
        a, b = runs["sim"].model.state_dict(), runs["int"].model.state_dict()
        diff = [k for k in a if not torch.equal(a[k], b[k])]
        if diff:
            print(f"step {step}: {len(diff)} tensors differ, first {diff[0]}")
            return
        if step % 50 == 0:
            print(f"identical after step {step}", flush=True)
    print(f"identical through {min(steps, step + 1)} steps")


if __name__ == "__main__":
    main(int(sys.argv[1]))

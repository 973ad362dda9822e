"""Run the simulator and the integer engine side by side on the real training stream and report
the first step after which any tensor of the two models differs (or that none did).

    python reports/engines/lockstep.py STEPS      (the eoq preset's default schedule, channels-last,
                                                   seed 0, 1 thread)
"""
import sys

import torch

from eoq.training.batches import steps_per_epoch, train_batches
from eoq.training.config import TrainConfig
from eoq.training.loop import build_run, train_step
from eoq.training.schedule import lr_at, momentum_at


def main(steps: int) -> None:
    torch.set_num_threads(1)
    runs = {e: build_run(TrainConfig(engine=e, channels_last=True, epochs=5, threads=1))
            for e in ("sim", "int")}
    data, c = runs["sim"].data, runs["sim"].cfg
    total = steps_per_epoch(len(data.train_y), 128) * 5
    for step, x, y in train_batches(data.train_x, data.train_y, 128, 0, 0, 0, True, c.crop_pad):
        if step >= steps:
            break
        lr = lr_at(step, total, c.lr, c.schedule, c.warmup)
        mu = momentum_at(step, total, c.lr, c.momentum, c.momentum_min, c.schedule, c.warmup, shift=True)
        x = x.contiguous(memory_format=torch.channels_last)
        for r in runs.values():
            for g in r.optimizer.param_groups:
                g["lr"], g["momentum"] = lr, mu
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

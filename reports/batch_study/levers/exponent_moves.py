"""Which stored tensors of EOQ move their exponent at batch 1, and how often.

Trains ResNet-20 (Fixup, ``eoq``, integer engine) on the study's stream (seed 0, lr 0.00442 with a
warm-up over 150 steps) for 3,000 steps of batch 1 and counts, per stored tensor, the steps in
which its power-of-two exponent went up (saturation) or down (under-use). Prints the totals and the
25 tensors that moved most.

    OMP_NUM_THREADS=1 .venv/bin/python reports/batch_study/levers/exponent_moves.py > reports/batch_study/levers/exponent_moves.txt
"""
import collections

import numpy as np
import torch

from eoq.training.batches import to_float
from eoq.training.data import default_val, load_cifar10
from eoq.training.loop import train_step
from eoq.training.setup import setup

STEPS, LR, WARMUP = 3000, 0.1 * (1 / 128) ** 0.5 * 0.5, 150

torch.set_num_threads(1)
data = load_cifar10(None)
data = data.hold_out(default_val(len(data.train_y)))
s = setup("resnet20", "fixup", "eoq", seed=0, lr=LR, momentum=0.875, engine="int")
model, opt = s.model, s.optimizer
params = dict(model.named_parameters())
names = {id(p): n for n, p in params.items()}
grids = list(opt.grid.values())
last = [int(g.exponent) for g in grids]
ups, downs = collections.Counter(), collections.Counter()
order = np.random.default_rng(0).permutation(len(data.train_y))[:STEPS]
for step, i in enumerate(order):
    x = to_float(torch.from_numpy(data.train_x[[i]])).contiguous(memory_format=torch.channels_last)
    y = torch.from_numpy(data.train_y[[i]]).long()
    for group in opt.param_groups:
        group["lr"] = LR * min(1.0, (step + 1) / WARMUP)
    train_step(model, opt, x, y)
    for k, g in enumerate(grids):
        e, name = int(g.exponent), names.get(id(g.param), str(k))
        ups[name] += e > last[k]
        downs[name] += e < last[k]
        last[k] = e
print(f"steps {STEPS}, stored tensors {len(grids)}, exponent moves up {sum(ups.values())}, "
      f"down {sum(downs.values())}")
for name in sorted(set(ups) | set(downs), key=lambda n: -(ups[n] + downs[n]))[:25]:
    shape = tuple(params[name].shape) if name in params else ()
    print(f"{name} {shape} up {ups[name]} down {downs[name]}")

"""Batches for training and evaluation: order, random crop with padding, horizontal flip, scaling.

Everything random is derived from (seed, epoch, step) alone, so that a run resumed at any step
sees exactly the batches the uninterrupted run would have seen:
    order of epoch t   = randperm(N) from a generator seeded with mix(seed, t)
    crop/flip of step s = offsets in [0, 2*pad] and flip bits from a generator seeded mix(seed, t, s)
Images stay uint8 until the batch is cut, then become float NCHW normalised with CIFAR-10's
per-channel mean and standard deviation.
"""
from __future__ import annotations

import numpy as np
import torch

MEAN = torch.tensor([0.4914, 0.4822, 0.4465])
STD = torch.tensor([0.2470, 0.2435, 0.2616])


def mix(*values: int) -> int:
    """A 63-bit seed from a tuple of integers (splitmix64-style), for independent streams."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float32 NCHW."""
    x = x.permute(0, 3, 1, 2).float().div_(255)
    return x.sub_(MEAN[:, None, None]).div_(STD[:, None, None]).contiguous()


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop of an (N, H, W, C) uint8 batch zero-padded by ``pad``, and random h-flip."""
    n, h, w, _ = x.shape
    xp = torch.nn.functional.pad(x, (0, 0, pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    rows = oy[:, None] + torch.arange(h)
    ar = torch.arange(w)
    cols = ox[:, None] + torch.where(flip[:, None], w - 1 - ar, ar)
    return xp[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(mix(seed, epoch)))


def train_batches(images: np.ndarray, labels: np.ndarray, batch_size: int, seed: int, epoch: int,
                  start_step: int = 0, augment: bool = True, crop_pad: int = 4):
    """Yield (step, x, y) for one epoch from ``start_step`` on; the last short batch is kept.
    ``crop_pad``: the crop's zero padding (0: flips only)."""
    order = epoch_order(len(images), seed, epoch)
    images_t, labels_t = torch.from_numpy(images), torch.from_numpy(labels)
    steps = (len(images) + batch_size - 1) // batch_size
    for step in range(start_step, steps):
        idx = order[step * batch_size:(step + 1) * batch_size]
        x = images_t[idx]
        if augment:
            x = crop_flip(x, torch.Generator().manual_seed(mix(seed, epoch, step, 1)), crop_pad)
        yield step, to_float(x), labels_t[idx]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int = 500):
    for i in range(0, len(images), batch_size):
        yield to_float(torch.from_numpy(images[i:i + batch_size])), torch.from_numpy(labels[i:i + batch_size])

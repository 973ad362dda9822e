"""Augmentation against a per-image reference; everything random is a function of (seed, epoch, step)."""
import numpy as np
import pytest
import torch

from eoq.training.batches import MEAN, STD, crop_flip, epoch_order, to_float, train_batches


@pytest.mark.parametrize("pad", [4, 2, 0])
def test_crop_flip_matches_per_image_reference(pad):
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(5)
    got = crop_flip(x, gen, pad)
    gen = torch.Generator().manual_seed(5)
    oy = torch.randint(0, 2 * pad + 1, (16,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (16,), generator=gen)
    flip = torch.rand(16, generator=gen) < 0.5
    assert 0 < int(flip.sum()) < 16
    padded = np.pad(x.numpy(), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    for i in range(16):
        ref = padded[i, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32]
        if flip[i]:
            ref = ref[:, ::-1]
        assert np.array_equal(got[i].numpy(), ref)


def test_to_float_normalizes():
    x = torch.full((1, 2, 2, 3), 255, dtype=torch.uint8)
    y = to_float(x)
    assert y.shape == (1, 3, 2, 2)
    assert torch.allclose(y[0, :, 0, 0], (1 - MEAN) / STD)


def test_batches_are_reproducible_and_resumable():
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(50) % 10
    full = list(train_batches(images, labels, 8, seed=3, epoch=2))
    tail = list(train_batches(images, labels, 8, seed=3, epoch=2, start_step=4))
    assert len(full) == 7 and full[-1][1].shape[0] == 2
    for (s1, x1, y1), (s2, x2, y2) in zip(full[4:], tail):
        assert s1 == s2 and torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(epoch_order(50, 3, 1), epoch_order(50, 3, 2))
    assert sorted(epoch_order(50, 3, 1).tolist()) == list(range(50))

"""CIFAR-10-C-style corruptions (eoq.training.corruptions): hand-worked cases, a float64 re-derivation
for the blur kernel, determinism (a pure function of image, corruption, severity and seed), bad input."""
import numpy as np
import pytest

from eoq.training.corruptions import CORRUPTIONS, CorruptionError, corrupt, corrupt_many, disk


def _img(seed=0, h=32, w=32):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_contrast_hand_worked():
    """15 pixels at 200, one at 0: mean 187.5 / 255; severity 5 (c = 0.15): 0 -> (0 - m) 0.15 + m =
    0.625 -> 159.375 -> 159; 200 -> 0.74265 -> 189.375 -> 189 (truncated as the original stores)."""
    img = np.full((4, 4, 3), 200, dtype=np.uint8)
    img[0, 0] = 0
    out = corrupt(img, "contrast", 5)
    assert out[0, 0].tolist() == [159] * 3 and out[1, 1].tolist() == [189] * 3


def test_brightness_hand_worked():
    """A grey pixel (saturation 0) has V = its value: 100/255 + 0.15 (severity 3) = 0.542 -> 138.25
    -> 138; a saturated red (255, 0, 0) stays red (V capped at 1); black + 0.3 -> grey 76."""
    img = np.zeros((1, 3, 3), dtype=np.uint8)
    img[0, 0] = 100
    img[0, 1] = (255, 0, 0)
    out = corrupt(img, "brightness", 3)
    assert out[0, 0].tolist() == [138] * 3 and out[0, 1].tolist() == [255, 0, 0]
    assert corrupt(img, "brightness", 5)[0, 2].tolist() == [76] * 3


def test_gaussian_noise_is_seeded_and_has_its_scale():
    flat = np.full((64, 64, 3), 128, dtype=np.uint8)
    a, b = corrupt(flat, "gaussian_noise", 5, seed=3), corrupt(flat, "gaussian_noise", 5, seed=3)
    assert np.array_equal(a, b) and not np.array_equal(a, corrupt(flat, "gaussian_noise", 5, seed=4))
    noise = (a.astype(np.float64) - 127.5) / 255                      # truncation: -0.5 on average
    assert abs(noise.std() - 0.10) < 0.005 and abs(noise.mean()) < 0.005


def test_defocus_kernel_against_a_float64_derivation():
    """Radius 1, alias 0.2 (severity 4): the disk is the 5-point cross, 1/5 each, then a 3-tap Gaussian
    [e^-12.5, 1, e^-12.5] / sum in each direction; it sums to 1 and a flat image stays flat."""
    k = disk(1.0, 0.2)
    g = np.exp(-1 / (2 * 0.2 ** 2))
    w = np.array([g, 1, g]) / (1 + 2 * g)
    cross = np.zeros((17, 17))
    cross[8, 7:10] = cross[7:10, 8] = 0.2
    want = np.zeros((17, 17))
    for i in range(17):            # separable 3-tap blur, the cross far from the border
        for j in range(17):
            want[i, j] = sum(w[a] * w[b] * cross[i + a - 1, j + b - 1] for a in range(3) for b in range(3)
                             if 0 <= i + a - 1 < 17 and 0 <= j + b - 1 < 17)
    assert np.allclose(k, want, atol=1e-15) and abs(k.sum() - 1) < 1e-12
    flat = np.full((8, 8, 3), 77, dtype=np.uint8)
    assert np.array_equal(corrupt(flat, "defocus_blur", 5), np.full_like(flat, 76)) or \
        np.array_equal(corrupt(flat, "defocus_blur", 5), flat)        # 77/255*255 truncates to 76 or 77


def test_pixelate_and_jpeg_hand_made():
    """Pixelate (severity 5, 32 -> 20 -> 32): a flat image stays flat, a 2-colour checkerboard is
    averaged towards grey; JPEG keeps a flat grey within 1 and is deterministic."""
    flat = np.full((32, 32, 3), 90, dtype=np.uint8)
    assert np.array_equal(corrupt(flat, "pixelate", 5), flat)
    board = np.indices((32, 32)).sum(axis=0) % 2 * 255
    board = np.repeat(board[..., None], 3, axis=2).astype(np.uint8)
    px = corrupt(board, "pixelate", 5)
    assert 60 < px.mean() < 200 and px.std() < board.std()
    j = corrupt(flat, "jpeg_compression", 5)
    assert np.abs(j.astype(int) - 90).max() <= 1
    img = _img(1)
    assert np.array_equal(corrupt(img, "jpeg_compression", 3), corrupt(img, "jpeg_compression", 3))


@pytest.mark.parametrize("name", CORRUPTIONS)
@pytest.mark.parametrize("severity", [3, 5])
def test_every_corruption_is_a_pure_function_that_changes_the_image(name, severity):
    img = _img(2)
    a, b = corrupt(img, name, severity, seed=7), corrupt(img.copy(), name, severity, seed=7)
    assert a.dtype == np.uint8 and a.shape == img.shape and np.array_equal(a, b)
    assert not np.array_equal(a, img)
    assert np.array_equal(img, _img(2))                                 # the input is not modified
    if severity == 5 and name != "jpeg_compression":                     # stronger at 5 than at 1
        d5 = np.abs(a.astype(int) - img).mean()
        d1 = np.abs(corrupt(img, name, 1, seed=7).astype(int) - img).mean()
        assert d5 > d1


def test_corrupt_many_draws_per_position():
    imgs = np.stack([np.full((8, 8, 3), 128, dtype=np.uint8)] * 3)
    out = corrupt_many(imgs, "gaussian_noise", 3, seed=1)
    assert not np.array_equal(out[0], out[1])
    assert np.array_equal(out[2], corrupt(imgs[2], "gaussian_noise", 3, seed=1 * 1_000_003 + 2))


@pytest.mark.parametrize("args,message", [
    (("fog", 3), "unknown corruption 'fog'"), (("contrast", 0), "severity must be an integer in 1-5"),
    (("contrast", 6), "severity must be an integer in 1-5"), (("contrast", 2.0), "severity must be an integer"),
])
def test_bad_input_one_line(args, message):
    with pytest.raises(CorruptionError, match=message):
        corrupt(_img(), *args)
    with pytest.raises(CorruptionError, match="uint8 H x W x 3"):
        corrupt(np.zeros((4, 4), dtype=np.uint8), "contrast", 3)

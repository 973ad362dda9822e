"""Image corruptions in the style of CIFAR-10-C (Hendrycks and Dietterich, ICLR 2019), NumPy/SciPy/PIL.

Each corruption takes a uint8 HWC image and a severity 1-5 and follows the published definition and
CIFAR parameters of the authors' ``make_cifar_c.py``; the result is truncated to uint8 as their
script stores it (``np.uint8`` of the clipped float image):

    gaussian_noise    x + N(0, c^2) on [0, 1],        c = 0.04, 0.06, 0.08, 0.09, 0.10
    defocus_blur      each channel correlated with an anti-aliased disk of radius r (the disk on a
                      17 x 17 grid, normalised, then a 3 x 3 Gaussian of sigma a), (r, a) = (0.3, 0.4),
                      (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1); borders reflected (OpenCV's
                      BORDER_REFLECT_101 = SciPy's "mirror")
    contrast          (x - mean) * c + mean, the mean per channel,   c = 0.75, 0.5, 0.4, 0.3, 0.15
    brightness        V + c in HSV,                   c = 0.05, 0.1, 0.15, 0.2, 0.3
    jpeg_compression  JPEG at quality c (PIL),        c = 80, 65, 58, 50, 40
    pixelate          down to int(32 c) and back up with box filters (PIL), c = 0.95, 0.9, 0.85, 0.75, 0.65

A corrupted image is a pure function of (image, corruption, severity, seed): only Gaussian noise is
random, and its generator is seeded with ``seed`` alone (``np.random.default_rng(seed)``), so a
stream that wants a different draw per image passes a different seed per image (its position).
The HSV conversion is matplotlib's (the same formulas as scikit-image's ``rgb2hsv``, which the
original uses). Differences from the original: OpenCV and scikit-image are replaced by SciPy and
matplotlib with the same definitions; float results can differ in the last bits and so, rarely, by
one after the truncation to uint8.
"""
from __future__ import annotations

import io

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
PARAMS = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg_compression": (80, 65, 58, 50, 40),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
}
CORRUPTIONS = tuple(PARAMS)


class CorruptionError(ValueError):
    """An unknown corruption, a severity outside 1-5 or an image that is not uint8 HWC RGB."""


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """[0, 1] floats to uint8 as the original stores them: clip, * 255, truncate."""
    return np.uint8(np.clip(x, 0, 1) * 255)


def gaussian_noise(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _to_uint8(x / 255.0 + rng.normal(size=x.shape, scale=c))


def _gaussian_3x3(sigma: float) -> np.ndarray:
    """OpenCV's 3-tap Gaussian kernel of ``sigma`` (normalised exp(-i^2 / (2 sigma^2)), i = -1, 0, 1)."""
    g = np.exp(-np.arange(-1, 2) ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def disk(radius: float, alias_blur: float) -> np.ndarray:
    """The anti-aliased disk kernel of defocus blur (radius <= 8: a 17 x 17 grid)."""
    from scipy import ndimage

    if radius > 8:
        raise CorruptionError("defocus_blur: the CIFAR disks have radius <= 8")
    grid = np.arange(-8, 9)
    xx, yy = np.meshgrid(grid, grid)
    k = ((xx ** 2 + yy ** 2) <= radius ** 2).astype(np.float64)
    k /= k.sum()
    g = _gaussian_3x3(alias_blur)
    k = ndimage.correlate1d(k, g, axis=0, mode="mirror")
    return ndimage.correlate1d(k, g, axis=1, mode="mirror")


def defocus_blur(x: np.ndarray, c, seed: int) -> np.ndarray:
    from scipy import ndimage

    k = disk(*c)
    x = x / 255.0
    return _to_uint8(np.stack([ndimage.correlate(x[..., d], k, mode="mirror") for d in range(3)], axis=-1))


def contrast(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    x = x / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return _to_uint8((x - means) * c + means)


def brightness(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    from matplotlib.colors import hsv_to_rgb, rgb_to_hsv

    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return _to_uint8(hsv_to_rgb(hsv))


def jpeg_compression(x: np.ndarray, c: int, seed: int) -> np.ndarray:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(x).save(buf, "JPEG", quality=c)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.uint8)


def pixelate(x: np.ndarray, c: float, seed: int) -> np.ndarray:
    from PIL import Image

    h, w = x.shape[:2]
    img = Image.fromarray(x).resize((int(w * c), int(h * c)), Image.BOX).resize((w, h), Image.BOX)
    return np.asarray(img, dtype=np.uint8)


_FUNCTIONS = {"gaussian_noise": gaussian_noise, "defocus_blur": defocus_blur, "contrast": contrast,
              "brightness": brightness, "jpeg_compression": jpeg_compression, "pixelate": pixelate}


def check(name: str, severity: int) -> None:
    """One clear error for an unknown corruption or a severity outside 1-5."""
    if name not in PARAMS:
        raise CorruptionError(f"unknown corruption {name!r}; choose one of: {', '.join(CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise CorruptionError(f"severity must be an integer in 1-5, got {severity!r}")


def corrupt(image: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``image`` (uint8, H x W x 3) with corruption ``name`` at ``severity`` (1-5); see the module doc.

    >>> img = np.full((4, 4, 3), 200, dtype=np.uint8); img[0, 0] = 0
    >>> int(corrupt(img, "contrast", 5)[0, 0, 0]), int(corrupt(img, "contrast", 5)[1, 1, 0])
    (159, 189)
    """
    check(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise CorruptionError(f"corrupt takes uint8 H x W x 3 images, got {image.dtype} {image.shape}")
    return _FUNCTIONS[name](image, PARAMS[name][severity - 1], seed)


def corrupt_many(images: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """Every image of a uint8 N x H x W x 3 array, image i with seed ``seed * 1_000_003 + i`` (its own
    noise draw, reproducible from its position)."""
    check(name, severity)
    return np.stack([corrupt(img, name, severity, seed * 1_000_003 + i) for i, img in enumerate(images)]) \
        if len(images) else np.asarray(images).copy()

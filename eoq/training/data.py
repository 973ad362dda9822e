"""CIFAR-10 from any of its usual forms, decoded once and cached as uint8 arrays.

Sources (``load_cifar10(source)``; ``source`` may also come from ``$EOQ_DATA``):
  - ``"embedded"``: the 5,000 + 1,000 image subset shipped in ``eoq/embedded`` (see its README);
  - an image-folder zip or directory: ``train/<class>/*.jpg|png`` and ``test/<class>/...``
    (the JPEG copy in ``shared/data/cifar10-jpeg.zip`` is one);
  - the official python format: a ``cifar-10-batches-py`` directory or its parent;
  - ``download=True``: fetches the official python-format tarball (md5-checked) when online.
With no source given, the first of ``$EOQ_DATA``, ``../shared/data/cifar10-jpeg.zip`` (beside
the checkout) and ``~/.cache/eoq/cifar-10-batches-py`` that exists is used.
Decoded arrays are cached in ``$EOQ_CACHE`` (default ``~/.cache/eoq``) as .npz, keyed by the
source's path, size and modification time, written atomically.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .atomic import atomic_write

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EMBEDDED = Path(__file__).parents[1] / "embedded" / "cifar10-subset.zip"
REPO_SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.zip"
OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
OFFICIAL_MD5 = "c58f30108f718f92721af3b95e74349a"
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


class DataError(RuntimeError):
    """Data that cannot be found or is not CIFAR-shaped; the message says what to do."""


@dataclass
class Dataset:
    """uint8 images (N, 32, 32, 3) and int64 labels, for train, test and (after
    :meth:`hold_out`) validation."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    classes: tuple = CLASSES
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    def hold_out(self, n: int) -> Dataset:
        """Move ``n`` training images to a validation split (``n`` = 0: none).

        Class-balanced: n // C images of every class, the first n % C classes one more. Which
        images depends on nothing but the training set (a fixed generator, seed 0, permutes each
        class's indices), so every seed, preset and norm holds out the same ones, and they are
        never trained on."""
        if n == 0:
            return self
        counts = np.bincount(self.train_y, minlength=len(self.classes))
        classes = len(self.classes)
        want = np.full(classes, n // classes) + (np.arange(classes) < n % classes)
        if n < 0 or np.any(want > counts - 1):
            raise DataError(f"--val {n} is more than the training set can give: {len(self.train_y)} images, "
                            f"at least {int(counts.min())} per class; choose --val below {int(counts.min()) * classes}")
        rng = np.random.default_rng(0)
        held = np.concatenate([rng.permutation(np.flatnonzero(self.train_y == c))[:k] for c, k in enumerate(want)])
        keep = np.ones(len(self.train_y), bool)
        keep[held] = False
        held = np.sort(held)
        return replace(self, train_x=self.train_x[keep], train_y=self.train_y[keep],
                       val_x=self.train_x[held], val_y=self.train_y[held])

    def subset(self, train: int | None = None, test: int | None = None) -> Dataset:
        """``train``/``test`` images drawn by a fixed shuffle (seed 0), so every class appears and a
        given limit always means the same images."""
        def pick(n_all, n):
            if n is None or n >= n_all:
                return slice(None)
            return np.sort(np.random.default_rng(0).permutation(n_all)[:n])

        tr, te = pick(len(self.train_y), train), pick(len(self.test_y), test)
        return replace(self, train_x=self.train_x[tr], train_y=self.train_y[tr], test_x=self.test_x[te],
                       test_y=self.test_y[te])


def default_val(n_train: int) -> int:
    """The validation split when none is asked for: 5,000 images, at most a tenth of the training
    set (500 of the embedded subset's 5,000)."""
    return min(5000, n_train // 10)


def sample(source: str | os.PathLike | None = "embedded", split: str = "test", n: int = 16, seed: int = 0,
           normalize: bool = True):
    """``n`` images of ``split`` ("train", "val" or "test"; "val" is the default validation split
    of the training images), class-balanced (n // C of every class, the first n % C classes one
    more) and drawn by a fixed shuffle (``seed``); returns (images, labels) as torch tensors:
    float NCHW normalised with CIFAR-10's statistics (``normalize``), or the uint8 NHWC images.

    The images come with the classes interleaved (labels 0, 1, ..., 9, 0, 1, ...), so any slice of
    them, such as the first batch of a training loop, mixes the classes. (The dataset's own arrays
    are sorted by class: a plain ``test_x[:32]`` is 32 airplanes, and a training step on it drives
    every prediction to one class.)

    >>> images, labels = sample("embedded", n=12)
    >>> labels[:10].tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    >>> tuple(images.shape)
    (12, 3, 32, 32)
    """
    import torch

    from .batches import to_float

    ds = load_cifar10(source)
    if split == "val":
        ds = ds.hold_out(default_val(len(ds.train_y)))
    x, y = {"train": (ds.train_x, ds.train_y), "val": (ds.val_x, ds.val_y), "test": (ds.test_x, ds.test_y)}.get(
        split, (None, None))
    if x is None:
        raise DataError(f"split must be 'train', 'val' or 'test', got {split!r}")
    classes = len(ds.classes)
    want = np.full(classes, n // classes) + (np.arange(classes) < n % classes)
    rng = np.random.default_rng(seed)
    picked = []
    for c, k in enumerate(want):
        members = np.flatnonzero(y == c)
        if k > len(members):
            raise DataError(f"{split} has {len(members)} images of class {ds.classes[c]!r}, {k} were asked for")
        picked.append(np.sort(rng.permutation(members)[:k]))
    idx = np.array([picked[c][r] for r in range(int(want.max(initial=0))) for c in range(classes)
                    if r < want[c]], dtype=np.int64)         # round robin over the classes
    images = torch.from_numpy(x[idx])
    return (to_float(images) if normalize else images), torch.from_numpy(y[idx])


def cache_dir() -> Path:
    return Path(os.environ.get("EOQ_CACHE", Path.home() / ".cache" / "eoq"))


def default_source() -> str | None:
    for cand in (os.environ.get("EOQ_DATA"), REPO_SHARED, cache_dir() / "cifar-10-batches-py"):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def load_cifar10(source: str | os.PathLike | None = None, download: bool = False,
                 use_cache: bool = True) -> Dataset:
    """CIFAR-10 as a :class:`Dataset` (uint8 NHWC images, int64 labels, sorted by class). ``source``:
    "embedded" (the 5,000 + 1,000 image subset inside the package: no network), a path to the JPEG
    zip or to ``cifar-10-batches-py``, or None for the first found of $EOQ_DATA, shared/data beside
    the checkout and the cache. ``download`` fetches the official archive into the cache when
    nothing is found; decoded arrays are cached (``use_cache``). Missing or corrupt data raise
    DataError with one line saying what to do.

    >>> ds = load_cifar10("embedded")
    >>> ds.train_x.shape, ds.test_x.shape
    ((5000, 32, 32, 3), (1000, 32, 32, 3))
    """
    if source is None:
        source = default_source()
    if source is None and download:
        source = str(download_official(cache_dir()))
    if source is None:
        raise DataError("no CIFAR-10 found: pass --data PATH (image-folder zip/dir or cifar-10-batches-py), "
                        "set EOQ_DATA, use --data embedded, or add --download when online")
    if str(source) == "embedded":
        return _cached(EMBEDDED, "embedded")
    path = Path(source).expanduser()
    if not path.exists():
        if download:
            return _cached(download_official(path), str(path), use_cache)
        raise DataError(f"data path {str(path)!r} does not exist: pass --data with an existing path, "
                        "or add --download to fetch the official CIFAR-10 there")
    return _cached(path, str(path), use_cache)


def _cached(path: Path, label: str, use_cache: bool = True) -> Dataset:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cache = cache_dir() / f"cifar10-{key}.npz"
    if use_cache and cache.exists():
        try:
            with np.load(cache) as z:
                return Dataset(z["train_x"], z["train_y"], z["test_x"], z["test_y"], label)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache is rebuilt below
    ds = _decode(path, label)
    if use_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(cache) as fh:
            np.savez(fh, train_x=ds.train_x, train_y=ds.train_y, test_x=ds.test_x, test_y=ds.test_y)
    return ds


def _decode(path: Path, label: str) -> Dataset:
    if path.is_dir():
        py = path if (path / "data_batch_1").exists() else path / "cifar-10-batches-py"
        if (py / "data_batch_1").exists():
            return _read_python(py, label)
        files = {str(p.relative_to(path)): p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS}
        return _read_folders({k: v.read_bytes for k, v in files.items()}, label)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = [n for n in z.namelist() if n.lower().endswith(IMAGE_EXTS)]
            return _read_folders({n: (lambda n=n: z.read(n)) for n in names}, label)
    raise DataError(f"{str(path)!r} is neither an image-folder zip/directory nor a cifar-10-batches-py "
                    "directory")


def _read_folders(files: dict, label: str) -> Dataset:
    """Decode ``[prefix/]{train,test}/<class>/<name>`` images; labels follow CLASSES."""
    from PIL import Image

    split: dict[str, list] = {"train": [], "test": []}
    for name in sorted(files):
        parts = name.replace("\\", "/").split("/")
        if len(parts) < 3 or parts[-3] not in split:
            continue
        if parts[-2] not in CLASSES:
            raise DataError(f"{label}: folder {parts[-2]!r} is not a CIFAR-10 class ({', '.join(CLASSES)})")
        split[parts[-3]].append((name, CLASSES.index(parts[-2])))
    if not split["train"] or not split["test"]:
        raise DataError(f"{label} is not CIFAR-shaped: expected train/<class>/*.jpg and test/<class>/*.jpg")
    arrays = []
    for part in ("train", "test"):
        x = np.empty((len(split[part]), 32, 32, 3), np.uint8)
        for i, (name, _) in enumerate(split[part]):
            try:
                img = Image.open(io.BytesIO(files[name]())).convert("RGB")
            except Exception as err:  # PIL raises many types for corrupt files
                raise DataError(f"{label}: cannot decode image {name!r}: {err}") from None
            if img.size != (32, 32):
                raise DataError(f"{label}: image {name!r} is {img.size[0]}x{img.size[1]}, CIFAR-10 is 32x32")
            x[i] = np.asarray(img)
        arrays += [x, np.array([c for _, c in split[part]], np.int64)]
    return Dataset(*arrays, label)


def _read_python(py: Path, label: str) -> Dataset:
    def batch(name):
        try:
            with open(py / name, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            return (d[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(),
                    np.asarray(d[b"labels"], np.int64))
        except (OSError, KeyError, ValueError, pickle.UnpicklingError, EOFError) as err:
            raise DataError(f"{label}: {name} is not a CIFAR-10 python batch: {err}") from None

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    tx, ty = batch("test_batch")
    return Dataset(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]), tx, ty, label)


def download_official(root: Path) -> Path:
    """Fetch and unpack the official python-format CIFAR-10 into ``root`` (md5 checked)."""
    root = Path(root)
    if (root / "cifar-10-batches-py" / "data_batch_1").exists():
        return root
    root.mkdir(parents=True, exist_ok=True)
    tar = root / "cifar-10-python.tar.gz"
    try:
        with urllib.request.urlopen(OFFICIAL_URL, timeout=60) as resp, atomic_write(tar) as fh:
            while chunk := resp.read(1 << 20):
                fh.write(chunk)
    except OSError as err:
        raise DataError(f"download of CIFAR-10 from {OFFICIAL_URL} failed ({err}); "
                        "pass --data with a local copy") from None
    if hashlib.md5(tar.read_bytes()).hexdigest() != OFFICIAL_MD5:
        tar.unlink()
        raise DataError("downloaded CIFAR-10 archive has the wrong md5; try again")
    with tarfile.open(tar) as tf:
        tf.extractall(root, filter="data")
    return root

"""Data: every source form decodes to the same CIFAR-shaped arrays; bad sources give clear errors."""
import pickle
import zipfile

import numpy as np
import pytest

from eoq.training.data import CLASSES, DataError, load_cifar10


@pytest.fixture(scope="module")
def embedded():
    return load_cifar10("embedded")


def test_embedded_subset(embedded):
    assert embedded.train_x.shape == (5000, 32, 32, 3) and embedded.train_x.dtype == np.uint8
    assert embedded.test_x.shape == (1000, 32, 32, 3)
    assert np.bincount(embedded.train_y).tolist() == [500] * 10
    assert np.bincount(embedded.test_y).tolist() == [100] * 10


def test_full_jpeg_zip(shared_zip, embedded):
    ds = load_cifar10(shared_zip)
    assert ds.train_x.shape == (50000, 32, 32, 3) and ds.test_x.shape == (10000, 32, 32, 3)
    assert np.bincount(ds.train_y).tolist() == [5000] * 10
    # the embedded subset is the first 500 images per class of the same files, byte for byte
    first_airplanes = ds.train_x[ds.train_y == 0][:500]
    assert np.array_equal(first_airplanes, embedded.train_x[:500])
    # CIFAR-10 statistics (JPEG re-encoding moves them only slightly)
    assert np.allclose(ds.train_x.mean((0, 1, 2)) / 255, [0.4914, 0.4822, 0.4465], atol=0.005)


def test_python_format_and_image_folder_dir(tmp_path, embedded):
    py = tmp_path / "cifar-10-batches-py"
    py.mkdir()
    chunks = np.array_split(np.arange(5000), 5)
    for i, idx in enumerate(chunks, 1):
        data = embedded.train_x[idx].transpose(0, 3, 1, 2).reshape(len(idx), -1)
        with open(py / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": data, b"labels": embedded.train_y[idx].tolist()}, fh)
    with open(py / "test_batch", "wb") as fh:
        pickle.dump({b"data": embedded.test_x.transpose(0, 3, 1, 2).reshape(1000, -1),
                     b"labels": embedded.test_y.tolist()}, fh)
    for source in (tmp_path, py):
        ds = load_cifar10(source, use_cache=False)
        assert np.array_equal(ds.train_x, embedded.train_x) and np.array_equal(ds.test_y, embedded.test_y)

    folder = tmp_path / "folder"
    from PIL import Image
    for part, x, y in (("train", embedded.train_x[:20], embedded.train_y[:20]),
                       ("test", embedded.test_x[:10], embedded.test_y[:10])):
        for i, (img, label) in enumerate(zip(x, y)):
            d = folder / part / CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:04d}.png")
    ds = load_cifar10(folder, use_cache=False)
    assert ds.train_x.shape == (20, 32, 32, 3)
    assert sorted(ds.train_y.tolist()) == sorted(embedded.train_y[:20].tolist())


def test_missing_and_malformed_sources(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="neither an image-folder"):
        load_cifar10(tmp_path / "notes.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not CIFAR-shaped"):
        load_cifar10(empty)
    for name, cls, message in (("bad.zip", "giraffe", "not a CIFAR-10 class"), ("corrupt.zip", "cat", "cannot decode")):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as z:
            for part in ("train", "test"):
                z.writestr(f"{part}/{cls}/0.jpg", b"not a jpeg")
        with pytest.raises(DataError, match=message):
            load_cifar10(path, use_cache=False)


def test_no_source_at_all(monkeypatch, tmp_path):
    import eoq.training.data as D
    monkeypatch.setattr(D, "default_source", lambda: None)
    with pytest.raises(DataError, match="no CIFAR-10 found"):
        load_cifar10()


def test_validation_split_is_disjoint_class_balanced_and_fixed():
    """--val N holds N training images out: n / 10 of each class, never among the training images,
    the same images on every call (they depend on the training set alone)."""
    ds = load_cifar10("embedded")
    a, b = ds.hold_out(500), ds.hold_out(500)
    assert len(a.val_y) == 500 and len(a.train_y) == len(ds.train_y) - 500
    assert np.bincount(a.val_y, minlength=10).tolist() == [50] * 10
    assert np.array_equal(a.val_x, b.val_x) and np.array_equal(a.val_y, b.val_y)
    train_rows = {x.tobytes() for x in a.train_x}
    assert not any(x.tobytes() in train_rows for x in a.val_x)
    together = sorted(x.tobytes() for x in np.concatenate([a.train_x, a.val_x]))
    assert together == sorted(x.tobytes() for x in ds.train_x)            # nothing lost, nothing added
    uneven = ds.hold_out(13)
    assert np.bincount(uneven.val_y, minlength=10).tolist() == [2, 2, 2] + [1] * 7


def test_validation_split_is_the_same_for_every_seed_preset_and_norm():
    from eoq.training.config import TrainConfig
    from eoq.training.loop import build_run

    runs = [build_run(TrainConfig(data="embedded", seed=s, preset=p, norm=n, val=200, train_limit=300))
            for s, p, n in ((0, "fp32", "bn"), (1, "eoq", "fixup"), (2, "wageubn", "bn"))]
    for r in runs[1:]:
        assert np.array_equal(r.data.val_x, runs[0].data.val_x)
        assert np.array_equal(r.data.val_y, runs[0].data.val_y)
    held = {x.tobytes() for x in runs[0].data.val_x}
    assert not any(x.tobytes() in held for r in runs for x in r.data.train_x)


def test_val_zero_is_the_whole_training_set_and_the_default_is_a_tenth_at_most():
    from eoq.training.config import TrainConfig
    from eoq.training.data import default_val
    from eoq.training.loop import build_run

    run = build_run(TrainConfig(data="embedded", val=0))
    assert run.data.val_y is None and len(run.data.train_y) == 5000
    assert default_val(50_000) == 5000 and default_val(5000) == 500
    cfg = TrainConfig(data="embedded")
    build_run(cfg)
    assert cfg.val == 500


def test_too_large_a_validation_split_is_one_clear_error():
    ds = load_cifar10("embedded")
    with pytest.raises(DataError, match="--val"):
        ds.hold_out(5000)

"""`replibook.data.real` against tiny fake copies of the real on-disk formats.

No test downloads anything or needs the shared mirror, except the one marked
``data``, which reads 100 images from ``$REPLIBOOK_DATA`` when it is there.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fakes import (CIFAR10_CLASSES, mirror_colour, write_cifar10_jpeg_zip, write_cifar10_pickles,
                   write_mnist_idx)
from replibook.data import Dataset, balanced_subset, real
from replibook.errors import DatasetMissing, ReplibookError


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path_factory, monkeypatch):
    """Every test gets an empty REPLIBOOK_CACHE, except the real-mirror test (decode once per machine)."""
    if request.node.get_closest_marker("data") is None:
        monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path_factory.mktemp("cache")))
        monkeypatch.setattr(real, "_SHA_MEMO", {})


def by_blue_id(x: torch.Tensor) -> np.ndarray:
    """The image ids the fake CIFAR pickles encode in the blue channel, as ints."""
    return np.rint(x[:, 2, 0, 0].cpu().numpy() * 255).astype(int)


# ---------------------------------------------------------------------------
# CIFAR-10: torchvision pickles
# ---------------------------------------------------------------------------

def test_cifar10_torchvision_layout_round_trips_pixels_and_labels(tmp_path):
    expected = write_cifar10_pickles(tmp_path, per_batch=6, n_test=10)
    ds = real.cifar10(root=tmp_path, device="cpu")
    assert isinstance(ds, Dataset) and ds.source == "torchvision"
    assert ds.classes == CIFAR10_CLASSES
    assert ds.train.x.shape == (30, 3, 32, 32) and ds.test.x.shape == (10, 3, 32, 32)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    # All five batches were read; samples come back shuffled, so match them by id.
    ids = by_blue_id(ds.train.x)
    assert sorted(ids) == list(range(30))
    order = np.argsort(ids)
    np.testing.assert_array_equal((ds.train.x[order].numpy() * 255).round().astype(np.uint8),
                                  expected["train_x"])
    np.testing.assert_array_equal(ds.train.y[order].numpy(), expected["train_y"])
    assert sorted(by_blue_id(ds.test.x)) == list(range(30, 40))
    assert float(ds.train.x.min()) >= 0.0 and float(ds.train.x.max()) <= 1.0
    card = ds.card()
    assert card["source"] == "torchvision" and card["n_train"] == 30 and card["x_shape"] == [3, 32, 32]


def test_cifar10_balanced_seeded_subsets(tmp_path):
    write_cifar10_pickles(tmp_path, per_batch=10, n_test=20)     # 5 train / 2 test images per class
    a = real.cifar10(n_train=20, n_test=10, seed=0, root=tmp_path, device="cpu")
    assert torch.bincount(a.train.y, minlength=10).tolist() == [2] * 10
    assert torch.bincount(a.test.y, minlength=10).tolist() == [1] * 10
    assert a.info["subset"] == "balanced per class" and a.info["full_train"] == 50
    b = real.cifar10(n_train=20, n_test=10, seed=0, root=tmp_path, device="cpu")
    c = real.cifar10(n_train=20, n_test=10, seed=1, root=tmp_path, device="cpu")
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.train.y, b.train.y)
    assert set(by_blue_id(a.train.x)) != set(by_blue_id(c.train.x))
    with pytest.raises(ValueError, match="asked for 30 samples out of 20"):
        real.cifar10(n_test=30, root=tmp_path, device="cpu")


def test_balanced_subset_quota_and_errors():
    y = np.repeat(np.arange(3), [5, 5, 2])
    idx = balanced_subset(y, 7, seed=0)
    assert len(set(idx)) == 7 and np.bincount(y[idx]).tolist() == [3, 2, 2]
    with pytest.raises(ValueError, match="too few"):
        balanced_subset(y, 9, seed=0)                                # class 2 has only 2
    assert sorted(balanced_subset(y, None, seed=3)) == list(range(12))


# ---------------------------------------------------------------------------
# CIFAR-10: the JPEG mirror
# ---------------------------------------------------------------------------

def test_cifar10_mirror_decodes_members_to_classes_and_colours(tmp_path):
    write_cifar10_jpeg_zip(tmp_path, per_class_train=3, per_class_test=2)
    ds = real.cifar10(root=tmp_path, source="mirror", device="cpu")
    assert ds.source == "cifar10-jpeg-mirror"
    assert ds.train.x.shape == (30, 3, 32, 32) and ds.test.x.shape == (20, 3, 32, 32)
    assert torch.bincount(ds.train.y, minlength=10).tolist() == [3] * 10
    assert ds.info["sha256"] and ds.info["is_reference_mirror"] is False
    for split_name, split in (("train", ds.train), ("test", ds.test)):
        for image, label in zip(split.x, split.y.tolist()):
            # The second colour channel identifies k within the class (200 - 15k).
            k = round((200 - float(image[1].mean()) * 255) / 15)
            want = torch.tensor(mirror_colour(split_name, label, k), dtype=torch.float32) / 255
            # JPEG is lossy: flat colours come back within a few grey levels.
            assert torch.allclose(image.mean(dim=(1, 2)), want, atol=6 / 255), (split_name, label, k)


def test_cifar10_mirror_is_decoded_once_and_hash_is_remembered(tmp_path, monkeypatch):
    zip_path = write_cifar10_jpeg_zip(tmp_path, per_class_train=2, per_class_test=1)
    first = real.cifar10(root=tmp_path, source="mirror", device="cpu")

    def must_not_run(*args, **kwargs):
        raise AssertionError("decoded or hashed again although the cache is valid")

    # A fresh process: no in-memory hash, but the on-disk hash index and .npy cache remain.
    monkeypatch.setattr(real, "_SHA_MEMO", {})
    monkeypatch.setattr(real, "_decode_jpeg_zip", must_not_run)
    monkeypatch.setattr(real, "_sha256_file", must_not_run)
    second = real.cifar10(root=tmp_path, source="mirror", device="cpu")
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)

    # New content at the same path: new size/mtime -> re-hashed -> new cache key -> decoded again.
    monkeypatch.undo()
    write_cifar10_jpeg_zip(tmp_path, per_class_train=2, per_class_test=1, variant=40)
    os.utime(zip_path, ns=(1, 1))                   # make sure the mtime differs even on coarse clocks
    calls = []
    original = real._decode_jpeg_zip
    monkeypatch.setattr(real, "_decode_jpeg_zip", lambda p: calls.append(p) or original(p))
    third = real.cifar10(root=tmp_path, source="mirror", device="cpu")
    assert len(calls) == 1 and third.info["sha256"] != first.info["sha256"]


def test_cifar10_auto_prefers_torchvision_then_mirror(tmp_path):
    write_cifar10_jpeg_zip(tmp_path, per_class_train=1, per_class_test=1)
    assert real.cifar10(root=tmp_path, device="cpu").source == "cifar10-jpeg-mirror"
    write_cifar10_pickles(tmp_path, per_batch=2, n_test=10)
    assert real.cifar10(root=tmp_path, device="cpu").source == "torchvision"
    assert real.cifar10(root=tmp_path, source="mirror", device="cpu").source == "cifar10-jpeg-mirror"


def test_cifar10_missing_raises_one_clear_line(tmp_path, monkeypatch):
    with pytest.raises(DatasetMissing) as caught:
        real.cifar10(root=tmp_path, device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    for needle in ("CIFAR-10", str(tmp_path), "REPLIBOOK_DATA", "cifar-10-batches-py",
                   "cifar10-jpeg.zip", "download=True"):
        assert needle in message
    # A mirror alone does not satisfy source="torchvision": never a silent substitute.
    write_cifar10_jpeg_zip(tmp_path, per_class_train=1, per_class_test=1)
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA"):
        real.cifar10(root=tmp_path, source="torchvision", device="cpu")
    # No root and no REPLIBOOK_DATA.
    monkeypatch.delenv("REPLIBOOK_DATA", raising=False)
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA is not set"):
        real.cifar10(device="cpu")


def test_cifar10_root_defaults_to_replibook_data(tmp_path, monkeypatch):
    write_cifar10_pickles(tmp_path, per_batch=2, n_test=10)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    assert real.cifar10(device="cpu").info["root"] == str(tmp_path)


# ---------------------------------------------------------------------------
# MNIST / Fashion-MNIST IDX files
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_round_trip(tmp_path, gz):
    expected = write_mnist_idx(tmp_path, n_train=30, n_test=20, gz=gz)
    ds = real.mnist(root=tmp_path, device="cpu")
    assert ds.source == "torchvision" and ds.classes == [str(d) for d in range(10)]
    assert ds.train.x.shape == (30, 1, 28, 28) and ds.test.x.shape == (20, 1, 28, 28)
    pixels = (ds.train.x[:, 0].numpy() * 255).round().astype(np.uint8)
    ids = pixels[:, 0, 0].astype(int)                            # pixel (0, 0) holds the id
    np.testing.assert_array_equal(pixels[np.argsort(ids)], expected["train_x"])
    np.testing.assert_array_equal(ds.train.y.numpy()[np.argsort(ids)], expected["train_y"])
    flat = real.mnist(root=tmp_path, n_train=10, n_test=10, flatten=True, device="cpu")
    assert flat.train.x.shape == (10, 784)
    assert torch.bincount(flat.train.y, minlength=10).tolist() == [1] * 10


def test_fashion_mnist_layout_and_missing(tmp_path):
    with pytest.raises(DatasetMissing) as caught:
        real.fashion_mnist(root=tmp_path, device="cpu")
    assert "Fashion-MNIST" in str(caught.value) and "REPLIBOOK_DATA" in str(caught.value)
    assert "FashionMNIST/raw" in str(caught.value) and "\n" not in str(caught.value)
    write_mnist_idx(tmp_path, folder="FashionMNIST", n_train=10, n_test=10, gz=True)
    ds = real.fashion_mnist(root=tmp_path, device="cpu")
    assert ds.name == "fashion_mnist" and ds.classes[0] == "T-shirt/top" and len(ds.train) == 10


def test_read_idx_rejects_corrupt_files(tmp_path):
    write_mnist_idx(tmp_path, n_train=10, n_test=10)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ReplibookError, match="truncated"):
        real.read_idx(path)
    path.write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(ReplibookError, match="not an IDX file"):
        real.read_idx(path)


# ---------------------------------------------------------------------------
# The real mirror (optional)
# ---------------------------------------------------------------------------

@pytest.mark.data
def test_real_cifar10_mirror_subset():
    root = os.environ.get("REPLIBOOK_DATA")
    if not root or not (Path(root) / "cifar10-jpeg" / "cifar10-jpeg.zip").is_file():
        pytest.skip("REPLIBOOK_DATA does not point at a folder with cifar10-jpeg/cifar10-jpeg.zip")
    ds = real.cifar10(n_train=100, n_test=100, source="mirror", device="cpu")
    assert ds.source == "cifar10-jpeg-mirror" and ds.info["is_reference_mirror"]
    assert ds.info["full_train"] == 50_000 and ds.info["full_test"] == 10_000
    assert ds.train.x.shape == (100, 3, 32, 32)
    assert torch.bincount(ds.train.y, minlength=10).tolist() == [10] * 10
    assert 0.3 < float(ds.train.x.mean()) < 0.65                 # natural images, not blank


# --------------------------------------------------------------------------- MVTec AD

def _png(path: Path, array: np.ndarray) -> None:
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _fake_mvtec(root: Path, category: str = "bottle", n_train: int = 10) -> None:
    """A tiny MVTec AD category in the release's layout (train/good, test/<defect>, ground_truth)."""
    rng = np.random.default_rng(0)
    cat = root / category
    for i in range(n_train):
        _png(cat / "train" / "good" / f"{i:03d}.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
    for i in range(2):
        _png(cat / "test" / "good" / f"{i:03d}.png", rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
        _png(cat / "test" / "broken" / f"{i:03d}.png", rng.integers(0, 255, (20, 20), dtype=np.uint8))
        mask = np.zeros((20, 20), dtype=np.uint8)
        mask[5:10, 5:10] = 255
        _png(cat / "ground_truth" / "broken" / f"{i:03d}_mask.png", mask)


def test_mvtec_ad_reader_on_fake_copy(tmp_path):
    _fake_mvtec(tmp_path)
    data = real.mvtec_ad(tmp_path, "bottle", size=16)
    assert data["train"].shape == (10, 3, 16, 16)                            # fold=None: all of them
    assert data["test"].shape == (4, 3, 16, 16) and data["labels"].tolist() == [1, 1, 0, 0]
    assert set(torch.unique(data["masks"]).tolist()) <= {0.0, 1.0}
    assert float(data["masks"][:2].sum()) > 0 and float(data["masks"][2:].sum()) == 0
    frac = float(data["masks"][0].mean())
    assert 0.03 < frac < 0.1                                                 # a 5x5 square of 20x20
    assert 0.0 <= float(data["test"].min()) and float(data["test"].max()) <= 1.0
    fold0 = real.mvtec_ad(tmp_path, "bottle", size=16, fold=0)["train"]
    fold1 = real.mvtec_ad(tmp_path, "bottle", size=16, fold=1)["train"]
    assert fold0.shape[0] == 8 and not torch.equal(fold0, fold1)             # 4 of 5 folds
    with pytest.raises(DatasetMissing, match="MVTec AD"):
        real.mvtec_ad(tmp_path, "cable", size=16)


def test_mvtec_ad_root_defaults_to_replibook_data(tmp_path, monkeypatch):
    _fake_mvtec(tmp_path / "mvtec_ad", "grid", n_train=5)
    monkeypatch.setenv("REPLIBOOK_DATA", str(tmp_path))
    assert real.mvtec_ad(None, "grid", size=8)["train"].shape == (5, 3, 8, 8)
    monkeypatch.delenv("REPLIBOOK_DATA")
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA"):
        real.mvtec_ad(None, "grid", size=8)

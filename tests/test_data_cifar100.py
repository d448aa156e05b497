"""CIFAR-100 loader: fine and coarse labels from fake pickles in torchvision's on-disk layout."""
import pickle

import numpy as np
import pytest
import torch

from replibook.data import real
from replibook.errors import DatasetMissing, ReplibookError

# a few true CIFAR-100 (fine -> superclass) pairs: apple, aquarium_fish, baby, bear, beaver
PAIRS = [(0, 4), (1, 1), (2, 14), (3, 8), (4, 0)]


def write_fake(root, n_train=10, n_test=5, coarse=True, conflict=False):
    """cifar-100-python/{train,test}: python pickles with bytes keys like the original release."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [PAIRS[i % len(PAIRS)][0] for i in range(n)]
        sup = [PAIRS[i % len(PAIRS)][1] for i in range(n)]
        if conflict and name == "test":
            sup[0] = (sup[0] + 1) % 20
        data = np.stack([np.full(3072, 10 * i, dtype=np.uint8) for i in range(n)])
        data[:, 2048:] = 250                                        # blue plane
        d = {b"data": data, b"fine_labels": fine, b"filenames": [f"{i}.png".encode() for i in range(n)]}
        if coarse:
            d[b"coarse_labels"] = sup
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    return root


def test_fine_labels_default_is_backwards_compatible(tmp_path):
    ds = real.cifar100(root=write_fake(tmp_path), device="cpu")
    assert ds.train.x.shape == (10, 3, 32, 32) and ds.train.x.dtype == torch.float32
    assert ds.train.y.tolist() == [0, 1, 2, 3, 4] * 2
    assert len(ds.classes) == 100
    assert float(ds.train.x[2, 0, 0, 0]) == pytest.approx(20 / 255)
    assert float(ds.train.x[2, 2, 31, 31]) == pytest.approx(250 / 255)


def test_coarse_labels_and_the_fine_to_coarse_map(tmp_path):
    root = write_fake(tmp_path)
    fine = real.cifar100(root=root, device="cpu")
    coarse = real.cifar100(root=root, device="cpu", labels="coarse")
    assert coarse.train.y.tolist() == [4, 1, 14, 8, 0] * 2
    assert len(coarse.classes) == 20 and coarse.info["labels"] == "coarse"
    f2c = fine.info["fine_to_coarse"]
    assert len(f2c) == 100 and f2c[:5] == [4, 1, 14, 8, 0] and set(f2c[5:]) == {-1}
    assert torch.equal(torch.tensor(f2c)[fine.train.y], coarse.train.y)   # the documented recipe
    assert torch.equal(torch.tensor(f2c)[fine.test.y], coarse.test.y)
    assert torch.equal(fine.train.x, coarse.train.x)


def test_subsets_keep_images_and_both_labels_aligned(tmp_path):
    root = write_fake(tmp_path)
    a = real.cifar100(root=root, n_train=4, n_test=3, seed=3, device="cpu")
    b = real.cifar100(root=root, n_train=4, n_test=3, seed=3, device="cpu", labels="coarse")
    assert len(a.train) == 4 and len(a.test) == 3
    assert torch.equal(a.train.x, b.train.x)
    assert torch.equal(torch.tensor(a.info["fine_to_coarse"])[a.train.y], b.train.y)
    # image i carries value 10 i in every pixel of the red plane and label PAIRS[i % 5]
    idx = (a.train.x[:, 0, 0, 0] * 255).round().long() // 10
    assert a.train.y.tolist() == [PAIRS[i % 5][0] for i in idx.tolist()]


def test_pickles_without_coarse_labels(tmp_path):
    root = write_fake(tmp_path, coarse=False)
    ds = real.cifar100(root=root, device="cpu")
    assert ds.train.y.tolist()[:5] == [0, 1, 2, 3, 4] and set(ds.info["fine_to_coarse"]) == {-1}
    with pytest.raises(ReplibookError, match="coarse_labels"):
        real.cifar100(root=root, device="cpu", labels="coarse")


def test_inconsistent_superclasses_and_bad_arguments_raise(tmp_path):
    with pytest.raises(ReplibookError, match="fine class 0"):
        real.cifar100(root=write_fake(tmp_path, conflict=True), device="cpu")
    with pytest.raises(ValueError, match="labels"):
        real.cifar100(root=tmp_path, device="cpu", labels="super")


def test_missing_dataset_names_it_and_replibook_data(tmp_path, monkeypatch):
    with pytest.raises(DatasetMissing, match="CIFAR-100.*REPLIBOOK_DATA"):
        real.cifar100(root=tmp_path / "nowhere", device="cpu")
    monkeypatch.delenv("REPLIBOOK_DATA", raising=False)
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA"):
        real.cifar100(device="cpu")

"""ImageNet / ImageNet-100 folder loader on a tiny fake copy in the ImageFolder layout."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from replibook.data import images
from replibook.data import real_imagenet as R
from replibook.errors import DatasetMissing

WNIDS = sorted(R.IMAGENET100_CLASSES[:3])          # real ImageNet-100 ids
OTHER = "n01440764"                                # tench: in ImageNet-1k, not in ImageNet-100


def _jpeg(path, w, h, colour):
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[..., :] = colour
    arr[: h // 2, : w // 2] = 255 - np.asarray(colour, dtype=np.uint8)     # a corner that crops can move
    Image.fromarray(arr).save(path, quality=95)


@pytest.fixture
def fake_imagenet(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 4), ("val", 2)):
        for k, wnid in enumerate(WNIDS + [OTHER]):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(n):
                _jpeg(d / f"{wnid}_{i}.JPEG", 40 + 8 * i, 30 + 4 * k, (40 * k, 80, 200 - 30 * k))
            (d / "notes.txt").write_text("not an image")
    return root


def test_imagenet100_list_is_cmc():
    assert len(R.IMAGENET100_CLASSES) == 100 == len(set(R.IMAGENET100_CLASSES))
    assert all(re.fullmatch(r"n\d{8}", w) for w in R.IMAGENET100_CLASSES)
    # first and last entries of CMC's imagenet100.txt
    assert R.IMAGENET100_CLASSES[0] == "n02869837" and R.IMAGENET100_CLASSES[-1] == "n02090622"
    assert OTHER not in R.IMAGENET100_CLASSES


def test_files_list_sorted_classes_and_labels(fake_imagenet):
    paths, y, classes = R.imagenet_files("train", root=fake_imagenet)
    assert classes == sorted(WNIDS + [OTHER])
    assert len(paths) == 16 and y.dtype == torch.int64
    assert all(p.suffix == ".JPEG" for p in paths)           # notes.txt skipped
    assert [classes[int(k)] for k in y] == [p.parent.name for p in paths]


def test_subset_selection_and_missing_classes(fake_imagenet):
    paths, y, classes = R.imagenet_files("val", classes=list(reversed(WNIDS)), root=fake_imagenet)
    assert classes == WNIDS and sorted(set(y.tolist())) == [0, 1, 2] and len(paths) == 6
    with pytest.raises(DatasetMissing, match="97 of the 100"):
        R.imagenet_files("val", classes="imagenet100", root=fake_imagenet)
    with pytest.raises(ValueError, match="split"):
        R.imagenet_files("test", root=fake_imagenet)
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA"):
        R.imagenet_files("train", root=fake_imagenet.parent / "nowhere")


def test_missing_env_names_the_variable(monkeypatch):
    monkeypatch.delenv("REPLIBOOK_DATA", raising=False)
    with pytest.raises(DatasetMissing, match="REPLIBOOK_DATA is not set"):
        R.imagenet_files("train")


def test_env_root_and_max_per_class(fake_imagenet, monkeypatch):
    monkeypatch.setenv("REPLIBOOK_DATA", str(fake_imagenet.parent))
    p1, y1, _ = R.imagenet_files("train", max_per_class=2, seed=3)
    p2, _, _ = R.imagenet_files("train", max_per_class=2, seed=3)
    assert p1 == p2 and len(p1) == 8 and torch.bincount(y1).tolist() == [2, 2, 2, 2]


def test_eval_loader_batches_are_deterministic_centre_crops(fake_imagenet):
    dl = R.imagenet_loader("val", classes=WNIDS, size=16, batch_size=4, root=fake_imagenet, workers=0)
    batches = list(dl)
    assert [len(b[1]) for b in batches] == [4, 2]                 # no shuffle, no drop_last for val
    x, y = batches[0]
    assert x.dtype == torch.uint8 and x.shape == (4, 3, 16, 16)
    again = next(iter(R.imagenet_loader("val", classes=WNIDS, size=16, batch_size=4, root=fake_imagenet,
                                        workers=0)))[0]
    assert torch.equal(x, again)
    first = R.imagenet_files("val", classes=WNIDS, root=fake_imagenet)[0][0]
    assert torch.equal(x[0], torch.from_numpy(images.center_crop(first, 16, round(16 * 256 / 224))))


def test_train_loader_views_seeded_by_epoch(fake_imagenet):
    kw = dict(classes=WNIDS, size=12, batch_size=4, views=2, crop_scale=(0.2, 1.0), root=fake_imagenet,
              workers=0, seed=1)
    a = list(R.imagenet_loader("train", epoch=0, **kw))
    b = list(R.imagenet_loader("train", epoch=0, **kw))
    c = list(R.imagenet_loader("train", epoch=1, **kw))
    assert [len(t[1]) for t in a] == [4, 4, 4]                     # 12 images, drop_last for train
    assert a[0][0].shape == (4, 2, 3, 12, 12)
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(a, b))
    assert not all(torch.equal(u[0], v[0]) for u, v in zip(a, c))   # new order and crops per epoch
    assert not torch.equal(a[0][0][:, 0], a[0][0][:, 1])           # the two views differ


def test_workers_give_the_same_batches(fake_imagenet):
    kw = dict(classes=WNIDS, size=12, batch_size=4, crop_scale=(0.3, 1.0), root=fake_imagenet, seed=2)
    serial = list(R.imagenet_loader("train", workers=0, **kw))
    parallel = list(R.imagenet_loader("train", workers=2, **kw))
    assert all(torch.equal(u[0], v[0]) and torch.equal(u[1], v[1]) for u, v in zip(serial, parallel))


def test_random_resized_box_respects_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        left, top, w, h = images.random_resized_box(200, 100, (0.2, 0.6), (3 / 4, 4 / 3), rng)
        assert 0 <= left and left + w <= 200 and 0 <= top and top + h <= 100
        assert 0.18 <= w * h / 20000 <= 0.62 and 0.7 <= w / h <= 1.4
    # impossible draws fall back to the central box with the nearest allowed aspect ratio
    assert images.random_resized_box(400, 10, (0.99, 1.0), (1.0, 1.0), rng) == (195, 0, 10, 10)


def test_float_conversion_and_normalisation():
    x = torch.full((2, 3, 4, 4), 255, dtype=torch.uint8)
    f = R.to_float(x)
    assert f.dtype == torch.float32 and float(f.max()) == 1.0
    z = R.normalize(f)
    assert torch.allclose(z[0, :, 0, 0], (1 - torch.tensor(R.IMAGENET_MEAN)) / torch.tensor(R.IMAGENET_STD))


def test_image_files_validates_arguments(tmp_path):
    with pytest.raises(ValueError, match="views"):
        R.ImageFiles([tmp_path / "a.jpg"], torch.zeros(1), views=2)
    with pytest.raises(ValueError, match="labels"):
        R.ImageFiles([tmp_path / "a.jpg"], torch.zeros(2))


def test_views_equal_single_crops_with_the_same_generators(fake_imagenet):
    path = R.imagenet_files("train", classes=WNIDS, root=fake_imagenet)[0][0]
    rngs = [np.random.default_rng([0, 0, 5, v]) for v in range(2)]
    both = images.random_resized_crops(path, 10, (0.2, 1.0), rngs)
    singles = [images.random_resized_crop(path, 10, (0.2, 1.0), np.random.default_rng([0, 0, 5, v]))
               for v in range(2)]
    assert all(np.array_equal(a, b) for a, b in zip(both, singles))

"""Tests of replibook.data.procedural.defect_textures (MVTec-like crops with painted defects)."""
import pytest
import torch

from replibook.data.procedural import defect_textures as dt
from replibook.errors import UnknownName


def _make(**kw):
    args = dict(n=24, seed=0, size=32, category="brick", defective_fraction=0.5, contrast=1.0, device="cpu")
    args.update(kw)
    return dt.make(**args)


def test_shapes_ranges_labels_and_factors():
    b = _make()
    assert b.x.shape == (24, 3, 32, 32) and b.masks.shape == (24, 1, 32, 32)
    assert b.x.dtype == torch.float32 and 0.0 <= float(b.x.min()) and float(b.x.max()) <= 1.0
    assert int(b.y.sum()) == 12
    assert b.factor_names == ["category", "defect"] and b.levels == [5, 5]
    assert torch.all(b.factors[:, 0] == dt.CATEGORIES.index("brick"))
    assert torch.equal(b.factors[:, 1] > 0, b.y.bool())
    assert set(torch.unique(b.masks).tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("size", [16, 32, 64])
def test_masks_nonempty_exactly_for_defective(size):
    b = _make(n=40, size=size, category=list(dt.CATEGORIES), seed=3)
    area = b.masks.flatten(1).sum(1)
    assert torch.equal(area > 0, b.y.bool())
    assert float(area[b.y.bool()].max()) < 0.5 * size * size      # defects are local


def test_pixels_outside_masks_untouched_and_inside_changed():
    clean = _make(contrast=0.0, category="coffee")
    dirty = _make(contrast=1.0, category="coffee")
    assert torch.equal(clean.masks, dirty.masks) and torch.equal(clean.y, dirty.y)
    outside = (dirty.masks == 0).expand_as(dirty.x)
    assert torch.equal(dirty.x[outside], clean.x[outside])
    inside_change = ((dirty.x - clean.x).abs().sum(1, keepdim=True) * dirty.masks).flatten(1).sum(1)
    assert torch.all(inside_change[dirty.y.bool()] > 0)
    assert torch.all(inside_change[~dirty.y.bool()] == 0)


def test_contrast_scales_defect_strength():
    clean = _make(contrast=0.0, category="gravel", n=40)
    strengths = []
    for c in (0.1, 0.3, 0.6, 1.0):
        b = _make(contrast=c, category="gravel", n=40)
        diff = (b.x - clean.x).abs().sum(1, keepdim=True) * b.masks
        strengths.append(float(diff.sum() / b.masks.sum()))
    assert all(a < b for a, b in zip(strengths, strengths[1:]))
    # alpha is linear in contrast below saturation: 0.3 is three times 0.1
    assert strengths[1] / strengths[0] == pytest.approx(3.0, rel=1e-4)


def test_deterministic_and_seed_dependent():
    a, b, c = _make(seed=5), _make(seed=5), _make(seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.masks, b.masks) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.x, c.x)
    # two categories drawn with one seed do not share defect positions
    g, k = _make(seed=5, category="grass"), _make(seed=5, category="camera")
    assert not torch.equal(g.masks, k.masks)


def test_train_and_test_crops_come_from_disjoint_tiles():
    # crop == tile: every crop is exactly one tile, so splits can be compared pixel for pixel
    kw = dict(n=30, size=32, category="grass", defective_fraction=0.0, crop=128, tiles=4, device="cpu")
    train = dt.make(seed=0, split="train", **kw).x.flatten(1)
    test = dt.make(seed=0, split="test", **kw).x.flatten(1)
    assert len(torch.unique(train, dim=0)) <= 8 and len(torch.unique(test, dim=0)) <= 8   # 8 tiles each
    assert torch.cdist(train, test).min() > 0
    assert dt.tile_is_train(0, 0) and not dt.tile_is_train(0, 1)


def test_kinds_and_no_defects():
    b = _make(n=30, kinds=("hole",), defective_fraction=1.0)
    assert b.levels == [5, 2] and torch.all(b.factors[:, 1] == 1) and b.info["kinds"] == ["none", "hole"]
    normal = _make(defective_fraction=0.0, split="train")
    assert int(normal.y.sum()) == 0 and float(normal.masks.sum()) == 0.0
    with pytest.raises(UnknownName):
        _make(kinds=("crack",))
    with pytest.raises(UnknownName):
        _make(category="carpet")
    with pytest.raises(ValueError):
        _make(contrast=-1.0)
    with pytest.raises(ValueError):
        _make(crop=200)

"""The procedural dSprites and Shapes3D generators: every factor renders, round-trips and matters."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.data.procedural import Bundle, all_factor_combinations, dsprites, shapes3d

SMALL_DS = (3, 3, 4, 3, 3)
SMALL_DS4 = (4, 2, 8, 3, 3)
SHAPES4 = ("square", "ellipse", "heart", "arrow")
SMALL_S3 = (3, 3, 3, 3, 4, 3)


# ---------------------------------------------------------------- dsprites
@pytest.mark.parametrize("size", [16, 32, 64])
def test_dsprites_every_combination_renders_inside_canvas(size):
    combos = all_factor_combinations(SMALL_DS4)
    x = dsprites.render(combos, size, SMALL_DS4, SHAPES4)
    assert x.shape == (len(combos), 1, size, size)
    assert x.min() >= 0 and x.max() <= 1
    area = x.flatten(1).sum(1)
    assert (area > 0.5).all(), "every sprite covers some pixels"
    # fully inside: the border pixels stay black at every position, scale and angle
    border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., :, 0], x[..., :, -1]], -1)
    assert border.abs().max() == 0


def test_dsprites_round_trip_and_bundle():
    b = dsprites.make(300, seed=4, size=32)
    assert isinstance(b, Bundle) and len(b) == 300
    assert b.factor_names == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert b.levels == [3, 6, 10, 8, 8] and b.x.shape == (300, 1, 32, 32)
    assert torch.equal(dsprites.render(b.factors, 32, b.levels), b.x)
    assert ((b.factors >= 0) & (b.factors < torch.tensor(b.levels))).all()
    assert len({tuple(r) for r in b.factors.tolist()}) == 300          # no duplicates
    assert b.extra["values"].shape == (300, 5)
    assert b.card()["n"] == 300


def test_dsprites_seeds():
    a, b, c = (dsprites.make(64, seed=s, size=16) for s in (1, 1, 2))
    assert torch.equal(a.x, b.x) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors)


def _vary(base, k, levels):
    rows = np.repeat(np.asarray(base)[None], levels[k], 0)
    rows[:, k] = np.arange(levels[k])
    return rows


def test_dsprites_each_factor_changes_the_image():
    levels = (4, 6, 10, 8, 8)
    base = [2, 3, 1, 4, 4]                                 # a heart: no rotational symmetry
    for k in range(5):
        x = dsprites.render(_vary(base, k, levels), 32, levels, SHAPES4)
        flat = x.flatten(1)
        dist = torch.cdist(flat, flat)
        off = dist[~torch.eye(len(flat), dtype=torch.bool)]
        assert off.min() > 0.5, f"factor {dsprites.FACTOR_NAMES[k]}: two levels give the same image"


def test_dsprites_shapes_differ_and_symmetries():
    levels = (4, 1, 4, 1, 1)                               # orientation levels 0, 90, 180, 270 deg
    fac = all_factor_combinations(levels)
    x = dsprites.render(fac, 64, levels, SHAPES4).view(4, 4, -1)
    same_orient = x[:, 0]
    for i in range(4):
        for j in range(i + 1, 4):
            assert (same_orient[i] - same_orient[j]).abs().sum() > 20, (SHAPES4[i], SHAPES4[j])
    # a square is invariant to a quarter turn; the arrow and the heart are not
    assert (x[0, 0] - x[0, 1]).abs().max() < 0.05
    assert (x[3, 0] - x[3, 1]).abs().sum() > 20 and (x[2, 0] - x[2, 2]).abs().sum() > 20
    # an ellipse is invariant to a half turn but not to a quarter turn
    assert (x[1, 0] - x[1, 2]).abs().max() < 0.05 and (x[1, 0] - x[1, 1]).abs().sum() > 20


def test_dsprites_scale_and_position_are_monotone():
    levels = (3, 6, 1, 8, 8)
    scale = dsprites.render(_vary([0, 0, 0, 4, 4], 1, levels), 32, levels).flatten(1).sum(1)
    assert (scale.diff() > 0).all()
    xs = dsprites.render(_vary([1, 5, 0, 0, 4], 3, levels), 32, levels)
    ys = dsprites.render(_vary([1, 5, 0, 4, 0], 4, levels), 32, levels)
    grid = torch.arange(32.0)
    cx = (xs[:, 0].sum(1) * grid).sum(1) / xs[:, 0].sum((1, 2))
    cy = (ys[:, 0].sum(2) * grid).sum(1) / ys[:, 0].sum((1, 2))
    assert (cx.diff() > 0).all() and (cy.diff() < 0).all()   # y points up: higher level, higher up


def test_dsprites_antialiasing_gives_partial_pixels():
    x = dsprites.make(20, seed=0, size=32).x
    partial = ((x > 0) & (x < 1)).float().mean()
    assert partial > 0 and set(torch.unique(x * 4).tolist()) <= set(range(5))   # 2x2 supersampling


def test_dsprites_validation():
    with pytest.raises(ValueError):
        dsprites.make(10, size=24)
    with pytest.raises(ValueError):
        dsprites.make(10, levels=(4, 6, 10, 8, 8))          # 4 levels but 3 shapes
    with pytest.raises(ValueError):
        dsprites.render(np.array([[0, 0, 0, 0, 9]]), 32, (3, 6, 10, 8, 8))


def test_dsprites_speed():
    t = time.perf_counter()
    dsprites.make(20000, seed=0, size=32)
    assert time.perf_counter() - t < 20                     # a few seconds on a quiet CPU


# ---------------------------------------------------------------- shapes3d
@pytest.mark.parametrize("size", [16, 32])
def test_shapes3d_every_combination_renders(size):
    combos = all_factor_combinations(SMALL_S3)
    x = shapes3d.render(combos, size, SMALL_S3)
    m = shapes3d.render_masks(combos, size, SMALL_S3)
    assert x.shape == (len(combos), 3, size, size) and m.shape == (len(combos), 1, size, size)
    assert x.min() >= 0 and x.max() <= 1
    frac = m.flatten(1).mean(1)
    assert (frac > 0.01).all() and (frac < 0.5).all()      # an object, not the whole image
    # the object never touches the canvas border (always fully visible)
    border = torch.cat([m[..., 0, :], m[..., -1, :], m[..., :, 0], m[..., :, -1]], -1)
    assert border.max() == 0


def test_shapes3d_round_trip_and_bundle():
    b = shapes3d.make(256, seed=7, size=32)
    assert b.factor_names == ["floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation"]
    assert b.levels == [10, 10, 10, 8, 4, 15] and b.x.shape == (256, 3, 32, 32)
    assert b.masks.shape == (256, 1, 32, 32) and set(torch.unique(b.masks).tolist()) <= {0.0, 1.0}
    assert torch.equal(shapes3d.render(b.factors, 32, b.levels), b.x)
    assert torch.equal(shapes3d.render_masks(b.factors, 32, b.levels), b.masks)
    b2 = shapes3d.make(50, seed=7, size=16, levels=(6, 6, 6, 4, 4, 5))
    assert b2.levels == [6, 6, 6, 4, 4, 5] and b2.x.shape == (50, 3, 16, 16)


def test_shapes3d_seeds():
    a, b, c = (shapes3d.make(64, seed=s, size=16) for s in (1, 1, 2))
    assert torch.equal(a.x, b.x) and torch.equal(a.masks, b.masks)
    assert not torch.equal(a.factors, c.factors)


def test_shapes3d_each_factor_changes_the_image():
    levels = (10, 10, 10, 8, 4, 15)
    for shape in range(4):
        base = [1, 4, 7, 3, shape, 7]
        for k in range(6):
            x = shapes3d.render(_vary(base, k, levels), 32, levels).flatten(1)
            dist = torch.cdist(x, x)
            off = dist[~torch.eye(len(x), dtype=torch.bool)]
            assert off.min() > 0.05, f"shape {shape}, factor {shapes3d.FACTOR_NAMES[k]}"


def test_shapes3d_masks_match_the_object():
    levels = (10, 10, 10, 8, 4, 15)
    fac = shapes3d.make(200, seed=3, size=32).factors
    other = fac.clone()
    other[:, 2] = (other[:, 2] + 5) % 10                    # only the object's hue changes
    x, y = shapes3d.render(fac, 32, levels), shapes3d.render(other, 32, levels)
    m = shapes3d.render_masks(fac, 32, levels)
    changed = (x - y).abs().sum(1, keepdim=True) > 1e-6
    near = F.max_pool2d(m, 3, 1, 1) > 0                     # the mask, dilated by one pixel
    assert not (changed & ~near).any(), "an object-hue change leaked outside the object"
    assert changed[m > 0].float().mean() > 0.99
    # the floor hue changes only pixels off the object
    other = fac.clone()
    other[:, 0] = (other[:, 0] + 5) % 10
    z = shapes3d.render(other, 32, levels)
    changed = (x - z).abs().sum(1, keepdim=True) > 1e-6
    core = -F.max_pool2d(-m, 3, 1, 1) > 0                   # the mask, eroded by one pixel
    assert not (changed & core).any()


def test_shapes3d_shapes_differ():
    levels = (10, 10, 10, 8, 4, 15)
    m = shapes3d.render_masks(_vary([0, 3, 6, 7, 0, 7], 4, levels), 64, levels).flatten(1)
    for i in range(4):
        for j in range(i + 1, 4):
            assert (m[i] - m[j]).abs().sum() > 30, (shapes3d.SHAPES[i], shapes3d.SHAPES[j])


def test_shapes3d_hues_evenly_spaced():
    rgb = shapes3d.hsv_to_rgb(torch.arange(6) / 6.0, s=1.0, v=1.0)
    expected = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1.0]])
    assert torch.allclose(rgb, expected, atol=1e-6)
    vals = shapes3d.factor_values(np.array([[0, 5, 9, 0, 0, 14]]))
    assert np.allclose(vals[0], [0.0, 0.5, 0.9, 0.75, 0.0, 30.0])


def test_shapes3d_speed():
    shapes3d.make(10, seed=0, size=32)                       # build the geometry cache
    t = time.perf_counter()
    shapes3d.make(20000, seed=0, size=32)
    assert time.perf_counter() - t < 20

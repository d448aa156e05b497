"""data.augment: SimCLR pipeline pieces and the RotNet rotation batch."""
import math

import pytest
import torch

from replibook.data import augment as A


def _img(b=4, c=3, s=16, seed=0):
    return torch.rand(b, c, s, s, generator=torch.Generator().manual_seed(seed))


def test_full_area_crop_without_flip_is_the_identity():
    x = _img()
    out = A.random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(out, x, atol=1e-5)


def test_flip_only_mirrors_some_images():
    x = _img(b=64)
    out = A.random_resized_crop(x, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True,
                                generator=torch.Generator().manual_seed(1))
    same = [(torch.allclose(out[i], x[i], atol=1e-5)) for i in range(64)]
    mirrored = [(torch.allclose(out[i], x[i].flip(-1), atol=1e-5)) for i in range(64)]
    assert all(a or b for a, b in zip(same, mirrored))
    assert 15 < sum(mirrored) < 49


def test_small_crops_zoom_in():
    # left half bright: a crop of 10% of the area usually lies inside one half, so it is all 0 or all 1
    x = torch.zeros(200, 1, 32, 32)
    x[:, :, :, :16] = 1.0                        # left half bright
    out = A.random_resized_crop(x, scale=(0.1, 0.1), ratio=(1.0, 1.0), flip=False,
                                generator=torch.Generator().manual_seed(0))
    frac = out.mean(dim=(1, 2, 3))
    # a small crop is usually entirely inside one half -> mostly 0 or 1, unlike the 0.5 of the full image
    assert ((frac < 0.1) | (frac > 0.9)).float().mean() > 0.5


def test_color_jitter_and_grayscale_effects():
    x = _img(b=32)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(A.color_jitter(x, p=0.0, generator=gen), x)
    out = A.color_jitter(x, p=1.0, generator=gen)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1 and not torch.allclose(out, x)
    g = A.random_grayscale(x, p=1.0)
    assert torch.allclose(g[:, 0], g[:, 1]) and torch.allclose(g[:, 1], g[:, 2])
    assert torch.equal(A.random_grayscale(x[:, :1], p=1.0), x[:, :1])
    # hue rotation by a full turn is the identity and keeps luma
    full = A._rotate_hue(x, torch.ones(32))
    assert torch.allclose(full, x, atol=1e-4)
    half = A._rotate_hue(x, torch.full((32,), 0.5))
    assert torch.allclose(A._gray(half), A._gray(x), atol=1e-4)


def test_simclr_augment_shapes_range_determinism_and_channels():
    x = _img(b=8)
    a = A.simclr_augment(x, generator=torch.Generator().manual_seed(3))
    b = A.simclr_augment(x, generator=torch.Generator().manual_seed(3))
    c = A.simclr_augment(x, generator=torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1
    gray = A.simclr_augment(x[:, :1], generator=torch.Generator().manual_seed(3))
    assert gray.shape == (8, 1, 16, 16)
    with pytest.raises(ValueError):
        A.simclr_augment(x[0])


def test_rotate_batch_labels_and_exact_quarter_turns():
    x = _img(b=3, c=1, s=8)
    xr, y = A.rotate_batch(x, 4)
    assert xr.shape == (12, 1, 8, 8) and y.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    assert torch.equal(xr[:3], x) and torch.equal(xr[3:6], torch.rot90(x, 1, dims=(2, 3)))
    assert torch.equal(xr[6:9], x.flip(-1).flip(-2))
    x2, y2 = A.rotate_batch(x, 2)
    assert torch.equal(x2[3:], x.flip(-1).flip(-2)) and y2.tolist() == [0] * 3 + [1] * 3
    with pytest.raises(ValueError):
        A.rotate_batch(x, 3)


def test_eight_rotations_turn_the_same_way_as_rot90():
    x = torch.zeros(1, 1, 33, 33)
    x[0, 0, 4:8, 15:18] = 1.0                      # a blob above the centre
    xr, _ = A.rotate_batch(x, 8)
    def angle(img):                                 # blob direction, counter-clockwise from "up"
        ys, xs = torch.meshgrid(torch.arange(33.), torch.arange(33.), indexing="ij")
        m = img[0]
        cy, cx = (m * ys).sum() / m.sum() - 16, (m * xs).sum() / m.sum() - 16
        return math.degrees(math.atan2(-cx, -cy)) % 360
    got = [angle(xr[r]) for r in range(8)]
    for r, a in enumerate(got):
        assert min(abs(a - 45 * r), 360 - abs(a - 45 * r)) < 6, got

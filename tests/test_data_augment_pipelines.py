"""data.augment: SimCLR pipeline pieces, the RotNet rotation batch and the CIFAR crop-flip."""
import math

import pytest
import torch

from replibook.data import augment as A
from replibook.data.augment import random_crop_flip


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


def test_zero_padded_crop_flip_is_a_crop_of_the_zero_padded_image_or_its_mirror():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6) + 1
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    seen = set()
    for trial in range(40):
        out = random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(trial), mode="constant")
        assert out.shape == x.shape
        for b in range(2):
            hits = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                    if torch.equal(out[b], padded[b, :, dy:dy + 6, dx:dx + 6].flip(-1) if f
                                   else padded[b, :, dy:dy + 6, dx:dx + 6])]
            assert hits, "output is not a crop of the zero-padded image"
            seen.update(hits)
    assert {f for _, _, f in seen} == {0, 1} and len({(dy, dx) for dy, dx, _ in seen}) > 10
    assert float(random_crop_flip(x, 2, torch.Generator().manual_seed(1), mode="constant").min()) == 0.0   # zeros, not reflection


def test_random_crop_flip_reflects_by_default_and_rejects_unknown_modes():
    x = torch.arange(1 * 1 * 6 * 6, dtype=torch.float32).view(1, 1, 6, 6) + 1
    assert all(float(random_crop_flip(x, 2, torch.Generator().manual_seed(s)).min()) > 0 for s in range(10))
    with pytest.raises(ValueError, match="mode"):
        random_crop_flip(x, 2, mode="wrap")


def test_gaussian_blur_smooths_keeps_constants_and_respects_p():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=g)
    assert torch.equal(A.gaussian_blur(x, p=0.0, generator=g), x)
    y = A.gaussian_blur(x, p=1.0, sigma=(1.5, 2.0), generator=g)
    assert y.shape == x.shape and y.var() < 0.5 * x.var()              # smooths noise
    const = torch.full((2, 3, 8, 8), 0.3)
    assert torch.allclose(A.gaussian_blur(const, p=1.0, generator=g), const, atol=1e-6)


def test_random_flip_mirrors_about_half_of_the_images():
    x = torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    flipped = A.random_flip(x, torch.Generator().manual_seed(1))
    same = [torch.equal(f, a) for f, a in zip(flipped, x)]
    assert all(s or torch.equal(f, a.flip(-1)) for s, f, a in zip(same, flipped, x))
    assert 16 < sum(same) < 48

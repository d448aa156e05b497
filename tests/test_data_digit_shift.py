"""digit_shift kinds (intended effect, identity at level 0, determinism, shapes/range) and the
shifted_digits presets (disjoint stratified splits, clean source, shifted target)."""

import pytest
import torch

from replibook.data.shifts import (SHIFT_KINDS, SHIFT_PRESETS, apply_shifts, digit_shift, scale_steps,
                                   shifted_digits)


def bar_image(n=4, size=16):
    """A vertical white bar in the middle of black images (N, 1, size, size)."""
    x = torch.zeros(n, 1, size, size)
    x[:, :, 3:13, 7:9] = 1.0
    return x


def random_images(n=6, size=12, seed=0):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(seed))


IDENTITY = {"rotate": 0.0, "invert": 0.0, "noise": 0.0, "blur": 0.0, "resolution": 1.0, "shear": 0.0,
            "elastic": 0.0}
STRONG = {"rotate": 30.0, "invert": 1.0, "colourise": 1.0, "noise": 0.2, "blur": 1.0, "resolution": 2.0,
          "shear": 0.5, "elastic": 2.0}


@pytest.mark.parametrize("kind", sorted(IDENTITY))
def test_identity_level_returns_input(kind):
    x = random_images()
    torch.testing.assert_close(digit_shift(x, kind, IDENTITY[kind]), x)


def test_colourise_level_zero_is_grey_copy():
    x = random_images()
    out = digit_shift(x, "colourise", 0.0)
    assert out.shape == (6, 3, 12, 12)
    torch.testing.assert_close(out, x.expand(6, 3, 12, 12))


@pytest.mark.parametrize("kind", SHIFT_KINDS)
def test_shapes_range_determinism_and_change(kind):
    x = random_images()
    a = digit_shift(x, kind, STRONG[kind], generator=torch.Generator().manual_seed(5))
    b = digit_shift(x, kind, STRONG[kind], generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == ((6, 3, 12, 12) if kind == "colourise" else x.shape)
    assert a.min() >= 0 and a.max() <= 1
    assert (a - (x if kind != "colourise" else x.expand_as(a))).abs().mean() > 1e-3


@pytest.mark.parametrize("kind", ["noise", "elastic", "colourise"])
def test_random_kinds_depend_on_generator(kind):
    x = random_images()
    a = digit_shift(x, kind, STRONG[kind], generator=torch.Generator().manual_seed(1))
    b = digit_shift(x, kind, STRONG[kind], generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, b)


def test_invert_swaps_ink_and_paper():
    x = bar_image()
    torch.testing.assert_close(digit_shift(x, "invert", 1.0), 1.0 - x)
    torch.testing.assert_close(digit_shift(x, "invert", 0.5), torch.full_like(x, 0.5))


def test_rotate_90_turns_vertical_bar_horizontal():
    x = bar_image()
    out = digit_shift(x, "rotate", 90.0)
    rows, cols = out[0, 0].sum(1), out[0, 0].sum(0)
    # vertical bar: ink spread over rows; rotated: ink spread over columns, concentrated in rows 7-8
    assert rows[7:9].sum() > 0.8 * out.sum() / 4
    assert (cols > 0.5).sum() >= 8
    torch.testing.assert_close(out.sum(), x.sum(), rtol=0.05, atol=0.5)   # mass (nearly) preserved


def test_rotation_is_counter_clockwise_and_360_is_identity():
    x = torch.zeros(1, 1, 16, 16)
    x[0, 0, 1:3, 7:9] = 1.0                          # a dot at the top
    out = digit_shift(x, "rotate", 90.0)[0, 0]
    row, col = (out > 0.3).nonzero().float().mean(0).tolist()
    assert abs(row - 7.5) < 1.5 and col < 4          # top -> left: counter-clockwise as displayed
    x = random_images(size=16)
    torch.testing.assert_close(digit_shift(x, "rotate", 360.0), x, atol=1e-4, rtol=0)


def test_noise_has_requested_std():
    x = torch.full((200, 1, 16, 16), 0.5)
    out = digit_shift(x, "noise", 0.1, generator=torch.Generator().manual_seed(0))
    assert abs(float((out - x).std()) - 0.1) < 0.005
    assert abs(float((out - x).mean())) < 0.005


def test_blur_spreads_ink_keeps_constants_and_mass():
    x = bar_image()
    out = digit_shift(x, "blur", 1.0)
    assert out.max() < 1.0 and (out > 0.05).sum() > (x > 0.05).sum()
    torch.testing.assert_close(out.sum(), x.sum(), rtol=0.02, atol=0.0)
    const = torch.full((2, 1, 10, 10), 0.3)
    torch.testing.assert_close(digit_shift(const, "blur", 2.0), const)


def test_resolution_makes_blocks():
    x = random_images(size=16)
    out = digit_shift(x, "resolution", 4.0)
    # a 4x4 image upsampled bilinearly is smooth: far lower total variation than the input
    tv = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean() + (t[..., 1:] - t[..., :-1]).abs().mean()
    assert tv(out) < 0.5 * tv(x)


def test_shear_moves_top_and_bottom_in_opposite_directions():
    x = bar_image()
    out = digit_shift(x, "shear", 0.5)
    col = torch.arange(16.0)
    centre = lambda row: float((out[0, 0, row] * col).sum() / out[0, 0, row].sum())
    assert centre(4) < 7.5 - 1 and centre(11) > 7.5 + 1 or centre(4) > 7.5 + 1 and centre(11) < 7.5 - 1


def test_elastic_peak_displacement_is_about_level():
    x = random_images(size=16)
    small = digit_shift(x, "elastic", 0.3, generator=torch.Generator().manual_seed(0))
    large = digit_shift(x, "elastic", 3.0, generator=torch.Generator().manual_seed(0))
    assert (small - x).abs().mean() < (large - x).abs().mean()


def test_colourise_separates_ink_from_paper_in_every_channel_mean():
    x = bar_image(n=20)
    out = digit_shift(x, "colourise", 1.0, generator=torch.Generator().manual_seed(0))
    ink = out[:, :, 3:13, 7:9].mean((1, 2, 3))
    paper = out[:, :, :, :3].mean((1, 2, 3))
    assert ((ink - paper).abs() >= 0.5 - 1e-6).all()
    assert out.flatten(2).std(1).mean() > 0  # colour differs across channels


def test_bad_arguments_raise():
    x = random_images()
    with pytest.raises(ValueError):
        digit_shift(x, "sharpen", 1.0)
    with pytest.raises(ValueError):
        digit_shift(x, "invert", 1.5)
    with pytest.raises(ValueError):
        digit_shift(x, "resolution", 0.5)
    with pytest.raises(ValueError):
        digit_shift(x[0], "noise", 0.1)


def test_scale_steps():
    assert scale_steps("10", 0.5) == [("rotate", 15.0), ("invert", 0.5), ("noise", 0.1), ("blur", 0.5)]
    assert scale_steps([("resolution", 3.0)], 0.5) == [("resolution", 2.0)]
    x = random_images()
    torch.testing.assert_close(apply_shifts(x, scale_steps("10-noinv", 0.0)), x)


def test_preset_10_is_rot30_invert_noise_blur():
    assert [k for k, _ in SHIFT_PRESETS["10"]] == ["rotate", "invert", "noise", "blur"]
    assert dict(SHIFT_PRESETS["10"])["rotate"] == 30.0 and dict(SHIFT_PRESETS["10"])["noise"] == 0.2


def test_shifted_digits_splits_are_disjoint_stratified_and_shifted():
    d = shifted_digits("10", base="digits", split=(300, 200, 100), size=16, seed=3, device="cpu")
    assert (len(d.source), len(d.target), len(d.test)) == (300, 200, 100)
    for s in (d.source, d.target, d.test):
        counts = torch.bincount(s.y, minlength=10)
        assert counts.min() >= len(s) // 10 - 2 and counts.max() <= len(s) // 10 + 2
        assert s.x.min() >= 0 and s.x.max() <= 1
    # source is clean (black paper); target inverted (white paper)
    assert d.source.x[:, :, 0, 0].mean() < 0.1 and d.target.x[:, :, 0, 0].mean() > 0.7
    # the clean versions of source/target/test are disjoint images of the base set
    clean = shifted_digits("10", base="digits", split=(300, 200, 100), size=16, seed=3, strength=0.0,
                           device="cpu")
    torch.testing.assert_close(clean.source.x, d.source.x)
    flat = lambda t: {tuple(r.round(decimals=4).tolist()) for r in t.flatten(1)}
    a, b, c = flat(clean.source.x), flat(clean.target.x), flat(clean.test.x)
    assert not (a & b) and not (a & c) and not (b & c)
    card = d.card()
    assert card["info"]["preset"] == "10" and card["n_target"] == 200


def test_shifted_digits_deterministic_and_seed_dependent():
    a = shifted_digits("10-noinv", base="digits", split=(100, 100, 50), seed=0, device="cpu")
    b = shifted_digits("10-noinv", base="digits", split=(100, 100, 50), seed=0, device="cpu")
    c = shifted_digits("10-noinv", base="digits", split=(100, 100, 50), seed=1, device="cpu")
    torch.testing.assert_close(a.target.x, b.target.x)
    assert not torch.equal(a.target.x, c.target.x)
    with pytest.raises(ValueError):
        shifted_digits("nope", base="digits", split=(10, 10, 10), device="cpu")

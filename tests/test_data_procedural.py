"""Procedural generators: free-form inpainting masks and cluttered digits."""
import numpy as np
import pytest
import torch

from replibook.data import Dataset, shifts
from replibook.data.procedural import masks


# ----------------------------------------------------------------------------- masks

@pytest.mark.parametrize("ratio_bin", masks.RATIO_BINS)
def test_hole_ratio_lands_in_the_requested_bin(ratio_bin):
    m = masks.free_form(60, ratio_bin, size=32, seed=3)
    assert m.shape == (60, 1, 32, 32) and m.dtype == torch.float32
    assert set(torch.unique(m).tolist()) <= {0.0, 1.0}
    r = masks.hole_ratio(m)
    lo, hi = ratio_bin
    assert bool((r >= lo).all()) and bool((r < hi).all()), (float(r.min()), float(r.max()))
    # the targets spread over the bin rather than piling up at one edge
    assert float(r.max() - r.min()) > 0.3 * (hi - lo)


def test_masks_bins_hold_at_other_sizes():
    for size in (16, 64):
        r = masks.hole_ratio(masks.free_form(10, (0.4, 0.5), size=size, seed=0))
        assert bool((r >= 0.4).all() and (r < 0.5).all())


def test_masks_same_seed_same_masks_different_seed_different():
    a = masks.free_form(8, (0.2, 0.3), seed=1)
    b = masks.free_form(8, (0.2, 0.3), seed=1)
    c = masks.free_form(8, (0.2, 0.3), seed=2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # masks within one call differ from each other
    assert not torch.equal(a[0], a[1])
    # global random state untouched
    torch.manual_seed(0)
    np.random.seed(0)
    before = (torch.rand(1).item(), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    masks.free_form(2, (0.1, 0.2), seed=5)
    assert (torch.rand(1).item(), np.random.rand()) == before


def test_masks_contain_strokes_and_rectangles():
    only_rects = masks.free_form(5, (0.3, 0.4), seed=0, rect_prob=1.0)
    only_strokes = masks.free_form(5, (0.3, 0.4), seed=0, rect_prob=0.0)
    # a union of axis-aligned boxes: every 2x2 window has 0, 1, 2 or 4 holes in an
    # arrangement a box union allows; strokes produce diagonal steps (3 of 4 holes)
    def has_diagonal_steps(m):
        win = m[:, 0, :-1, :-1] + m[:, 0, 1:, :-1] + m[:, 0, :-1, 1:] + m[:, 0, 1:, 1:]
        return bool((win == 3).any())
    assert has_diagonal_steps(only_strokes)
    r = masks.hole_ratio(only_rects)
    assert bool((r >= 0.3).all() and (r < 0.4).all())


def test_free_form_bins_and_labels_and_bad_input():
    sets = masks.free_form_bins(4, size=32, seed=0)
    assert list(sets) == ["10-20%", "20-30%", "30-40%", "40-50%"]
    assert all(v.shape == (4, 1, 32, 32) for v in sets.values())
    assert masks.bin_label((0.5, 0.6)) == "50-60%"
    with pytest.raises(ValueError):
        masks.free_form(2, (0.3, 0.2))
    with pytest.raises(ValueError):
        masks.free_form(2, (0.1, 0.2), size=4)
    assert masks.free_form(0, (0.1, 0.2)).shape == (0, 1, 32, 32)


# ------------------------------------------------------------------------ cluttered

def _digits(n=6, s=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, s, s, generator=g)


def test_clutter_canvases_place_digit_exactly_without_noise_or_clutter():
    d = _digits()
    x, pos = shifts.clutter_canvases(d, d, canvas=24, n_clutter=0, noise=0.0, seed=1)
    assert x.shape == (6, 1, 24, 24) and pos.shape == (6, 2)
    assert bool((pos >= 0).all() and (pos <= 24 - 12).all())
    for i in range(6):
        r, c = pos[i].tolist()
        assert torch.equal(x[i, :, r:r + 12, c:c + 12], d[i])
        outside = x[i].clone()
        outside[:, r:r + 12, c:c + 12] = 0
        assert float(outside.abs().sum()) == 0.0


def test_clutter_is_pasted_by_maximum_and_noise_clipped():
    d = _digits()
    x, pos = shifts.clutter_canvases(d, d, canvas=24, n_clutter=3, noise=0.0, seed=1)
    for i in range(6):
        r, c = pos[i].tolist()
        # the digit's ink survives (max-paste), clutter adds ink elsewhere
        assert bool((x[i, :, r:r + 12, c:c + 12] >= d[i] - 1e-7).all())
    assert float(x.sum()) > float(d.sum())
    xn, _ = shifts.clutter_canvases(d, d, canvas=24, n_clutter=3, noise=0.5, seed=1)
    assert float(xn.min()) >= 0.0 and float(xn.max()) <= 1.0


def test_clutter_never_cut_from_the_digit_itself():
    # digit i is a constant image of value (i + 1) / 10: clutter from digit i would show it
    n = 5
    d = torch.stack([torch.full((1, 12, 12), (i + 1) / 10) for i in range(n)])
    x, pos = shifts.clutter_canvases(d, d, canvas=40, n_clutter=3, clutter_size=5, noise=0.0,
                                     seed=0)
    for i in range(n):
        r, c = pos[i].tolist()
        rest = x[i, 0].clone()
        rest[r:r + 12, c:c + 12] = 0
        values = set(np.round(torch.unique(rest).numpy(), 4).tolist()) - {0.0}
        assert round((i + 1) / 10, 4) not in values and values


def test_cluttered_dataset_labels_positions_and_determinism():
    ds, pos = shifts.cluttered("digits", canvas=24, split=(200, 50), epochs=2, seed=0,
                               device="cpu", return_positions=True)
    assert isinstance(ds, Dataset)
    assert ds.train.x.shape == (400, 1, 24, 24) and ds.test.x.shape == (50, 1, 24, 24)
    assert pos["train"].shape == (400, 2) and pos["test"].shape == (50, 2)
    assert bool((pos["test"] >= 0).all() and (pos["test"] <= 12).all())
    # labels preserved: the two epochs of the train digits carry the same labels
    assert torch.equal(ds.train.y[:200], ds.train.y[200:])
    from replibook.data import bundled
    base = bundled.digits(size=16, split=(200, 50), seed=0, device="cpu")
    assert torch.equal(ds.test.y, base.test.y) and torch.equal(ds.train.y[:200], base.train.y)
    # a fresh placement per epoch
    assert not torch.equal(pos["train"][:200], pos["train"][200:])
    again = shifts.cluttered("digits", canvas=24, split=(200, 50), epochs=2, seed=0, device="cpu")
    other = shifts.cluttered("digits", canvas=24, split=(200, 50), epochs=2, seed=1, device="cpu")
    assert torch.equal(again.train.x, ds.train.x) and torch.equal(again.test.x, ds.test.x)
    assert not torch.equal(other.test.x, ds.test.x)
    # the test placement does not depend on the number of train epochs
    one = shifts.cluttered("digits", canvas=24, split=(200, 50), epochs=1, seed=0, device="cpu")
    assert torch.equal(one.test.x, ds.test.x)
    card = ds.card()
    assert card["info"]["canvas"] == 24 and card["name"] == "cluttered-digits"


def test_cluttered_rejects_bad_arguments():
    with pytest.raises(ValueError, match="base"):
        shifts.cluttered("cifar", device="cpu")
    with pytest.raises(ValueError, match="fit"):
        shifts.clutter_canvases(_digits(s=12), _digits(), canvas=10)
    with pytest.raises(ValueError, match="epochs"):
        shifts.cluttered("digits", epochs=0, device="cpu")

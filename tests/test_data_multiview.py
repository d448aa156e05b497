"""Tests of replibook.data.shifts.multiview and its image helpers."""
import pytest
import torch

from replibook.data import bundled
from replibook.data.shifts import dilate, multiview, shift_images, sobel_edges


@pytest.fixture(scope="module")
def ds():
    return multiview("digits", size=16, split=(300, 100), seed=0, device="cpu")


def test_shapes_ranges_labels_and_card(ds):
    assert ds.n_views == 2 and len(ds.train) == 300 and len(ds.test) == 100
    for split in (ds.train, ds.test):
        for v in split.views:
            assert v.shape == (len(split), 1, 16, 16) and v.dtype == torch.float32
            assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
        assert set(split.nuisance) == {"intensity", "background", "shift_x", "shift_y", "dilation"}
        assert all(len(t) == len(split) for t in split.nuisance.values())
    base = bundled.digits(size=16, split=(300, 100), seed=0, device="cpu")
    assert torch.equal(ds.train.y, base.train.y) and torch.equal(ds.test.y, base.test.y)
    card = ds.card()
    assert card["n_train"] == 300 and card["views"] == ds.view_names and "dilation" in card["nuisance"]


def test_views_follow_their_definition_exactly(ds):
    base = bundled.digits(size=16, split=(300, 100), seed=0, device="cpu")
    for split, digits in [(ds.train, base.train.x), (ds.test, base.test.x)]:
        n = split.nuisance
        a, b = n["intensity"][:, None, None, None], n["background"][:, None, None, None]
        moved = shift_images(digits, n["shift_x"].long(), n["shift_y"].long())
        assert torch.allclose(split.views[0], (b + (a - b) * moved).clamp(0, 1), atol=1e-6)
        v2 = sobel_edges(dilate(digits, n["dilation"].long()))
        assert torch.allclose(split.views[1], v2, atol=1e-6)


def test_nuisance_ranges_and_independent_draws(ds):
    n = ds.train.nuisance
    assert float(n["intensity"].min()) >= 0.5 and float(n["intensity"].max()) <= 1.0
    assert float(n["background"].min()) >= 0.0 and float(n["background"].max()) <= 0.3
    assert set(n["shift_x"].tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert set(n["dilation"].tolist()) == {0.0, 1.0}
    # nuisances are drawn independently of the label: no class has only one dilation level
    for c in range(10):
        assert len(set(n["dilation"][ds.train.y == c].tolist())) == 2
    # the edge view does not depend on view 1's nuisances: equal digits, other draws
    other = multiview("digits", size=16, split=(300, 100), seed=0, intensity=(0.9, 1.0),
                      device="cpu")
    same_k = other.train.nuisance["dilation"] == n["dilation"]
    assert torch.allclose(other.train.views[1][same_k], ds.train.views[1][same_k])


def test_deterministic_given_seed():
    a = multiview("digits", size=16, split=(200, 50), seed=1, device="cpu")
    b = multiview("digits", size=16, split=(200, 50), seed=1, device="cpu")
    c = multiview("digits", size=16, split=(200, 50), seed=2, device="cpu")
    assert all(torch.equal(u, v) for u, v in zip(a.train.views, b.train.views))
    assert torch.equal(a.test.nuisance["intensity"], b.test.nuisance["intensity"])
    assert not torch.equal(a.train.nuisance["intensity"], c.train.nuisance["intensity"])


def test_image_helpers_known_answers():
    x = torch.zeros(2, 1, 5, 5)
    x[:, :, 2, 2] = 1.0
    moved = shift_images(x, torch.tensor([1, -2]), torch.tensor([0, 1]))
    assert moved[0, 0, 2, 3] == 1 and moved[0].sum() == 1          # one right
    assert moved[1, 0, 3, 0] == 1 and moved[1].sum() == 1          # two left, one down
    gone = shift_images(x[:1], torch.tensor([3]), torch.tensor([0]))
    assert gone.sum() == 0                                          # no wrap-around
    grown = dilate(x, torch.tensor([0, 1]))
    assert grown[0].sum() == 1 and grown[1].sum() == 9
    step = torch.zeros(1, 1, 6, 6)
    step[..., 3:] = 1.0
    edges = sobel_edges(step)
    # interior rows: equal response on the two columns beside the step (|gx| = 4 before
    # scaling), none on the flat columns 0 and 4; the image's maximum is 1
    rows = edges[0, 0, 2:4]
    assert torch.allclose(rows[:, 2], rows[:, 3]) and float(rows[0, 2]) > 0.5
    assert float(rows[:, 0].abs().max()) == 0.0 and float(rows[:, 4].abs().max()) == 0.0
    assert float(edges.max()) == pytest.approx(1.0)
    assert float(sobel_edges(torch.zeros(1, 1, 4, 4)).abs().max()) == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        multiview("cifar", device="cpu")
    with pytest.raises(ValueError):
        multiview("digits", split=(100, 50), background=(0.0, 0.6), intensity=(0.5, 1.0), device="cpu")


def test_full_tier_base_reads_the_torchvision_layout(tmp_path):
    from fakes import write_mnist_idx
    write_mnist_idx(tmp_path, n_train=30, n_test=20)
    plain = dict(intensity=(1.0, 1.0), background=(0.0, 0.0), max_shift=0, max_dilation=0)
    ds = multiview("mnist", size=32, split=None, root=tmp_path, device="cpu", **plain)
    assert len(ds.train) == 30 and len(ds.test) == 20
    assert ds.train.views[0].shape == (30, 1, 32, 32) and ds.source == "torchvision"
    # no nuisances: view 1 is the resized digit itself, view 2 its edge map
    assert torch.allclose(ds.train.views[1], sobel_edges(ds.train.views[0]), atol=1e-6)
    assert ds.card()["info"]["split"] is None

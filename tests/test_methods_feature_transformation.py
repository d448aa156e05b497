"""Feature transformation (Zhu et al. 2021): the operators, the hook, the score statistics."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.methods import feature_transformation as FT


def _unit(n, d, seed):
    return F.normalize(torch.randn(n, d, generator=torch.Generator().manual_seed(seed)), dim=1)


def test_positive_extrapolation_known_answer_and_lower_score():
    q, k = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    q2, k2 = FT.positive_extrapolation(q, k, 1.5)
    assert torch.allclose(q2, torch.tensor([[1.5, -0.5]])) and torch.allclose(k2, torch.tensor([[-0.5, 1.5]]))
    # closed form for unit vectors: q'.k' = s - 2 a (1 - s), a = lam (lam - 1)
    q, k = _unit(50, 8, 0), _unit(50, 8, 1)
    s = (q * k).sum(1)
    for lam in (1.0, 1.3, 2.0):
        q2, k2 = FT.positive_extrapolation(q, k, lam)
        a = lam * (lam - 1)
        assert torch.allclose((q2 * k2).sum(1), s - 2 * a * (1 - s), atol=1e-5)
        if lam > 1:
            assert ((q2 * k2).sum(1) < s).all()
    # interpolation (lam in [0, 1]) raises it instead
    q2, k2 = FT.positive_extrapolation(q, k, 0.5)
    assert ((q2 * k2).sum(1) >= s - 1e-6).all()


def test_negative_interpolation_known_answer():
    queue = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    perm = torch.tensor([1, 2, 0])
    out = FT.negative_interpolation(queue, 0.25, perm)
    assert torch.allclose(out, torch.tensor([[0.25, 0.75], [0.75, 1.0], [1.0, 0.25]]))
    assert torch.equal(FT.negative_interpolation(queue, 1.0, perm), queue)


def test_hook_draws_in_range_and_is_reproducible():
    q, k, queue = _unit(16, 8, 0), _unit(16, 8, 1), _unit(64, 8, 2)
    ft = FT.FeatureTransform()
    lams, mus = [], []
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        ft(q, k, queue, generator=g)
        lams.append(ft.last["lam"])
        mus.append(ft.last["mu"])
    assert 1.0 <= min(lams) and max(lams) <= 2.0 and 0.0 <= min(mus) and max(mus) <= 1.0
    # Beta(2, 2) + 1 has mean 1.5; Beta(1.6, 1.6) has mean 0.5 (sd of the mean of 200 draws < 0.02)
    assert abs(np.mean(lams) - 1.5) < 0.06 and abs(np.mean(mus) - 0.5) < 0.06
    a = ft(q, k, queue, generator=torch.Generator().manual_seed(5))
    b = ft(q, k, queue, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    # scalar form: one lambda for every entry, so q' - q is proportional to (k - q) with one factor
    q2, k2, queue2 = a
    ratio = (q2 - q) / (k - q)
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio), atol=1e-4)
    assert not torch.equal(queue2, queue)


def test_hook_components_can_be_switched_off_and_per_element():
    q, k, queue = _unit(4, 6, 0), _unit(4, 6, 1), _unit(10, 6, 2)
    g = torch.Generator().manual_seed(0)
    q2, k2, queue2 = FT.FeatureTransform(positive=None, negative=True)(q, k, queue, generator=g)
    assert torch.equal(q2, q) and torch.equal(k2, k) and not torch.equal(queue2, queue)
    q2, k2, queue2 = FT.FeatureTransform(positive="extrapolate", negative=False)(q, k, queue, generator=g)
    assert torch.equal(queue2, queue) and ((q2 * k2).sum(1) <= (q * k).sum(1) + 1e-6).all()
    ft = FT.FeatureTransform(per_element=True)
    q2, _, _ = ft(q, k, queue, generator=g)
    ratio = (q2 - q) / (k - q)                                   # per-element lambdas differ
    assert ratio.std() > 0.05 and (ratio <= 0).all() and (ratio >= -1).all()
    with pytest.raises(ValueError):
        FT.FeatureTransform(positive="sideways")


def test_score_stats_known_answer():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    s = FT.score_stats(q, k, queue)
    assert s["pos"] == pytest.approx((1.0 + 0.8) / 2)
    # scores: q1 -> [1, -1, 0], q2 -> [0, 0, 1]
    assert s["neg_mean"] == pytest.approx(1 / 6)
    assert s["neg_var"] == pytest.approx((1.0 + 1 / 3) / 2)
    pos, neg = FT.score_samples(q, k, queue)
    assert pos.shape == (2,) and neg.shape == (6,)


def test_paired_diffs_and_augment():
    assert FT.paired_diffs([1, 2], [0.5, 3]) == [0.5, -1.0]
    with pytest.raises(ValueError):
        FT.paired_diffs([1], [1, 2])
    x = torch.rand(4, 3, 8, 8)
    out = FT.make_augment("color")(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    with pytest.raises(ValueError):
        FT.make_augment("nope")

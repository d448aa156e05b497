"""longtail_noisy: exact long-tail profile, exact noise rate, sym/asym noise, index conventions."""
import numpy as np
import pytest
import torch

from replibook.data.shifts import LongtailNoisy, longtail_noisy, longtail_profile


def balanced(per_class=400, classes=10, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))


def test_profile_known_values():
    assert longtail_profile(400, 1, 10).tolist() == [400] * 10
    # n_c = floor(400 * 10^(-c/9)): head 400, tail exactly 40
    assert longtail_profile(400, 10, 10).tolist() == [400, 309, 239, 185, 143, 111, 86, 66, 51, 40]
    assert longtail_profile(500, 100, 3).tolist() == [500, 50, 5]
    with pytest.raises(ValueError):
        longtail_profile(10, 0.5, 3)


@pytest.mark.parametrize("imbalance", [1, 10, 50])
def test_class_counts_follow_profile_exactly(imbalance):
    y = balanced()
    out = longtail_noisy(y, imbalance=imbalance, noise=0.0, seed=3)
    counts = np.bincount(y[out.kept], minlength=10)
    expected = np.floor(400 * imbalance ** (-np.arange(10) / 9) + 1e-9).astype(int)
    assert counts.tolist() == expected.tolist()
    assert np.all(np.diff(out.kept) > 0)                      # ascending, no duplicates
    assert len(out.noisy) == 0 and np.array_equal(out.labels, y[out.kept])


def test_imbalance_one_keeps_everything_even_unbalanced():
    y = np.array([0, 0, 0, 1, 2, 2, 1, 0, 2])
    out = longtail_noisy(y, imbalance=1, noise=0.0)
    assert out.kept.tolist() == list(range(len(y)))
    # with a cap: the profile is min(count, quota)
    capped = longtail_noisy(y, imbalance=4, noise=0.0, n_max=2)
    assert np.bincount(y[capped.kept], minlength=3).tolist() == [2, 1, 0]


@pytest.mark.parametrize("kind", ["sym", "asym"])
@pytest.mark.parametrize("noise", [0.0, 0.2, 0.45, 1.0])
def test_noise_rate_exact_and_labels_differ_exactly_on_noisy_set(kind, noise):
    y = balanced()
    out = longtail_noisy(y, imbalance=5, noise=noise, kind=kind, seed=1)
    m = len(out.kept)
    assert len(out.noisy) == round(noise * m)
    assert len(out.clean) + len(out.noisy) == m
    assert np.intersect1d(out.clean, out.noisy).size == 0
    clean_labels = y[out.kept]
    changed = np.flatnonzero(out.labels != clean_labels)
    assert np.array_equal(changed, out.noisy)
    assert np.array_equal(out.labels[out.clean], clean_labels[out.clean])
    assert out.labels.min() >= 0 and out.labels.max() <= 9


def test_asym_maps_c_to_c_plus_one():
    y = balanced()
    out = longtail_noisy(y, imbalance=1, noise=0.3, kind="asym", seed=2)
    clean = y[out.kept][out.noisy]
    assert np.array_equal(out.labels[out.noisy], (clean + 1) % 10)


def test_sym_noise_spreads_over_other_classes():
    y = balanced(per_class=1000)
    out = longtail_noisy(y, imbalance=1, noise=0.5, kind="sym", seed=4)
    clean = y[out.kept][out.noisy]
    offsets = (out.labels[out.noisy] - clean) % 10
    hist = np.bincount(offsets, minlength=10)
    assert hist[0] == 0
    # 5000 draws over 9 offsets: each about 556, far from the asym pattern (all mass on 1)
    assert hist[1:].min() > 450 and hist[1:].max() < 670


def test_deterministic_given_seed_and_accepts_tensors():
    y = balanced()
    a = longtail_noisy(y, imbalance=10, noise=0.2, seed=7)
    b = longtail_noisy(torch.from_numpy(y), imbalance=10, noise=0.2, seed=7)
    c = longtail_noisy(y, imbalance=10, noise=0.2, seed=8)
    assert isinstance(a, LongtailNoisy)
    for u, v in zip(a, b):
        assert np.array_equal(u, v)
    assert not np.array_equal(a.noisy, c.noisy)
    kept, labels, clean, noisy = a                             # plain tuple unpacking
    assert len(kept) == len(labels)


def test_bad_arguments():
    y = balanced(per_class=5)
    with pytest.raises(ValueError):
        longtail_noisy(y, noise=1.5)
    with pytest.raises(ValueError):
        longtail_noisy(y, kind="pair")
    with pytest.raises(ValueError):
        longtail_noisy(y, num_classes=5)

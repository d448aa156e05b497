"""Known-answer tests of `replibook.metrics.image.fid_lite` (Frechet distance of Gaussian fits)."""
import numpy as np
import pytest
import scipy.linalg
import torch

from replibook.metrics.image import fid_lite, frechet_distance, gaussian_fit


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    # the usual FID code: sqrtm of the product of the two covariances
    mu_a, mu_b = a.mean(0), b.mean(0)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(ca @ cb)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.trace(covmean))


def test_identical_sets_give_zero():
    f = np.random.default_rng(0).normal(size=(200, 6))
    assert fid_lite(f, f) == pytest.approx(0.0, abs=1e-8)
    assert fid_lite(torch.tensor(f), torch.tensor(f)) == pytest.approx(0.0, abs=1e-8)


def test_closed_form_for_two_known_gaussians():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[1.0]]) == pytest.approx(9.0 + 1.0)
    # diagonal covariances: |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    mu_a, mu_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    va, vb = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 1.0 + 0.0 + 4.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(mu_a, np.diag(va), mu_b, np.diag(vb)) == pytest.approx(expected)
    # same covariance, rotated frame: only the mean term is left
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    cov = q @ np.diag([0.5, 2.0, 3.0]) @ q.T
    assert frechet_distance(mu_a, cov, mu_b, cov) == pytest.approx(5.0, abs=1e-9)


def test_sample_estimate_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40_000, 2)) * np.array([1.0, 2.0]) + np.array([0.0, 0.0])
    b = rng.normal(size=(40_000, 2)) * np.array([3.0, 2.0]) + np.array([1.0, 0.0])
    exact = 1.0 + (1 - 3) ** 2 + 0.0                                  # 5
    assert fid_lite(a, b) == pytest.approx(exact, rel=0.03)
    assert fid_lite(a, a[::-1]) == pytest.approx(0.0, abs=1e-9)      # order of rows does not matter


def test_symmetric_and_matches_scipy_sqrtm_reference():
    rng = np.random.default_rng(3)
    mix = rng.normal(size=(8, 8))
    a = rng.normal(size=(300, 8)) @ mix
    b = rng.normal(size=(250, 8)) @ (mix + 0.5 * rng.normal(size=(8, 8))) + 0.3
    ours = fid_lite(a, b)
    assert ours == pytest.approx(fid_lite(b, a), rel=1e-9)
    assert ours == pytest.approx(_scipy_fid(a, b), rel=1e-6)
    assert ours > 0.5


def test_singular_covariance_stays_finite_and_nonnegative():
    # fewer samples than dimensions: rank-deficient covariances
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20)) + 1.0
    d = fid_lite(a, b)
    assert np.isfinite(d) and d > 0
    assert fid_lite(a, a) == pytest.approx(0.0, abs=1e-8)


def test_grows_with_mean_shift_and_rejects_bad_input():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(500, 4))
    dists = [fid_lite(a, a + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert dists == pytest.approx([0.0, 4 * 0.25, 4 * 1.0, 4 * 4.0], abs=1e-8)
    mu, cov = gaussian_fit(a)
    assert mu.shape == (4,) and cov.shape == (4, 4)
    with pytest.raises(ValueError, match="dimensions"):
        fid_lite(a, a[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        fid_lite(a[:1], a)
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        fid_lite(a[0], a)

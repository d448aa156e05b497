"""Known-answer tests of replibook.models.gaussian (MVG, Ledoit-Wolf, (N)PCA, class Gaussians)."""
import math

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.covariance import LedoitWolf
from sklearn.decomposition import PCA

from replibook.models.gaussian import (ClassGaussians, MVG, chi2_threshold, ledoit_wolf, mahalanobis,
                                       pca, select_components)


def _correlated(n, d, seed=0, shift=3.0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + shift


@pytest.mark.parametrize("n,d", [(60, 8), (20, 50), (300, 3)])
@pytest.mark.parametrize("assume_centered", [False, True])
def test_ledoit_wolf_matches_sklearn(n, d, assume_centered):
    x = _correlated(n, d)
    ref = LedoitWolf(assume_centered=assume_centered).fit(x)
    mean, sigma, rho = ledoit_wolf(torch.from_numpy(x), assume_centered=assume_centered)
    assert rho == pytest.approx(ref.shrinkage_, abs=1e-12)
    np.testing.assert_allclose(sigma.numpy(), ref.covariance_, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mean.numpy(), ref.location_, atol=1e-12)
    if n < d:
        assert 0.0 < rho <= 1.0          # fewer samples than dimensions: shrinkage must act


def test_mvg_mahalanobis_matches_sklearn():
    x, test = _correlated(80, 12, seed=1), _correlated(30, 12, seed=2)
    ref = LedoitWolf().fit(x)
    model = MVG().fit(x)
    np.testing.assert_allclose(model.mahalanobis(test).numpy() ** 2, ref.mahalanobis(test), rtol=1e-8)
    np.testing.assert_allclose(model.precision_.numpy(), ref.precision_, rtol=1e-7, atol=1e-9)
    assert model.shrinkage_ == pytest.approx(ref.shrinkage_)
    assert model.dim == 12


def test_mahalanobis_of_standard_normal_is_chi2():
    rng = np.random.default_rng(0)
    d = 5
    z = rng.normal(size=(4000, d))
    sq = mahalanobis(z, torch.zeros(d, dtype=torch.float64), torch.eye(d, dtype=torch.float64)).numpy() ** 2
    assert stats.kstest(sq, stats.chi2(d).cdf).pvalue > 1e-3
    assert abs(sq.mean() - d) < 0.3
    # an empirical MVG fitted on many samples gives the same law on fresh ones
    model = MVG(covariance="empirical").fit(rng.normal(size=(20000, d)))
    sq_fit = model.mahalanobis(z).numpy() ** 2
    assert stats.kstest(sq_fit, stats.chi2(d).cdf).pvalue > 1e-3


def test_axis_aligned_known_answer():
    # points (+-2, 0), (0, +-3): mean 0, biased covariance diag(2, 4.5)
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    model = MVG(covariance="empirical").fit(x)
    np.testing.assert_allclose(model.covariance_.numpy(), np.diag([2.0, 4.5]), atol=1e-12)
    assert float(model.mahalanobis([[2.0, 3.0]])) == pytest.approx(math.sqrt(4 / 2 + 9 / 4.5))
    # diag (SED): unbiased per-feature variance, hand formula
    sed = MVG(covariance="diag").fit(x)
    var = x.var(0, ddof=1)
    point = np.array([[1.0, -2.0]])
    assert float(sed.mahalanobis(point)) == pytest.approx(math.sqrt(((point[0] - x.mean(0)) ** 2 / var).sum()))
    # identity: Euclidean distance to the mean
    assert float(MVG(covariance="identity").fit(x).mahalanobis(point)) == pytest.approx(math.sqrt(5.0))


def test_chi2_threshold_known_values_and_fpr():
    assert chi2_threshold(0.05, 1) == pytest.approx(1.959964, abs=1e-5)      # two-sided normal 95%
    assert chi2_threshold(0.05, 2) == pytest.approx(math.sqrt(-2 * math.log(0.05)))
    rng = np.random.default_rng(3)
    model = MVG(covariance="empirical").fit(rng.normal(size=(20000, 4)))
    fresh = rng.normal(size=(20000, 4))
    achieved = float(model.predict(fresh, fpr=0.05).double().mean())
    assert achieved == pytest.approx(0.05, abs=0.006)
    with pytest.raises(ValueError):
        chi2_threshold(0.0, 3)


def test_pca_matches_sklearn():
    x = _correlated(40, 6, seed=4)
    mean, comps, ratio = pca(x)
    ref = PCA().fit(x)
    np.testing.assert_allclose(ratio.numpy(), ref.explained_variance_ratio_, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(mean.numpy(), ref.mean_)
    # same axes up to sign
    np.testing.assert_allclose(np.abs((comps.numpy() * ref.components_).sum(1)), 1.0, atol=1e-8)
    # fewer samples than dimensions: only the N - 1 directions with variance are kept
    wide = _correlated(5, 9, seed=7)
    _, comps, ratio = pca(wide)
    assert comps.shape == (4, 9) and float(ratio.sum()) == pytest.approx(1.0)
    np.testing.assert_allclose(ratio.numpy(), PCA().fit(wide).explained_variance_ratio_[:4], rtol=1e-8)


def test_select_components_official_rule():
    ratio = torch.tensor([0.5, 0.3, 0.12, 0.05, 0.03], dtype=torch.float64)   # cumsum .5 .8 .92 .97 1
    assert select_components(ratio, "pca", var=0.9) == slice(0, 3)          # first cumsum > .9 is #2
    assert select_components(ratio, "npca", var=0.05) == slice(2, 5)        # first > .95 is #3, start at #2
    assert select_components(ratio, "pca", n_components=2) == slice(0, 2)
    assert select_components(ratio, "npca", n_components=2) == slice(3, 5)
    with pytest.raises(ValueError):
        select_components(ratio, "npca", var=1.5)


def test_npca_sees_low_variance_anomalies_pca_does_not():
    rng = np.random.default_rng(5)
    scales = np.array([10.0, 5.0, 2.0, 0.1])
    x = rng.normal(size=(500, 4)) * scales
    anomaly = np.array([[0.0, 0.0, 0.0, 1.0]])       # 10 sigma along the smallest axis, tiny in absolute terms
    top = MVG(project="pca", var=0.99).fit(x)
    bottom = MVG(project="npca", var=0.01).fit(x)
    assert top.dim < 4 and bottom.dim < 4
    assert float(top.mahalanobis(anomaly)) < 0.5
    assert float(bottom.mahalanobis(anomaly)) > 5 * float(top.mahalanobis(anomaly))
    # the smallest component alone, unshrunk: about 10 (1 / 0.1 sigma)
    last = MVG(covariance="empirical", project="npca", n_components=1).fit(x)
    assert float(last.mahalanobis(anomaly)) == pytest.approx(10.0, rel=0.1)
    assert top.transform(x).shape == (500, top.dim)


def test_mvg_errors_and_output_type():
    with pytest.raises(ValueError):
        MVG(covariance="banana")
    with pytest.raises(ValueError):
        MVG(project="ica")
    with pytest.raises(RuntimeError):
        MVG().mahalanobis(np.zeros((2, 3)))
    out = MVG().fit(torch.randn(30, 3)).mahalanobis(torch.randn(5, 3))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.shape == (5,)


def test_class_gaussians_shared_and_per_class():
    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0], [0.0, 6.0, 0.0]])
    y = np.repeat([0, 1, 2], 60)
    x = centres[y] + rng.normal(size=(180, 3)) @ np.diag([1.0, 0.5, 2.0])
    shared = ClassGaussians(shared=True).fit(x, y)
    resid = x - centres[y] - (x - centres[y]).reshape(3, 60, 3).mean(1).repeat(60, 0)
    ref = LedoitWolf(assume_centered=True).fit(resid)
    np.testing.assert_allclose(shared.precisions_[0].numpy(), ref.precision_, rtol=1e-7, atol=1e-9)
    d = shared.mahalanobis(x)
    assert d.shape == (180, 3)
    assert (shared.predict(x).numpy() == y).mean() > 0.97
    per = ClassGaussians(shared=False).fit(x, y)
    ref1 = LedoitWolf().fit(x[y == 1])
    np.testing.assert_allclose(per.mahalanobis(x[:5])[:, 1].numpy() ** 2, ref1.mahalanobis(x[:5]), rtol=1e-8)
    assert torch.equal(per.min_distance(x), per.mahalanobis(x).min(1).values)


# ------------------------------------------------------------------ OnlineClassCov (ch. 10)
from replibook.models.gaussian import OnlineClassCov  # noqa: E402


def test_online_class_cov_equals_batch_estimate():
    rng = np.random.default_rng(3)
    n, d, c = 230, 5, 4
    f = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + rng.normal(size=d) * 3
    y = rng.integers(0, c - 1, size=n)              # class c-1 never appears
    est = OnlineClassCov(c, d, dtype=torch.float64)
    for lo in range(0, n, 37):                      # uneven batches, some classes missing per batch
        est.update(torch.from_numpy(f[lo:lo + 37]), torch.from_numpy(y[lo:lo + 37]))
    for k in range(c - 1):
        fk = f[y == k]
        np.testing.assert_allclose(est.mean[k].numpy(), fk.mean(0), atol=1e-10)
        np.testing.assert_allclose(est.cov[k].numpy(), np.cov(fk.T, ddof=0), atol=1e-10)
        assert est.amount[k].item() == len(fk)
    assert est.amount[c - 1].item() == 0
    assert torch.count_nonzero(est.cov[c - 1]) == 0 and torch.count_nonzero(est.mean[c - 1]) == 0


def test_online_class_cov_gradient_reaches_only_current_batch():
    est = OnlineClassCov(2, 3)
    est.update(torch.randn(10, 3), torch.tensor([0, 1] * 5))
    f = torch.randn(6, 3, requires_grad=True)
    cov = est.update(f, torch.tensor([0, 0, 0, 1, 1, 1]))
    cov.sum().backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0
    assert not est.cov.requires_grad and not est.mean.requires_grad

"""train.probes: agreement with scikit-learn fitted by hand, and sensible known answers."""
import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler

from replibook.train import probes


def _blobs(n=400, d=5, classes=3, sep=3.0, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(size=(classes, d)) * sep
    return centres[y] + rng.normal(size=(n, d)), y


def test_standardize_uses_train_statistics_and_survives_constant_columns():
    tr = np.array([[1.0, 5.0], [3.0, 5.0]])
    te = np.array([[2.0, 7.0]])
    a, b = probes.standardize(tr, te)
    assert np.allclose(a[:, 0], [-1, 1]) and np.allclose(a[:, 1], 0) and np.allclose(b, [[0.0, 2.0]])
    with pytest.raises(ValueError):
        probes.standardize(np.zeros((3, 2)), np.zeros((3, 4)))


def test_linear_probe_equals_sklearn_on_standardised_features_and_accepts_tensors():
    x, y = _blobs()
    res = probes.linear(torch.tensor(x[:300]), torch.tensor(y[:300]), x[300:], y[300:], C=0.5)
    sc = StandardScaler().fit(x[:300])
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(sc.transform(x[:300]), y[:300])
    assert res["acc"] == pytest.approx((ref.predict(sc.transform(x[300:])) == y[300:]).mean())
    assert res["acc"] > 0.9


def test_linear_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(1000, 5)), rng.integers(0, 4, 1000)
    assert abs(probes.linear(x[:700], y[:700], x[700:], y[700:])["acc"] - 0.25) < 0.08


def test_logreg_auroc_separable_noise_and_sklearn_agreement():
    x, y = _blobs(classes=2, sep=2.0, seed=2)
    res = probes.logreg_auroc(x[:300], y[:300], x[300:], y[300:], Cs=(0.1, 1.0), cv=3)
    assert res["auroc"] > 0.95 and res["C"] in (0.1, 1.0) and set(res["cv_auroc"]) == {0.1, 1.0}
    sc = StandardScaler().fit(x[:300])
    ref = LogisticRegression(C=res["C"], max_iter=2000).fit(sc.transform(x[:300]), y[:300])
    assert res["auroc"] == pytest.approx(roc_auc_score(y[300:], ref.decision_function(sc.transform(x[300:]))))
    rng = np.random.default_rng(3)
    xn, yn = rng.normal(size=(600, 4)), rng.integers(0, 2, 600)
    assert abs(probes.logreg_auroc(xn[:400], yn[:400], xn[400:], yn[400:])["auroc"] - 0.5) < 0.1
    with pytest.raises(ValueError):
        probes.logreg_auroc(xn, np.zeros(600), xn, yn)


def test_ridge_recovers_a_linear_target_and_matches_sklearn():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 6))
    t = x @ rng.normal(size=(6, 2)) + 0.01 * rng.normal(size=(500, 2))
    res = probes.ridge(x[:400], t[:400], x[400:], t[400:], alpha=0.1)
    assert res["r2"] > 0.99 and res["per_target"].shape == (2,)
    one = probes.ridge(x[:400], t[:400, 0], x[400:], t[400:, 0])
    assert one["r2"] > 0.99 and one["per_target"].shape == (1,)
    sc = StandardScaler().fit(x[:400])
    ref = Ridge(alpha=0.1).fit(sc.transform(x[:400]), t[:400])
    assert np.allclose(res["model"].coef_, ref.coef_)
    noise = probes.ridge(x[:400], rng.normal(size=400), x[400:], rng.normal(size=100))
    assert noise["r2"] < 0.05


def test_knn_matches_sklearn():
    x, y = _blobs(seed=5)
    res = probes.knn(x[:300], y[:300], x[300:], y[300:], k=5, metric="euclidean")
    sc = StandardScaler().fit(x[:300])
    ref = KNeighborsClassifier(5).fit(sc.transform(x[:300]), y[:300])
    assert res["acc"] == pytest.approx((ref.predict(sc.transform(x[300:])) == y[300:]).mean())

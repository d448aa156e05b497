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


# ------------------------------------------------------------------ mlp, label_efficiency
from sklearn.datasets import make_circles  # noqa: E402
from sklearn.neural_network import MLPClassifier  # noqa: E402


def _circles(n=600, seed=0):
    x, y = make_circles(n, noise=0.05, factor=0.5, random_state=seed)
    return x * 3.0 + 5.0, y          # an offset and scale the standardisation must remove


def test_mlp_probe_solves_a_non_linear_problem_where_the_linear_probe_cannot():
    x, y = _circles()
    lin = probes.linear(x[:400], y[:400], x[400:], y[400:])
    res = probes.mlp(x[:400], y[:400], x[400:], y[400:], hidden=(32, 32), steps=300, lr=1e-2, seed=0)
    sk = MLPClassifier((32, 32), max_iter=2000, random_state=0).fit(StandardScaler().fit(x[:400]).transform(x[:400]), y[:400])
    sk_acc = (sk.predict(StandardScaler().fit(x[:400]).transform(x[400:])) == y[400:]).mean()
    assert lin["acc"] < 0.75 and sk_acc > 0.95
    assert res["acc"] > 0.95 and abs(res["acc"] - sk_acc) < 0.05      # as good as sklearn's MLP
    assert res["train_acc"] == pytest.approx((res["predict"](x[:400]) == y[:400]).mean())


def test_mlp_probe_is_seeded_accepts_tensors_and_checks_shapes():
    x, y = _blobs(classes=4)
    a = probes.mlp(torch.tensor(x[:300]), torch.tensor(y[:300]), x[300:], y[300:], steps=30, seed=3)
    b = probes.mlp(x[:300], y[:300], x[300:], y[300:], steps=30, seed=3)
    assert a["acc"] == b["acc"] and (a["predict"](x[300:]) == b["predict"](x[300:])).all()
    assert a["acc"] > 0.9
    with pytest.raises(ValueError):
        b["predict"](x[300:, :3])
    with pytest.raises(ValueError):
        probes.mlp(x[:300].reshape(300, 5, 1), y[:300], x[300:], y[300:])


def test_mlp_probe_on_noise_is_near_chance():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(1000, 8)), rng.integers(0, 4, 1000)
    assert abs(probes.mlp(x[:700], y[:700], x[700:], y[700:], steps=50)["acc"] - 0.25) < 0.08


def test_balanced_subset_counts_and_determinism():
    y = np.repeat(np.arange(4), [10, 10, 10, 3])
    idx = probes.per_class_subset(y, 5, seed=0)
    assert np.bincount(y[idx]).tolist() == [5, 5, 5, 3]              # a short class gives what it has
    assert (idx == np.sort(idx)).all() and len(set(idx)) == len(idx)
    assert (probes.per_class_subset(y, 5, seed=0) == idx).all()
    assert not (probes.per_class_subset(y, 5, seed=1) == idx).all()


def test_label_efficiency_more_labels_help_and_models_are_fresh():
    x, y = _blobs(n=1200, d=10, classes=5, sep=1.0, seed=6)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    made = []

    def make():
        torch.manual_seed(0)
        made.append(torch.nn.Linear(10, 5))
        return made[-1]

    res = probes.label_efficiency(make, x[:1000], y[:1000], x[1000:], y[1000:], [1, 100], steps=200,
                                  batch_size=32, lr=1e-2, seed=0)
    assert set(res) == {1, 100} and len(made) == 2 and made[0] is not made[1]
    assert res[100] > res[1] and res[100] > 0.6
    again = probes.label_efficiency(make, x[:1000], y[:1000], x[1000:], y[1000:], [1, 100], steps=200,
                                    batch_size=32, lr=1e-2, seed=0)
    assert again == res


def test_linear_head_reproduces_the_probe_on_raw_features():
    x, y = _blobs(n=300, d=4, classes=3, seed=7)
    x = x * np.array([1.0, 10.0, 0.1, 3.0]) + 5.0        # unstandardised scales and offsets
    res = probes.linear(x[:200], y[:200], x[200:], y[200:])
    head = probes.linear_head(res, x[:200])
    with torch.no_grad():
        pred = head(torch.tensor(x[200:], dtype=torch.float32)).argmax(1).numpy()
    tr, te = probes.standardize(x[:200], x[200:])
    assert (pred == res["model"].predict(te)).mean() == 1.0
    xb, yb = _blobs(n=200, d=3, classes=2, seed=8)
    rb = probes.linear(xb[:150], yb[:150], xb[150:], yb[150:])
    hb = probes.linear_head(rb, xb[:150])
    with torch.no_grad():
        pb = hb(torch.tensor(xb[150:], dtype=torch.float32)).argmax(1).numpy()
    assert (pb == rb["model"].predict(probes.standardize(xb[:150], xb[150:])[1])).all()


def test_linear_lbfgs_is_the_sklearn_estimator():
    import torch
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 6, generator=g) * 1.5
    y = torch.arange(300) % 3
    f = centers[y] + torch.randn(300, 6, generator=g) * 1.5 + 4.0     # offset: standardisation matters
    ref = probes.linear(f[:200], y[:200], f[200:], y[200:])
    got = probes.linear_lbfgs(f[:200], y[:200], f[200:], y[200:])
    assert 0.5 < got["acc"] < 1.0                                       # neither trivial nor saturated
    assert abs(got["acc"] - ref["acc"]) <= 0.02 and abs(got["train_acc"] - ref["train_acc"]) <= 0.02
    strong = probes.linear_lbfgs(f[:200], y[:200], f[200:], y[200:], C=1e-4)
    assert strong["train_acc"] <= got["train_acc"]

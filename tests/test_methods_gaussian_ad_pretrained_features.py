"""Tests of replibook.methods.gaussian_ad_pretrained_features (level-wise Gaussian AD glue)."""
import math

import numpy as np
import pytest
import torch

from replibook.methods import gaussian_ad_pretrained_features as G


def _levels(seed=0, n=200, dims=(4, 12)):
    """Normal features per level, and test features with anomalies along the weakest direction."""
    rng = np.random.default_rng(seed)
    train, test = {}, {}
    labels = np.r_[np.zeros(50), np.ones(50)].astype(int)
    for lv, d in enumerate(dims):
        scales = np.geomspace(3.0, 0.3, d)
        train[lv] = torch.from_numpy(rng.normal(size=(n, d)) * scales)
        t = rng.normal(size=(100, d)) * scales
        t[50:, -1] += 3.0                                  # 10 sigma along the smallest axis
        test[lv] = torch.from_numpy(t)
    return train, test, torch.from_numpy(labels)


def test_fit_score_and_sum():
    train, test, y = _levels()
    models = G.fit_levels(train, "mahalanobis")
    scores = G.level_scores(models, test, "mahalanobis")
    assert set(scores) == {0, 1} and scores[0].shape == (100,)
    total = G.sum_scores(scores)
    torch.testing.assert_close(total, scores[0] + scores[1])
    torch.testing.assert_close(G.sum_scores(scores, [1]), scores[1])
    assert G.auroc(total, y) > 0.95
    # Euclidean weighs a shift along a low-variance axis like any other: it separates worse
    eu = G.sum_scores(G.level_scores(G.fit_levels(train, "euclidean"), test, "euclidean"))
    assert G.auroc(eu, y) < G.auroc(total, y) - 0.05


def test_rms_normalisation_of_euclidean_and_sed():
    train, test, _ = _levels()
    eu = G.level_scores(G.fit_levels(train, "euclidean"), test, "euclidean")
    mean = train[1].mean(0)
    expected = (test[1] - mean).norm(dim=1) / math.sqrt(train[1].shape[1])
    torch.testing.assert_close(eu[1], expected)
    sed = G.level_scores(G.fit_levels(train, "sed"), test, "sed")
    std = train[1].std(0)
    torch.testing.assert_close(sed[1], ((test[1] - mean) / std).norm(dim=1) / math.sqrt(12))
    with pytest.raises(ValueError):
        G.fit_levels(train, "cosine")


def test_component_sweep_bottom_beats_top():
    train, test, y = _levels(seed=1)
    counts = [1, 2, 3]
    top = G.component_sweep(train[1], test[1], y, counts, "pca")
    bottom = G.component_sweep(train[1], test[1], y, counts, "npca")
    assert len(top) == len(bottom) == 3 and all(0 <= a <= 1 for a in top + bottom)
    assert min(bottom) > 0.95 and max(top) < 0.75


def test_achieved_fpr_matches_target_on_gaussian_features():
    rng = np.random.default_rng(2)
    model = G.MVG(covariance="empirical").fit(rng.normal(size=(5000, 3)))
    fpr = G.achieved_fpr(model, torch.from_numpy(rng.normal(size=(8000, 3))), 0.1)
    assert fpr == pytest.approx(0.1, abs=0.015)


def test_choose_contrast():
    table = {0.1: 0.80, 0.2: 0.93, 0.3: 0.965, 0.5: 0.99}
    assert G.choose_contrast(table, 0.97) == 0.3
    assert G.choose_contrast({0.5: 0.99, 1.0: 1.0}, 0.97) == 0.5        # none below: the smallest


def test_category_data_splits():
    train, test = G.category_data("grass", n_train=12, n_test_normal=6, n_test_defective=4, seed=0,
                                  contrast=0.5, size=32, device="cpu")
    assert len(train) == 12 and int(train.y.sum()) == 0 and train.info["split"] == "train"
    assert len(test) == 10 and int(test.y.sum()) == 4 and test.info["split"] == "test"
    again = G.category_data("grass", n_train=12, n_test_normal=6, n_test_defective=4, seed=1,
                            contrast=0.5, size=32, device="cpu")
    assert torch.equal(again[0].x, train.x) and not torch.equal(again[1].x, test.x)   # fixed train draw


def test_features_random_backbone(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path))
    x = torch.rand(3, 3, 32, 32)
    f = G.features(x, "lite0-random", size=32, levels=[0, 8])
    assert sorted(f) == [0, 8] and f[0].shape == (3, 32) and f[8].shape == (3, 1280)
    with pytest.raises(ValueError):
        G.features(x, "resnet")


def test_ae_trains_and_scores():
    torch.manual_seed(0)
    x = torch.rand(24, 3, 16, 16) * 0.2 + 0.4
    model = G.train_ae(x, latent_dim=4, epochs=2, batch_size=8, widths=(8, 8), seed=0)
    per_image = G.ae_scores(model, x)
    maps = G.ae_scores(model, x, maps=True)
    assert per_image.shape == (24,) and maps.shape == (24, 1, 16, 16)
    torch.testing.assert_close(per_image, maps.flatten(1).mean(1))
    again = G.train_ae(x, latent_dim=4, epochs=2, batch_size=8, widths=(8, 8), seed=0)
    torch.testing.assert_close(G.ae_scores(again, x), per_image)          # seeded


def test_mvtec_category_uses_shared_reader_with_chapter_defaults(monkeypatch):
    # the reader itself is tested in tests/test_data_real.py (fake MVTec AD copy)
    calls = []
    monkeypatch.setattr(G, "mvtec_ad", lambda *a, **k: calls.append((a, k)) or {"ok": True})
    assert G.mvtec_category("/data/mvtec", "bottle") == {"ok": True}
    assert calls[-1] == (("/data/mvtec", "bottle"), dict(size=380, fold=0, n_folds=5))
    G.mvtec_category("/data/mvtec", "cable", size=16, fold=None)
    assert calls[-1][1]["fold"] is None and calls[-1][1]["size"] == 16
    assert "bottle" in G.MVTEC_CATEGORIES and len(G.MVTEC_CATEGORIES) == 15


def test_fit_and_evaluate_variants():
    train, test, y = _levels(seed=3)
    fitted = G.fit_variants(train)
    assert set(fitted) == set(G.VARIANTS)
    assert fitted["NPCA 1%"][1].dim < 12 and fitted["PCA 99%"][1].dim < 12 and fitted["MVG"][1].dim == 12
    res = G.evaluate_variants(fitted, test, y)
    assert set(res) == {(v, s) for v in G.VARIANTS for s in ("level 0", "level 1", "sum")}
    direct = G.auroc(G.sum_scores(G.level_scores(fitted["SED"], test, "sed")), y)
    assert res[("SED", "sum")] == pytest.approx(direct)
    assert res[("NPCA 1%", "level 1")] > res[("PCA 99%", "level 1")]
    only = G.fit_variants(train, ["MVG"])
    assert list(only) == ["MVG"]


def test_evaluate_split_end_to_end(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path))
    train, test = G.category_data("brick", n_train=12, n_test_normal=5, n_test_defective=5, seed=0,
                                  contrast=1.0, size=32, device="cpu")
    cache = {}
    out = G.evaluate_split(train.x, test.x, test.y, backbone="lite0", feature_size=32,
                           sweep_counts=[1, 4, 50], fpr_targets=[0.05, 0.5],
                           ae=dict(latent_dim=4, epochs=1, batch_size=8, widths=(8, 8)), seed=0, fit_cache=cache)
    assert ("MVG", "sum") in out["auroc"] and ("NPCA 1%", "level 8") in out["auroc"]
    assert ("MVG random-init", "level 3") in out["auroc"] and ("Conv AE", "image") in out["auroc"]
    assert all(0.0 <= v <= 1.0 for v in out["auroc"].values())
    assert set(out["sweep"]) == {("pca", 1), ("pca", 4), ("npca", 1), ("npca", 4)}    # 50 > 11 components
    assert set(out["fpr"]) == {(lv, t) for lv in range(9) for t in (0.05, 0.5)}
    assert all(0.0 <= rho <= 1.0 for rho in out["shrinkage"].values())
    assert out["dims"][("MVG", 8)] == 1280 and out["dims"][("NPCA 1%", 8)] <= 11
    n_fits = len(cache)
    again = G.evaluate_split(train.x, test.x, test.y, backbone="lite0", feature_size=32, fit_cache=cache)
    assert len(cache) == n_fits                                                       # fits reused
    assert again["auroc"][("MVG", "sum")] == out["auroc"][("MVG", "sum")]

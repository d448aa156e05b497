"""Tests of `replibook.metrics.anomaly.pixel_auroc` and `fpr_at_threshold` against scikit-learn."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from replibook.metrics.anomaly import fpr_at_threshold, pixel_auroc


def test_pixel_auroc_matches_sklearn_on_pooled_pixels():
    rng = np.random.default_rng(0)
    masks = (rng.random((6, 1, 8, 8)) < 0.2).astype(np.float32)
    maps = rng.normal(size=(6, 1, 8, 8)) + 1.5 * masks
    ref = roc_auc_score(masks.ravel(), maps.ravel())
    assert pixel_auroc(maps, masks) == pytest.approx(ref, abs=1e-12)
    # tensors, and (N, H, W) maps against (N, 1, H, W) masks
    assert pixel_auroc(torch.from_numpy(maps[:, 0]), torch.from_numpy(masks)) == pytest.approx(ref, abs=1e-12)


def test_pixel_auroc_known_answers_and_errors():
    masks = np.zeros((2, 1, 4, 4))
    masks[0, 0, :2, :2] = 1
    assert pixel_auroc(masks * 5.0, masks) == 1.0
    assert pixel_auroc(-masks, masks) == 0.0
    with pytest.raises(ValueError):
        pixel_auroc(np.zeros((2, 1, 4, 4)), np.zeros((2, 1, 4, 5)))
    with pytest.raises(ValueError):                       # no defective pixel at all
        pixel_auroc(np.ones((1, 4, 4)), np.zeros((1, 4, 4)))


def test_fpr_at_threshold_matches_sklearn_roc_curve():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 200)
    s = rng.normal(size=200) + y
    fpr, _, thresholds = roc_curve(y, s)
    distinct = np.unique(s)
    for t, f in zip(thresholds[1:], fpr[1:]):
        # sklearn flags score >= t; a threshold just below t flags the same samples with '>'
        below = distinct[distinct < t]
        just_below = (below.max() + t) / 2 if below.size else t - 1.0
        assert fpr_at_threshold(s, y, just_below) == pytest.approx(f)


def test_fpr_at_threshold_known_answers():
    scores = [0.1, 0.4, 0.6, 0.9, 5.0]
    labels = [0, 0, 0, 0, 1]
    assert fpr_at_threshold(scores, labels, 0.5) == 0.5
    assert fpr_at_threshold(scores, labels, 0.9) == 0.0              # strictly above
    assert fpr_at_threshold(torch.tensor(scores), torch.tensor(labels), -1.0) == 1.0
    with pytest.raises(ValueError):
        fpr_at_threshold([1.0, 2.0], [1, 1], 0.0)

"""Known-answer tests of `replibook.metrics.anomaly`."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from replibook.metrics.anomaly import auroc


def test_perfect_reversed_and_constant_scores():
    y = np.array([0, 0, 1, 1])
    assert auroc([0.1, 0.2, 0.8, 0.9], y) == 1.0
    assert auroc([0.9, 0.8, 0.2, 0.1], y) == 0.0
    assert auroc([0.5, 0.5, 0.5, 0.5], y) == 0.5          # all tied: every pair counts one half


def test_hand_computed_case_with_ties():
    # positives score 3 and 2; negatives score 2 and 1
    # pairs (pos, neg): (3,2) win, (3,1) win, (2,2) tie, (2,1) win -> (3 + 0.5) / 4
    assert auroc([3, 2, 2, 1], [1, 1, 0, 0]) == pytest.approx(0.875)


@pytest.mark.parametrize("seed", range(5))
def test_matches_sklearn_on_random_scores_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = 200
    y = rng.random(n) < 0.3
    y[:2] = [True, False]
    scores = np.round(rng.normal(size=n) + 0.8 * y, 1)    # rounding creates many ties
    assert auroc(scores, y) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_pairwise_definition_and_tensor_input():
    rng = np.random.default_rng(7)
    s, y = rng.integers(0, 5, 60).astype(float), rng.integers(0, 2, 60)
    pos, neg = s[y == 1], s[y == 0]
    pairwise = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (pos.size * neg.size)
    assert auroc(torch.tensor(s), torch.tensor(y)) == pytest.approx(pairwise)


def test_invariant_to_monotone_transform_and_complement():
    rng = np.random.default_rng(3)
    s, y = rng.normal(size=100), rng.integers(0, 2, 100)
    a = auroc(s, y)
    assert auroc(np.exp(3 * s), y) == pytest.approx(a)
    assert auroc(-s, y) == pytest.approx(1 - a)


def test_bad_input_is_an_error():
    with pytest.raises(ValueError, match="both classes"):
        auroc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="binary"):
        auroc([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="length"):
        auroc([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="NaN"):
        auroc([0.1, np.nan], [0, 1])

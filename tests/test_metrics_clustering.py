"""Known-answer tests for replibook.metrics.clustering."""
import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from replibook.metrics import clustering as C


def test_permuted_labels_give_acc_and_nmi_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, size=200)
    perm = np.array([3, 0, 4, 1, 2])
    assert C.cluster_acc(y, perm[y]) == 1.0
    assert C.nmi(y, perm[y]) == pytest.approx(1.0)
    # arbitrary integer ids for the clusters work too
    assert C.cluster_acc(y, 100 + 7 * perm[y]) == 1.0


def test_acc_known_answer_small_table():
    y_true = [0, 0, 0, 1, 1, 1]
    y_pred = [1, 1, 0, 0, 0, 0]
    # best map: cluster 1 -> class 0 (2 right), cluster 0 -> class 1 (3 right) = 5/6
    assert C.cluster_acc(y_true, y_pred) == pytest.approx(5 / 6)
    # a single cluster can match only one class
    assert C.cluster_acc(y_true, [0] * 6) == pytest.approx(0.5)


def test_acc_with_more_clusters_than_classes_is_one_to_one():
    y_true = [0, 0, 1, 1]
    y_pred = [0, 1, 2, 3]
    # each class can take only one of its two clusters
    assert C.cluster_acc(y_true, y_pred) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 6, size=300)
    pred = np.where(rng.random(300) < 0.6, y, rng.integers(0, 4, size=300))
    assert C.nmi(y, pred) == pytest.approx(normalized_mutual_info_score(y, pred), abs=1e-10)


def test_nmi_edge_cases_and_torch_inputs():
    assert C.nmi([1, 1, 1], [2, 2, 2]) == 1.0
    assert C.nmi([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert C.cluster_acc(y, y.flip(0)) == pytest.approx(C.cluster_acc(y.numpy(), y.flip(0).numpy()))
    with pytest.raises(ValueError):
        C.cluster_acc([0, 1], [0])
    with pytest.raises(ValueError):
        C.nmi([0.5, 1.0], [0, 1])


def test_independent_labels_score_low():
    rng = np.random.default_rng(3)
    y, pred = rng.integers(0, 10, size=5000), rng.integers(0, 10, size=5000)
    assert C.nmi(y, pred) < 0.01
    assert C.cluster_acc(y, pred) < 0.15


def test_kmeans_recovers_separated_blobs_and_is_deterministic():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, size=(4, 5))
    y = np.repeat(np.arange(4), 50)
    x = centres[y] + rng.normal(0, 0.5, size=(200, 5))
    out = C.kmeans_acc_nmi(torch.tensor(x, dtype=torch.float32), y, seed=1)
    assert out["acc"] == 1.0 and out["nmi"] == pytest.approx(1.0)
    assert out["k"] == 4 and out["labels"].shape == (200,)
    again = C.kmeans_acc_nmi(x, y, seed=1)
    assert np.array_equal(out["labels"], again["labels"])
    # noise features carry no label information
    noise = C.kmeans_acc_nmi(rng.normal(size=(200, 5)), y, seed=0)
    assert noise["acc"] < 0.5 and noise["nmi"] < 0.1

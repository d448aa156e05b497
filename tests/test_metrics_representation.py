"""Known-answer tests of replibook.metrics.representation."""
import math

import numpy as np
import pytest
import torch

from replibook.metrics.representation import (effective_rank, feature_norms, feature_weights, max_min_ratio,
                                              weight_spread)


def test_feature_weights_known_answer():
    u = torch.eye(3)[:, :2]                      # u_1 = e_1, u_2 = e_2
    w1 = torch.diag(torch.tensor([2.0, 3.0, 5.0]))
    w2 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(feature_weights(w1, u), torch.tensor([2.0, 3.0], dtype=torch.float64))
    # W2 W1 e_2 = W2 (0, 3, 0) = 0: the second layer drops feature 2
    assert torch.allclose(feature_weights([w1, w2], u), torch.tensor([2.0, 0.0], dtype=torch.float64))


def test_feature_weights_rotation_invariant_and_checks_shapes():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    w = torch.randn(4, 6, generator=g)
    u = torch.linalg.qr(torch.randn(6, 2, generator=g))[0]
    assert torch.allclose(feature_weights([w, q], u), feature_weights(w, u), atol=1e-6)
    with pytest.raises(ValueError):
        feature_weights(torch.randn(3, 5), u)


def test_weight_spread_extremes_and_order():
    assert weight_spread([1, 1, 1, 1]) == pytest.approx(0.0, abs=1e-12)
    assert weight_spread([0, 0, 5, 0]) == pytest.approx(1.0)
    # two equal non-zero of four: H = log 2 -> 1 - log2/log4 = 0.5
    assert weight_spread([1, 1, 0, 0]) == pytest.approx(0.5)
    assert weight_spread([1, 2, 3]) < weight_spread([1, 4, 9])      # squaring spreads
    assert weight_spread([2, 4, 6]) == pytest.approx(weight_spread([1, 2, 3]))   # scale-free
    with pytest.raises(ValueError):
        weight_spread([1, -1])
    with pytest.raises(ValueError):
        weight_spread([0, 0])


def test_max_min_ratio():
    assert max_min_ratio([1, 4, 2]) == pytest.approx(4.0)
    assert math.isinf(max_min_ratio([0, 1]))


def test_feature_norms():
    f = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    assert torch.allclose(feature_norms(f), torch.tensor([5.0, 0.0, 1.0]))
    assert feature_norms(np.ones((2, 2, 2))).tolist() == pytest.approx([2.0, 2.0])   # 4 ones per sample


def test_effective_rank_known_answers():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 1, generator=g)
    assert effective_rank(a @ torch.randn(1, 8, generator=g)) == pytest.approx(1.0, abs=1e-6)
    # two orthogonal directions with equal spread -> 2
    b = torch.zeros(4, 3)
    b[0, 0], b[1, 0], b[2, 1], b[3, 1] = 1, -1, 1, -1
    assert effective_rank(b) == pytest.approx(2.0)
    assert effective_rank(torch.zeros(5, 3)) == 1.0

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss

from replibook.metrics.classification import accuracy, balanced_accuracy, nll
from replibook.metrics.curves import updates_to_target


def test_accuracy_known_answer():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 5.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert accuracy(logits, y) == 0.75
    assert accuracy(torch.tensor([0, 1, 1, 1]), y) == 1.0


def test_nll_matches_sklearn_log_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=g)
    y = torch.randint(0, 4, (50,), generator=g)
    probs = torch.softmax(logits, -1).numpy()
    assert nll(logits, y) == pytest.approx(log_loss(y.numpy(), probs, labels=range(4)), rel=1e-5)


def test_balanced_accuracy_known_answer():
    y = torch.tensor([0, 0, 0, 1])
    pred = torch.tensor([0, 0, 0, 0])
    assert balanced_accuracy(pred, y, 2) == 0.5


def test_updates_to_target():
    steps, acc = [0, 100, 200, 300], [0.1, 0.5, 0.9, 0.95]
    assert updates_to_target(steps, acc, 0.9) == 200
    assert updates_to_target(steps, acc, 0.99) == math.inf
    assert updates_to_target(steps, acc, 0.99, never=400) == 400
    assert updates_to_target(steps, [3.0, 2.0, 1.0, 0.5], 1.0, higher_is_better=False) == 200
    with pytest.raises(ValueError):
        updates_to_target([0, 1], [0.1], 0.5)

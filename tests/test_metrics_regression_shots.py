"""metrics.regression and metrics.classification shot groups / ECE: known answers and sklearn agreement."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error

from replibook.metrics import classification as cls
from replibook.metrics import regression as reg


def test_mae_mse_match_sklearn_and_gmean_known_answer():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=50), rng.normal(size=50)
    assert reg.mae(torch.tensor(p), t) == pytest.approx(mean_absolute_error(t, p))
    assert reg.mse(p, t) == pytest.approx(mean_squared_error(t, p))
    assert reg.gmean_error([1.0, 4.0], [0.0, 0.0]) == pytest.approx(2.0)
    assert reg.gmean_error([1.0, 1.0], [1.0, 1.0]) == pytest.approx(1e-8)
    with pytest.raises(ValueError):
        reg.mae([1.0], [1.0, 2.0])


def test_shot_region_mae_assigns_regions_by_training_bin_counts():
    edges = [0, 10, 20, 30]
    y_train = [5] * 150 + [15] * 50 + [25] * 5          # many, medium, few
    y = np.array([5.0, 15.0, 25.0, 25.0])
    p = y + np.array([1.0, 2.0, 3.0, 5.0])
    out = reg.shot_region_mae(p, y, y_train, edges)
    assert out == pytest.approx({"all": 2.75, "many": 1.0, "medium": 2.0, "few": 4.0})
    out2 = reg.shot_region_mae(p[:2], y[:2], y_train, edges)
    assert math.isnan(out2["few"])


def test_shot_accuracy_groups_classes_and_averages_per_class():
    counts = np.array([500, 50, 5])
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 0, 0, 0])
    out = cls.shot_accuracy(pred, y, counts)
    assert out["many"] == 1.0 and out["medium"] == 0.5 and out["few"] == 0.0
    assert out["all"] == pytest.approx(0.5)
    logits = torch.nn.functional.one_hot(torch.tensor(pred), 3).float()
    assert cls.shot_accuracy(logits, torch.tensor(y), counts) == out
    assert math.isnan(cls.shot_accuracy(pred, y, np.array([500, 500, 500]))["few"])


def test_ece_zero_when_calibrated_and_known_for_overconfidence():
    # always predicts class 0 with confidence 0.9 but is right half of the time -> ECE 0.4
    logits = torch.log(torch.tensor([[0.9, 0.1]])).repeat(100, 1)
    y = torch.tensor([0, 1] * 50)
    assert cls.expected_calibration_error(logits, y) == pytest.approx(0.4, abs=1e-6)
    y_cal = torch.tensor([0] * 90 + [1] * 10)
    assert cls.expected_calibration_error(logits, y_cal) == pytest.approx(0.0, abs=1e-6)

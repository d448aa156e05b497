"""Unlearning metrics: accuracies per split, attack features, AUC known answers, the MIA."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from replibook.metrics import unlearning as U


class FixedLogits(nn.Module):
    """A 'model' whose logits are a lookup: x holds row indices into a table."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x):
        return self.table[x.long()]


def test_auc_known_answers_and_matches_sklearn():
    from sklearn.metrics import roc_auc_score
    assert U.auc([2, 3, 4], [0, 1]) == 1.0
    assert U.auc([0, 1], [2, 3, 4]) == 0.0
    assert U.auc([1, 1], [1, 1]) == 0.5                      # ties count one half
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(0.5, 1, 300), rng.normal(0, 1, 200).round(1)
    ref = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[pos, neg])
    assert U.auc(pos, neg) == pytest.approx(ref, abs=1e-12)
    with pytest.raises(ValueError):
        U.auc([], [1.0])


def test_bootstrap_ci_brackets_the_auc():
    rng = np.random.default_rng(1)
    pos, neg = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    lo, hi = U.bootstrap_auc_ci(pos, neg, n_boot=300, seed=0)
    a = U.auc(pos, neg)
    assert lo < a < hi and hi - lo < 0.2
    assert U.bootstrap_auc_ci(pos, neg, n_boot=300, seed=0) == (lo, hi)   # deterministic


def test_attack_features():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = U.attack_features(logits, y, "loss")[:, 0]
    np.testing.assert_allclose(loss, F.cross_entropy(logits, y, reduction="none").numpy(), rtol=1e-6)
    sp = U.attack_features(logits, kind="sorted_probs")
    assert sp.shape == (6, 4) and np.all(np.diff(sp, axis=1) <= 0)
    np.testing.assert_allclose(sp.sum(1), 1.0, rtol=1e-6)
    ent = U.attack_features(torch.zeros(2, 4), kind="entropy")[:, 0]
    np.testing.assert_allclose(ent, np.log(4), rtol=1e-6)   # uniform softmax: entropy log K
    assert U.attack_features(logits, y).shape == (6, 2)
    np.testing.assert_allclose(U.attack_features(logits, kind="confidence")[:, 0], sp[:, 0])
    with pytest.raises(ValueError):
        U.attack_features(logits, kind="loss")              # no labels
    with pytest.raises(ValueError):
        U.attack_features(logits, y, kind="gradient")


def test_mia_separable_losses_give_auc_one():
    rng = np.random.default_rng(0)
    low = lambda n: rng.uniform(0.0, 0.1, (n, 1))            # members: tiny loss
    high = lambda n: rng.uniform(1.0, 3.0, (n, 1))           # non-members: large loss
    out = U.membership_inference(low(200), high(200), target=low(100), reference=high(100))
    assert out["auc"] == 1.0 and out["train_auc"] == 1.0
    assert out["accuracy"] == 1.0 and out["member_rate"] == 1.0
    # forgotten samples that now look like non-members: AUC 0.5 against non-members
    forgot = U.membership_inference(low(200), high(200), target=high(400), reference=high(400))
    assert abs(forgot["auc"] - 0.5) < 0.06 and forgot["member_rate"] == 0.0


def test_mia_identical_distributions_give_about_half():
    rng = np.random.default_rng(0)
    draw = lambda n: rng.normal(0, 1, (n, 2))
    out = U.membership_inference(draw(1000), draw(1000), target=draw(1000), reference=draw(1000),
                                 n_boot=200)
    assert abs(out["auc"] - 0.5) < 0.05 and abs(out["train_auc"] - 0.5) < 0.05
    assert out["auc_lo"] < 0.5 < out["auc_hi"]


def test_accuracies_and_mia_on_a_model():
    # 4 samples: indices 0..3 into a logit table; class = argmax
    table = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    model = FixedLogits(table)
    x = torch.arange(4)
    retain = (x[:2], torch.tensor([0, 1]))                   # both right
    forget = (x[2:3], torch.tensor([1]))                     # wrong
    test = (x, torch.tensor([0, 1, 2, 2]))                   # 3 of 4 right; class 2: 1 of 2
    acc = U.unlearning_accuracies(model, retain, forget, test, forget_classes=[2])
    assert acc == {"acc_r": 1.0, "acc_f": 0.0, "acc_t": 0.75,
                   "acc_t_remaining": 1.0, "acc_t_forgotten": 0.5}
    assert np.isnan(U.accuracy_on(model, x[:0], x[:0]))
    # MIA through a model: members are confident and right, non-members are not
    n = 200
    table = torch.cat([torch.eye(3)[torch.arange(n) % 3] * 8.0, torch.zeros(n, 3)])
    model = FixedLogits(table)
    y = torch.arange(2 * n) % 3
    idx = torch.arange(2 * n)
    mem, non = (idx[:n // 2], y[:n // 2]), (idx[n:n + n // 2], y[n:n + n // 2])
    tgt, ref = (idx[n // 2:n], y[n // 2:n]), (idx[n + n // 2:], y[n + n // 2:])
    out = U.mia(model, mem, non, tgt, ref, kind="loss_entropy")
    assert out["auc"] == 1.0

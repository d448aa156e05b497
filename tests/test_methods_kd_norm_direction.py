"""KD with the ND loss: class means and directions, the ND loss (known values, the official
per-sample loop, its minimiser), the arms' objectives, the KD warm-up and the measurements."""
import math

import numpy as np
import pytest
import torch

from replibook.methods import kd_norm_direction as K


def reference_nd(s, t, y, means):
    """The official DirectNormLoss written as its per-sample loop (CIFAR/utils.py)."""
    total = 0.0
    for s_i, t_i, k in zip(s, t, y):
        e = means[int(k)] / means[int(k)].norm()
        total = total + 1 - torch.dot(s_i, e) / max(s_i.norm(), t_i.norm())
    return total / len(y)


# --------------------------------------------------------------------------- class means

def test_class_means_and_directions_known_values():
    f = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0], [1.0, 1.0]])
    y = torch.tensor([0, 0, 1, 1, 2])
    means = K.class_means(f, y, 3)
    torch.testing.assert_close(means, torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]]))
    e = K.class_directions(means)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(e[2], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    with pytest.raises(ValueError, match="no sample"):
        K.class_means(f, y, 4)                                   # class 3 is empty


# --------------------------------------------------------------------------- ND loss

def test_nd_loss_matches_the_official_per_sample_loop():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(9, 5, generator=g), torch.randn(9, 5, generator=g) * 2
    y = torch.arange(9) % 3
    means = torch.randn(3, 5, generator=g)
    ours = K.nd_loss(s, t, y, K.class_directions(means))
    assert float(ours) == pytest.approx(float(reference_nd(s, t, y, means)), rel=1e-6)


def test_nd_loss_known_values_norm_and_direction():
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0])
    t = torch.tensor([[0.0, 4.0]])                                # teacher norm 4
    # aligned with e_0 but half the teacher's norm: 1 - 2/4
    assert float(K.nd_loss(torch.tensor([[2.0, 0.0]]), t, y, e)) == pytest.approx(0.5)
    # aligned and at the teacher's norm or beyond: 0 (the ratio becomes the cosine)
    assert float(K.nd_loss(torch.tensor([[4.0, 0.0]]), t, y, e)) == pytest.approx(0.0, abs=1e-7)
    assert float(K.nd_loss(torch.tensor([[9.0, 0.0]]), t, y, e)) == pytest.approx(0.0, abs=1e-7)
    # orthogonal: 1; opposite at the teacher's norm: 2
    assert float(K.nd_loss(torch.tensor([[0.0, 3.0]]), t, y, e)) == pytest.approx(1.0)
    assert float(K.nd_loss(torch.tensor([[-4.0, 0.0]]), t, y, e)) == pytest.approx(2.0)


def test_nd_gradient_grows_the_norm_along_the_class_direction():
    e = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[5.0, 5.0]])                                # |t| ~ 7.07
    s = torch.tensor([[1.0, 0.0]], requires_grad=True)            # aligned, small norm
    K.nd_loss(s, t, torch.tensor([0]), e).backward()
    assert s.grad[0, 0] < 0 and s.grad[0, 1] == 0                 # descent increases s along e
    # whereas the pure cosine term is already at its minimum there: no push on the norm
    s2 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    K.direction_loss(s2, torch.tensor([0]), e).backward()
    assert s2.grad.abs().max() < 1e-6
    # descent on ND drives a random feature to the teacher's norm along e
    s3 = torch.tensor([[0.3, -0.8]], requires_grad=True)
    opt = torch.optim.SGD([s3], lr=2.0)
    for _ in range(400):
        opt.zero_grad()
        K.nd_loss(s3, t, torch.tensor([0]), e).backward()
        opt.step()
    assert float(K.nd_loss(s3.detach(), t, torch.tensor([0]), e)) < 0.01
    assert s3.detach()[0, 0] > 0.95 * float(t.norm()) and abs(float(s3.detach()[0, 1])) < 0.2 * float(t.norm())


def test_nd_loss_rejects_mismatched_widths():
    with pytest.raises(ValueError, match="differ in shape"):
        K.nd_loss(torch.randn(2, 3), torch.randn(2, 4), torch.tensor([0, 1]), torch.eye(4)[:2])


def test_l2_feature_loss_is_the_relative_squared_distance():
    s, t = torch.tensor([[1.0, 1.0], [0.0, 0.0]]), torch.tensor([[1.0, 3.0], [3.0, 4.0]])
    # |s-t|^2 = 4 and 25, mean 14.5; divided by the given mean |t|^2 = 10
    assert float(K.l2_feature_loss(s, t, 10.0)) == pytest.approx(1.45)


# --------------------------------------------------------------------------- objectives

class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.f = torch.nn.Linear(4, 3)
        self.head = torch.nn.Linear(3, 2)

    def forward(self, x, return_features=False):
        h = self.f(x)
        return (self.head(h), h) if return_features else self.head(h)


def test_kd_warmup_schedule():
    assert K.kd_warmup_factor(0, 20) == 0.0
    assert K.kd_warmup_factor(10, 20) == 0.5
    assert K.kd_warmup_factor(25, 20) == 1.0
    assert K.kd_warmup_factor(0, 0) == 1.0


def test_arms_add_the_right_terms_and_kd_is_off_in_epoch_zero():
    torch.manual_seed(0)
    model, x, y = Toy(), torch.randn(6, 4), torch.tensor([0, 1, 0, 1, 0, 1])
    t_logits, t_feats = torch.randn(6, 2) * 3, torch.randn(6, 3)
    e = K.class_directions(torch.randn(2, 3))
    with torch.no_grad():
        logits, s = model(x, return_features=True)
    ce = torch.nn.functional.cross_entropy(logits, y)
    kd = K.kd_kl(logits, t_logits, T=4.0)
    common = dict(directions=e, T=4.0, beta=2.0, warmup_epochs=2, steps_per_epoch=1, t_sq_norm=3.0)
    expected = {"CE": ce, "KD": ce + kd, "KD+L2": ce + kd + 2 * K.l2_feature_loss(s, t_feats, 3.0),
                "KD+cos": ce + kd + 2 * K.direction_loss(s, y, e),
                "KD+ND": ce + kd + 2 * K.nd_loss(s, t_feats, y, e)}
    for arm in K.ARMS:
        fn = K.distill_loss_fn(arm, **common)
        first = fn(model, x, y, t_logits, t_feats).detach()     # epoch 0: KD weight 0
        second = fn(model, x, y, t_logits, t_feats).detach()    # epoch 1: 0.5
        third = fn(model, x, y, t_logits, t_feats).detach()     # epoch 2: 1
        kd_part = 0.0 if arm == "CE" else float(kd)
        assert float(third) == pytest.approx(float(expected[arm]), rel=1e-5), arm
        assert float(first) == pytest.approx(float(expected[arm]) - kd_part, rel=1e-5), arm
        assert float(second) == pytest.approx(float(expected[arm]) - 0.5 * kd_part, rel=1e-5), arm
    with pytest.raises(ValueError, match="unknown arm"):
        K.distill_loss_fn("FitNet")
    with pytest.raises(ValueError, match="directions"):
        K.distill_loss_fn("KD+ND")


# --------------------------------------------------------------------------- measurements

def test_norms_ratio_cosine_and_bootstrap():
    s = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    t = torch.tensor([[6.0, 8.0], [0.0, 2.0]])
    torch.testing.assert_close(K.feature_norms(s), torch.tensor([5.0, 1.0]))
    assert K.norm_ratio(s, t) == pytest.approx(0.5)
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert K.cos_to_class_direction(s, torch.tensor([1, 1]), e) == pytest.approx((0.8 + 1.0) / 2)
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, 500)
    a = 0.8 * b + rng.normal(0, 0.05, 500)
    ratio, lo, hi = K.bootstrap_ratio_ci(a, b, n_boot=500)
    assert lo < ratio < hi and hi < 0.85 and lo > 0.75
    chunks = K.chunk_ratios(a, b, 5)
    assert len(chunks) == 5 and all(0.75 < c < 0.85 for c in chunks)
    with pytest.raises(ValueError):
        K.chunk_ratios(a, b, 0)


def test_train_student_learns_and_nd_raises_the_norm_ratio():
    g = torch.Generator().manual_seed(0)
    n, d = 400, 16
    y = torch.arange(n) % 4
    centers = torch.randn(4, 10, generator=g) * 2
    x = centers[y] + torch.randn(n, 10, generator=g)
    # a "teacher" with large, class-aligned features
    t_feats = torch.relu(torch.randn(4, d, generator=g))[y] * 3 + 0.3 * torch.rand(n, d, generator=g)
    t_logits = torch.nn.functional.one_hot(y, 4).float() * 5
    tr, te = slice(0, 300), slice(300, None)
    dirs = K.class_directions(K.class_means(t_feats[tr], y[tr], 4))
    cfg = dict(student_hidden=[32, d], epochs=25, batch_size=50, lr=1e-2, T=4.0, beta=2.0, kd_warmup_epochs=1)
    runs = {arm: K.train_student(arm, (x[tr], y[tr]), (x[te], y[te]),
                                 {"logits": t_logits[tr], "features": t_feats[tr]},
                                 {"logits": t_logits[te], "features": t_feats[te]}, dirs, cfg, seed=0)
            for arm in ("KD", "KD+ND")}
    for run in runs.values():
        assert run.metrics["acc"] > 0.8 and run.test_features.shape == (100, d)
    assert runs["KD+ND"].metrics["norm_ratio"] > runs["KD"].metrics["norm_ratio"] + 0.2
    assert runs["KD+ND"].metrics["cos_dir"] > runs["KD"].metrics["cos_dir"]
    with pytest.raises(ValueError, match="penultimate width"):
        K.train_student("KD", (x[tr], y[tr]), (x[te], y[te]), {"logits": t_logits[tr], "features": t_feats[tr]},
                        {"logits": t_logits[te], "features": t_feats[te]}, dirs, {**cfg, "student_hidden": [8]}, 0)

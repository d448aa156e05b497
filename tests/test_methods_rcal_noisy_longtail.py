"""Tests of the RCAL chapter's paper-specific code (replibook.methods.rcal_noisy_longtail)."""
import numpy as np
import pytest
import torch
from sklearn.covariance import LedoitWolf

from replibook.methods import rcal_noisy_longtail as R


# ---------------------------------------------------------------------------- noise
def test_prior_noise_flips_exact_count_to_other_classes():
    labels = np.repeat(np.arange(4), [400, 200, 100, 50])
    noisy, flipped = R.prior_noise(labels, 0.3, 4, seed=1)
    assert len(flipped) == round(0.3 * len(labels))
    assert (noisy[flipped] != labels[flipped]).all()
    untouched = np.setdiff1d(np.arange(len(labels)), flipped)
    assert (noisy[untouched] == labels[untouched]).all()
    again, _ = R.prior_noise(labels, 0.3, 4, seed=1)
    assert (again == noisy).all()


def test_prior_noise_targets_follow_class_sizes():
    # flips out of class 0 go to 1, 2, 3 in proportion to their sizes 200 : 100 : 50
    labels = np.repeat(np.arange(4), [3000, 200, 100, 50])
    noisy, flipped = R.prior_noise(labels, 0.5, 4, seed=0)
    from0 = flipped[labels[flipped] == 0]
    share = np.bincount(noisy[from0], minlength=4)[1:] / len(from0)
    assert np.allclose(share, np.array([200, 100, 50]) / 350, atol=0.04)


def test_make_noisy_longtail_prior_keeps_profile_and_indexes():
    y = np.repeat(np.arange(5), 100)
    a = R.make_noisy_longtail(y, imbalance=10, noise=0.2, kind="prior", seed=3)
    b = R.make_noisy_longtail(y, imbalance=10, noise=0.4, kind="prior", seed=3)
    assert (a.kept == b.kept).all()                       # noise levels share the subset
    counts = np.bincount(y[a.kept], minlength=5)
    assert counts[0] == 100 and counts[-1] == 10 and (np.diff(counts) <= 0).all()
    assert (y[a.kept][a.noisy] != a.labels[a.noisy]).all()
    assert (y[a.kept][a.clean] == a.labels[a.clean]).all()
    assert len(a.noisy) == round(0.2 * len(a.kept))
    with pytest.raises(ValueError):
        R.make_noisy_longtail(y, 10, 0.2, kind="uniform")


# ---------------------------------------------------------------------------- augment
def test_digit_augment_shift_only_moves_pixels():
    x = torch.zeros(64, 1, 8, 8)
    x[:, 0, 4, 4] = 1.0
    out = R.digit_augment(x, torch.Generator().manual_seed(0), max_shift=2, noise=0.0, erase=0)
    assert out.shape == x.shape
    assert torch.allclose(out.sum((1, 2, 3)), torch.ones(64))      # the pixel stays inside the image
    pos = out[:, 0].flatten(1).argmax(1)
    r, c = pos // 8, pos % 8
    assert (r - 4).abs().max() <= 2 and (c - 4).abs().max() <= 2
    assert ((r != 4) | (c != 4)).any()                               # some sample did move


def test_digit_augment_erase_and_range():
    x = torch.ones(16, 1, 8, 8)
    out = R.digit_augment(x, torch.Generator().manual_seed(1), max_shift=0, noise=0.0, erase=3)
    assert torch.equal((out == 0).sum((1, 2, 3)), torch.full((16,), 9))
    noisy = R.digit_augment(torch.rand(16, 1, 8, 8), torch.Generator().manual_seed(2))
    assert noisy.min() >= 0 and noisy.max() <= 1


# ---------------------------------------------------------------------------- LOF and Gaussians
def _clusters(seed=0, n=60, d=4):
    g = np.random.default_rng(seed)
    centres = np.array([[0.0] * d, [10.0] * d])
    z = np.concatenate([centres[c] + g.normal(size=(n, d)) for c in (0, 1)])
    labels = np.repeat([0, 1], n)
    return z, labels


def test_lof_keep_drops_samples_in_the_wrong_cluster():
    z, labels = _clusters()
    wrong = np.array([0, 1, 2, 60, 61])                 # relabel 3 of class 0 as 1 and 2 of class 1 as 0
    labels = labels.copy()
    labels[wrong] = 1 - labels[wrong]
    keep = R.lof_keep(z, labels, 2, n_neighbors=10)
    assert not keep[wrong].any()
    assert keep.mean() > 0.85
    q = R.lof_quality(keep, wrong)
    assert q["recall"] == 1.0 and 0 < q["precision"] <= 1
    assert q["removed"] == pytest.approx((~keep).mean())


def test_lof_quality_by_hand():
    keep = np.array([True, False, False, True, True])
    q = R.lof_quality(keep, np.array([1, 3]))
    assert q["precision"] == 0.5 and q["recall"] == 0.5 and q["removed"] == 0.4
    assert np.isnan(R.lof_quality(np.ones(3, bool), np.array([0]))["precision"])


def test_class_stats_match_sklearn_ledoit_wolf():
    z, labels = _clusters(1)
    keep = np.ones(len(z), bool)
    keep[::7] = False
    means, covs, counts = R.class_stats(z, labels, 2, keep)
    for c in (0, 1):
        zc = z[keep & (labels == c)]
        assert counts[c] == len(zc)
        assert np.allclose(means[c].numpy(), zc.mean(0))
        assert np.allclose(covs[c].numpy(), LedoitWolf().fit(zc).covariance_, atol=1e-8)


def test_tail_mask_takes_smallest_classes():
    assert R.tail_mask([50, 10, 40, 5], 0.5).tolist() == [False, True, False, True]


def test_calibrate_borrows_from_nearest_heads():
    means = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 3.0], [1.0, 1.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2, dtype=torch.float64) * s for s in (1.0, 2.0, 3.0, 0.1)])
    tail = np.array([False, False, False, True])
    m, s, used = R.calibrate(means, covs, tail, q=2, alpha=0.5)
    assert used == {3: [0, 2]}                          # (0,0) and (0,3) are nearer than (10,0)
    assert torch.allclose(m[3], (means[3] + means[0] + means[2]) / 3)
    assert torch.allclose(s[3], (covs[3] + covs[0] + covs[2]) / 3 + 0.5 * torch.eye(2, dtype=torch.float64))
    assert torch.equal(m[:3], means[:3]) and torch.equal(s[:3], covs[:3])
    with pytest.raises(ValueError):
        R.calibrate(means, covs, np.ones(4, bool))


def test_sample_balanced_fills_to_target_with_the_right_moments():
    means = torch.tensor([[0.0, 0.0], [5.0, -2.0]], dtype=torch.float64)
    cov1 = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    covs = torch.stack([torch.eye(2, dtype=torch.float64), cov1])
    z, y = R.sample_balanced(means, covs, [20000, 0], seed=0)
    assert (y == 1).all() and len(y) == 20000
    assert np.allclose(z.mean(0).numpy(), [5.0, -2.0], atol=0.05)
    assert np.allclose(np.cov(z.numpy().T), cov1.numpy(), atol=0.06)
    z2, y2 = R.sample_balanced(means, covs, [3, 1], target=5, seed=0)
    assert np.bincount(y2.numpy()).tolist() == [2, 4]


# ---------------------------------------------------------------------------- training
def _toy(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, 1, 4, 4, generator=g) * 0.5 + y.view(-1, 1, 1, 1).float() * 1.5
    return x, y


def test_rcal_fit_regulariser_keeps_features_close_and_trains_a_frozen_encoder():
    torch.manual_seed(0)
    x, y = _toy()
    enc0 = R.make_encoder(16, 16, 8).eval()
    for p in enc0.parameters():
        p.requires_grad_(False)
    z0 = R.encode(enc0, x)
    dist = {}
    for beta in (0.0, 10.0):
        m = R.rcal_fit(enc0, x, y, 2, beta=beta, steps=60, batch_size=64, lr=1e-2, seed=0)
        dist[beta] = float((R.encode(m.encoder, x) - z0).pow(2).sum(1).mean())
    assert dist[0.0] > 0                                # the copy is trained although enc0 is frozen
    assert dist[10.0] < dist[0.0]
    assert torch.equal(R.encode(enc0, x), z0)           # the reference encoder is untouched


def test_rcal_fit_uses_sampled_representations():
    # with no real sample of class 1 in the batch stream, only the sampled z teach the head class 1
    x, y = _toy()
    enc0 = R.make_encoder(16, 16, 8).eval()
    z1 = R.encode(enc0, x[y == 1])
    x0, y0 = x[y == 0], y[y == 0]
    with_s = R.rcal_fit(enc0, x0, y0, 2, z_sampled=z1, y_sampled=torch.ones(len(z1), dtype=torch.long),
                        beta=10.0, steps=80, batch_size=50, lr=1e-2, seed=0)
    without = R.rcal_fit(enc0, x0, y0, 2, beta=10.0, steps=80, batch_size=50, lr=1e-2, seed=0)
    pred_with = with_s(x[y == 1]).argmax(1).float().mean()
    pred_without = without(x[y == 1]).argmax(1).float().mean()
    assert pred_with > 0.5 > pred_without


def test_coteaching_learns_through_label_noise():
    x, y = _toy(400)
    y_noisy = y.clone()
    flip = torch.arange(0, 400, 5)                      # 20% flipped
    y_noisy[flip] = 1 - y_noisy[flip]
    res = R.coteaching_fit(x, y_noisy, 2, forget_rate=0.2, hidden=16, dim=8, steps=150, batch_size=64,
                           lr=1e-2, seed=0)
    acc = float((res.model(x).argmax(1) == y).float().mean())
    assert acc > 0.9
    assert res.forget_rate == 0.2 and res.peer is not res.model


def test_la_probe_shifts_predictions_to_the_rare_class():
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.zeros(900), torch.ones(100)]).long()
    z = torch.randn(1000, 2, generator=g) + y.view(-1, 1).float() * 1.0
    counts = np.bincount(y.numpy())
    plain = R.probe_fit(z, y, 2, steps=300, batch_size=200, lr=5e-2, seed=0)
    la = R.probe_fit(z, y, 2, class_counts=counts, steps=300, batch_size=200, lr=5e-2, seed=0)
    assert la(z).argmax(1).float().mean() > plain(z).argmax(1).float().mean() + 0.1


def test_run_seed_smoke_runs_every_arm():
    from replibook.data import bundled
    ds = bundled.digits(size=8, split=0.7, seed=0)
    cfg = dict(imbalance=5, noises=[0.2], noise_kind="prior", n_max=60, encoder="mlp", hidden=32, dim=16,
               proj_dim=8, ssl_steps=3, ssl_batch=64, ssl_lr=1e-3, ssl_tau=0.2, ssl_augment="digits", steps=5,
               batch_size=32, lr=1e-3, weight_decay=0.0, probe_lr=1e-2, lof_contamination="noise",
               lof_neighbors=10, q=2, alpha=0.0, beta=1.0, tail_fraction=0.5, many=40, few=20, arms=R.ARMS)
    run = R.run_seed(ds.train.x, ds.train.y, ds.test.x, ds.test.y, cfg, seed=0)
    assert set(run.metrics) == {(m, "noise 0.2") for m in R.ARMS}
    for vals in run.metrics.values():
        assert 0 <= vals["acc"] <= 1
    assert {"lof_precision", "lof_recall", "lof_removed"} <= set(run.metrics[("RCAL", "noise 0.2")])
    assert run.counts[0] == 60 and run.counts[-1] == 12
    assert run.stats["noise 0.2"]["cal_means"].shape == (10, 16)

"""Tests of `replibook.methods.eeg_beta_vae_scan` (ERP baseline, participant averaging, SCAN)."""
import numpy as np
import pytest
import torch
from torch import nn

from replibook.losses.vae import kl_normal
from replibook.metrics.anomaly import auroc
from replibook.models.vae import AE, VAE
from replibook.methods import eeg_beta_vae_scan as S


def test_window_features_known_answer_and_names():
    t = np.arange(0, 1000, 10.0)                        # 100 samples, 10 ms apart
    x = np.zeros((2, 3, 100))
    x[0, 1, (t >= 400) & (t <= 800)] = 5.0              # a box exactly on the LPP window
    x[1] = 1.0
    f = S.window_features(torch.tensor(x), t)
    names = S.window_feature_names(["a", "b", "c"])
    assert f.shape == (2, 9) and len(names) == 9
    assert f[0, names.index("LPP b")] == pytest.approx(5.0)
    assert f[0, names.index("LPP a")] == 0 and f[0, names.index("P1 b")] == 0
    assert np.allclose(f[1], 1.0)
    # P300 (300-500) overlaps the box on 400-500 only: 11 of 21 samples
    assert f[0, names.index("P300 b")] == pytest.approx(5.0 * 11 / 21)
    with pytest.raises(ValueError, match="holds no sample"):
        S.window_features(x, t, {"late": (2000.0, 3000.0)})


def test_split_participants_is_a_partition():
    tr, va, te = S.split_participants(300, seed=0)
    assert (len(tr), len(va), len(te)) == (180, 60, 60)
    assert np.array_equal(np.sort(np.concatenate([tr, va, te])), np.arange(300))
    again = S.split_participants(300, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))
    assert not np.array_equal(tr, S.split_participants(300, seed=1)[0])
    with pytest.raises(ValueError):
        S.split_participants(10, 0, (0.5, 0.6))


def test_draw_trials_and_participant_average():
    rows = np.arange(12).reshape(3, 4)                  # participant p owns rows 4p..4p+3
    pick = S.draw_trials(rows, 2, np.random.default_rng(0))
    assert pick.shape == (3, 2)
    assert all(len(set(r)) == 2 and set(r) <= set(rows[i]) for i, r in enumerate(pick))
    feats = np.arange(12, dtype=float)[:, None] * np.array([[1.0, -1.0]])
    avg = S.participant_average(torch.tensor(feats), rows)
    assert np.allclose(avg, [[1.5, -1.5], [5.5, -5.5], [9.5, -9.5]])
    # every draw of k = T trials gives the full average
    assert np.allclose(S.participant_average(feats, S.draw_trials(rows, 4, np.random.default_rng(1))), avg)
    with pytest.raises(ValueError):
        S.draw_trials(rows, 5, np.random.default_rng(0))


def test_channel_standardisation():
    x = torch.randn(50, 3, 20) * torch.tensor([1.0, 5.0, 0.1])[None, :, None] + 3.0
    stats = S.channel_stats(x)
    z = S.standardize(x, stats)
    assert torch.allclose(z.mean(dim=(0, 2)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std(dim=(0, 2)), torch.ones(3), atol=1e-4)


def test_autoencoders_train_and_encode():
    torch.manual_seed(0)
    t = torch.linspace(0, 1, 32)
    amp = torch.randn(256, 1, 1)
    x = amp * torch.sin(2 * np.pi * 2 * t).expand(256, 2, 32) + 0.05 * torch.randn(256, 2, 32)
    vae = S.train_autoencoder(x, beta=1.0, latent_dim=2, steps=150, batch_size=32, lr=3e-3,
                              widths=(8, 8), fc=16, seed=0, progress=False)
    ae = S.train_autoencoder(x, beta=0.0, latent_dim=2, steps=150, batch_size=32, lr=3e-3,
                             widths=(8, 8), fc=16, seed=0, progress=False)
    assert isinstance(vae, VAE) and isinstance(ae, AE)
    mu, logvar = S.encode(vae, x)
    assert mu.shape == (256, 2) and logvar.shape == (256, 2)
    code, none = S.encode(ae, x)
    assert code.shape == (256, 2) and none is None
    for model in (vae, ae):
        rec = S.reconstruct(model, x)
        assert rec.shape == x.shape
        # the reconstruction follows the per-trial amplitude (what the latent must carry)
        assert S.trial_correlation(rec, x).mean() > 0.8
    # an untrained model does not
    fresh = S.build_autoencoder(1.0, 2, 32, 2, widths=(8, 8), fc=16)
    assert S.trial_correlation(S.reconstruct(fresh, x), x).mean() < 0.5


def test_trial_correlation_matches_numpy():
    a, b = torch.randn(5, 2, 7), torch.randn(5, 2, 7)
    r = S.trial_correlation(a, 3 * a + 1)
    assert torch.allclose(r, torch.ones(5, dtype=r.dtype))
    ref = [np.corrcoef(a[i].flatten(), b[i].flatten())[0, 1] for i in range(5)]
    assert np.allclose(S.trial_correlation(a, b).numpy(), ref)


def test_pca_recovers_a_low_rank_signal():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(24, 3, generator=g))[0]          # orthonormal (24, 3)
    codes = torch.randn(200, 3, generator=g) * torch.tensor([3.0, 2.0, 1.0])
    x = (codes @ basis.T + 1.5).reshape(200, 4, 6)
    pca = S.pca_fit(x, 3)
    comps = pca[1]
    assert torch.allclose(comps.T @ comps, torch.eye(3), atol=1e-5)
    # components come by decreasing variance: the first is the direction with sd 3
    assert abs(float(comps[:, 0] @ basis[:, 0])) > 0.99
    proj = S.pca_transform(x, pca)
    recon = proj @ comps.T + pca[0]
    assert torch.allclose(recon, x.flatten(1), atol=1e-4)


def test_symbol_vectors():
    labels = np.array([[0, 1], [1, 0], [1, 1]])
    full = S.symbol_vectors(labels)
    assert np.array_equal(full, [[1, 0, 0, 1], [0, 1, 1, 0], [0, 1, 0, 1]])
    part = S.symbol_vectors(np.repeat(labels, 200, 0), keep_prob=0.5, rng=np.random.default_rng(0))
    assert (part.sum(1) >= 1).all() and (part.sum(1) <= 2).all()
    assert (part[:, :2].sum(1) <= 1).all()                 # one value per label at most
    assert 0.3 < (part.sum(1) == 1).mean() < 0.8              # partial descriptions occur
    assert S.symbol_names(["depression", "old"]) == ["depression=0", "depression=1", "old=0", "old=1"]


def test_scan_loss_uses_the_visual_posterior_first():
    torch.manual_seed(0)
    scan = S.SCAN(4, 3)
    y = torch.eye(4)[:2]
    mu_x, logvar_x = torch.randn(2, 3), torch.randn(2, 3) * 0.5
    _, parts = S.scan_loss(scan, y, mu_x, logvar_x, beta_y=1.0, lam=10.0)
    mu_y, logvar_y = scan.encode(y)
    forward = kl_normal(mu_x, logvar_x, mu_y, logvar_y).mean()
    reverse = kl_normal(mu_y, logvar_y, mu_x, logvar_x).mean()
    assert parts["kl_x_y"].item() == pytest.approx(forward.item(), rel=1e-6)
    assert abs(forward.item() - reverse.item()) > 1e-3      # the two directions differ here
    assert parts["kl_prior"].item() == pytest.approx(kl_normal(mu_y, logvar_y).mean().item(), rel=1e-6)


def test_scan_finds_the_latent_a_label_determines():
    # latent 0 is set by the label (+-2, sharp posterior); latents 1-2 vary independently of it
    rng = np.random.default_rng(0)
    n = 2000
    lab = rng.integers(0, 2, (n, 1))
    mu_x = np.stack([np.where(lab[:, 0] == 1, 2.0, -2.0) + 0.1 * rng.standard_normal(n),
                     rng.standard_normal(n), rng.standard_normal(n)], 1)
    logvar_x = np.full((n, 3), np.log(0.05 ** 2))
    scan = S.train_scan(None, torch.tensor(mu_x, dtype=torch.float32),
                        torch.tensor(logvar_x, dtype=torch.float32), labels=lab, steps=400,
                        batch_size=64, lr=3e-3, seed=0)
    mu_y, sigma_y = S.scan_relevance(scan)
    assert sigma_y.shape == (2, 3)
    for sym in (0, 1):
        assert S.relevant_dims(sigma_y[sym]) == [0]
        assert sigma_y[sym, 0] < 0.3 and (sigma_y[sym, 1:] > 0.7).all()   # broad where irrelevant
    assert mu_y[1, 0] > 1.5 and mu_y[0, 0] < -1.5


def test_window_change_reads_a_decoded_sweep():
    t = np.arange(-100, 900, 10.0)

    class Linear(nn.Module):                           # decode(z) = (1 + z_0) * box on the LPP window
        def decode(self, z):
            box = torch.tensor(((t >= 400) & (t <= 800)).astype(np.float32))
            return (1 + z[:, :1, None]) * box.expand(len(z), 2, len(t))

    stats = (torch.zeros(1, 2, 1), torch.full((1, 2, 1), 2.0))           # undo a std of 2
    change, amps = S.window_change(Linear(), torch.zeros(3), 0, [-0.5, 0.0, 0.5], stats, t, channels=[1])
    assert np.allclose(amps, [1.0, 2.0, 3.0])
    assert change == pytest.approx(1.0)                 # (3 - 1) / 2
    still, _ = S.window_change(Linear(), torch.zeros(3), 2, [-1.0, 1.0], stats, t, channels=[1])
    assert still == pytest.approx(0.0)


def test_bootstrap_auroc_diff():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    good, bad = y + rng.normal(0, 0.7, 80), rng.normal(0, 1, 80)
    out = S.bootstrap_auroc_diff(good, bad, y, n_boot=300, seed=0)
    assert out["diff"] == pytest.approx(auroc(good, y) - auroc(bad, y))
    assert out["lo"] < out["diff"] < out["hi"] and out["se"] > 0
    assert out["lo"] > 0                                # a clearly better score
    same = S.bootstrap_auroc_diff(good, good, y, n_boot=50)
    assert same["diff"] == 0 and same["se"] == 0


def test_bootstrap_with_a_single_class_is_nan():
    out = S.bootstrap_auroc_diff(np.arange(5.0), np.arange(5.0), np.ones(5))
    assert np.isnan(out["diff"]) and np.isnan(out["se"])


def test_prepare_cohort_and_probe_on_the_clean_erp():
    c = S.prepare_cohort(80, seed=0, size=32, trials=4)
    assert len(c.train) == 48 and len(c.heldout) == 32
    assert not set(c.train) & set(c.heldout)
    tr = torch.as_tensor(c.train_trials)
    assert torch.allclose(c.x[tr].mean(dim=(0, 2)), torch.zeros(6), atol=1e-4)
    assert set(c.labels) == {"depression", "old"} and len(c.labels["old"]) == 80
    # the clean ERP's LPP-window features carry depression well above chance;
    # noise features (permuted across participants) do not
    clean = S.window_features(c.bundle.extra["clean"], c.t_ms)
    res = S.probe_auroc(clean, c, "depression", k=4, draws=1)
    assert res["auroc"] > 0.7 and len(res["scores"]) == 32
    rng = np.random.default_rng(0)
    noise = rng.standard_normal(clean.shape)
    assert S.probe_auroc(noise, c, "depression", k=4, draws=3)["auroc"] < 0.7


def test_probe_draws_reuse_the_first_draws_c():
    c = S.prepare_cohort(60, seed=1, size=32, trials=4)
    f = S.window_features(c.bundle.x, c.t_ms)
    res = S.probe_auroc(f, c, "depression", k=2, draws=3, seed=0)
    assert len(res["per_draw"]) == 3 and res["C"] in (0.01, 0.1, 1.0, 10.0)
    assert res["auroc"] == pytest.approx(np.mean(res["per_draw"]))
    assert len(S.probe_auroc(f, c, "depression", k=4, draws=3)["per_draw"]) == 1   # k = every trial
    fixed = S.probe_auroc(f, c, "depression", k=2, draws=1, seed=0, Cs=(res["C"],))
    assert fixed["per_draw"][0] == pytest.approx(res["per_draw"][0])                # same first draw, same C

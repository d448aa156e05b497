"""Chapter mean-vs-sampled-vae: representations, correlation measures, the analysis, predicates, loader."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from replibook.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, AtLeast, Check, M  # noqa: E402
from replibook.data.procedural import Bundle, dsprites  # noqa: E402
from replibook.errors import DatasetMissing  # noqa: E402
from replibook.losses.vae import elbo_loss  # noqa: E402
from replibook.methods import mean_vs_sampled_vae as V  # noqa: E402
from replibook.metrics.disentanglement import gaussian_tc  # noqa: E402


def test_sampled_representation_moments_and_seed():
    mu = torch.randn(20000, 3)
    logvar = torch.log(torch.tensor([0.01, 1.0, 4.0])).expand(20000, 3)
    a = V.sampled_representation(mu, logvar, seed=1)
    assert torch.equal(a, V.sampled_representation(mu, logvar, seed=1))
    assert not torch.equal(a, V.sampled_representation(mu, logvar, seed=2))
    noise_var = (a - mu).var(0)
    assert torch.allclose(noise_var, torch.tensor([0.01, 1.0, 4.0]), rtol=0.05)


def test_abs_correlation_and_pair_mean():
    rng = np.random.default_rng(0)
    r = rng.normal(size=(500, 4))
    r[:, 1] = -r[:, 0] + 0.01 * rng.normal(size=500)
    r[:, 3] = 5.0                                            # constant column
    c = V.abs_correlation(r)
    ref = np.abs(np.corrcoef(r[:, :3], rowvar=False))
    assert np.allclose(c[:3, :3], ref, atol=1e-10)
    assert np.all(c[3] == 0) and np.all(c[:, 3] == 0)
    m = np.array([[1, .2, .4], [.2, 1, .6], [.4, .6, 1.0]])
    assert V.pair_mean(m) == pytest.approx(0.4)
    assert V.pair_mean(m, np.array([True, False, False])) == pytest.approx(0.3)
    assert np.isnan(V.pair_mean(m, np.zeros(3, bool)))


def test_subset_tc():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 3))
    z[:, 1] += z[:, 0]
    assert V.subset_tc(z) == pytest.approx(gaussian_tc(z))
    assert V.subset_tc(z, np.array([True, False, False])) == 0.0
    assert V.subset_tc(z, np.array([False, False, True])) == 0.0
    assert V.subset_tc(z, np.array([True, True, False])) == pytest.approx(-0.5 * np.log(0.5), abs=0.03)


class _LookupEncoder(nn.Module):
    """A stand-in 'VAE' whose posterior for image i is row i of fixed tables (the index is
    written in pixel [0, 0, 0])."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.register_buffer("mu", mu)
        self.register_buffer("logvar", logvar)
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode(self, x):
        idx = x[:, 0, 0, 0].round().long()
        return self.mu[idx], self.logvar[idx]


def _known_model(n=3000, seed=0):
    """Latents: 0-1 active (encode factors 0 and 1), 2-3 passive whose tiny means are linear
    in the active ones (the paper's Sec. 5 mechanism), 4 active noise-free copy of factor 2."""
    g = torch.Generator().manual_seed(seed)
    fac = torch.randint(0, 8, (n, 3), generator=g)
    a = (fac.float() - 3.5) / 2.3 + 0.1 * torch.randn(n, 3, generator=g)
    mu = torch.zeros(n, 5)
    logvar = torch.zeros(n, 5)
    mu[:, 0], mu[:, 1], mu[:, 4] = a[:, 0], a[:, 1], a[:, 2]
    logvar[:, [0, 1, 4]] = np.log(0.02)
    mu[:, 2] = 0.01 * (a[:, 0] + a[:, 1])
    mu[:, 3] = 0.01 * (a[:, 0] - 0.5 * a[:, 4 - 2])
    logvar[:, 2:4] = 0.01 * torch.randn(n, 2, generator=g)
    x = torch.zeros(n, 1, 4, 4)
    x[:, 0, 0, 0] = torch.arange(n).float()
    bundle = Bundle(x=x, factors=fac, factor_names=["a", "b", "c"], levels=[8, 8, 8])
    return _LookupEncoder(mu, logvar), bundle


def test_analyse_finds_the_passive_variables_and_the_gap():
    model, data = _known_model()
    test, train = data.subset(range(1000)), data.subset(range(1000, 3000))
    a = V.analyse(model, test, train, seed=0, dci_samples=400)
    m = a.metrics
    assert a.taxonomy.labels == ["active", "active", "passive", "passive", "active"]
    assert (m["n_active"], m["n_passive"], m["n_mixed"]) == (3, 2, 0)
    # the mean representation is strongly correlated through the passive variables ...
    assert m["tc_mean_all"] > 2.0 and m["tc_gap_all"] > 2.0
    assert m["corr_mean_passive"] > 0.5 and m["corr_sampled_passive"] < 0.1
    # ... the sampled one is not, and the active variables alone show no gap
    assert m["tc_sampled_all"] < 0.05 and abs(m["tc_gap_active"]) < 0.05
    # removing the passive variables costs no probe accuracy; removing an active one would
    assert m["probe_nonpassive"] == pytest.approx(m["probe_all"], abs=0.02)
    assert m["probe_all"] > 0.5
    for k in ("mig_mean_all", "mig_sampled_active", "dci_mean_all", "dci_sampled_active"):
        assert 0 <= m[k] <= 1
    assert a.absr_mean.shape == (5, 5)
    # MIG on the active latents is high (one latent per factor) in both representations
    assert m["mig_mean_active"] > 0.5 and m["mig_sampled_active"] > 0.5


def test_analyse_without_passive_variables_omits_passive_metrics():
    model, data = _known_model()
    model.logvar[:, 2:4] = np.log(0.02)                       # make them active too
    model.mu[:, 2:4] = torch.randn(len(model.mu), 2)
    a = V.analyse(model, data.subset(range(500)), data.subset(range(500, 1500)), probe=False)
    assert a.metrics["n_passive"] == 0
    assert "corr_mean_passive" not in a.metrics and "probe_all" not in a.metrics


def test_warmup_factor_and_logvar_init():
    assert [V.warmup_factor(t, 4) for t in (1, 2, 3, 4, 5, 100)] == [0.0, 0.0, 0.5, 1.0, 1.0, 1.0]
    assert V.warmup_factor(1, 0) == 1.0
    x = dsprites.make(32, seed=0, size=16).x
    model, _ = V.train_vae(x, "beta-VAE", 4.0, steps=1, batch_size=8, latent_dim=3, widths=(4, 4, 4, 4),
                           fc=8, logvar_init=-4.0, lr=1e-9, seed=0, device="cpu")
    _, logvar = V.encode(model, x)
    assert abs(float(logvar.mean()) + 4.0) < 0.5            # starts near the requested log-variance
    # with warm-up the first updates see the reconstruction term only
    torch.manual_seed(0)
    m = V.build_vae(16, 3, widths=(4, 4, 4, 4), fc=8)
    loss = V.vae_loss("beta-VAE", 100.0, 32, warmup=10)
    torch.manual_seed(5)
    first = loss(m, x)
    torch.manual_seed(5)
    from replibook.losses.vae import reconstruction_nll
    assert torch.allclose(first, reconstruction_nll(m(x).out, x).mean())


def test_c2_margin():
    assert V.c2_margin({"tc_gap_all": 2.0, "tc_gap_active": -0.1}) == pytest.approx(0.4)
    assert V.c2_margin({"tc_gap_all": 0.2, "tc_gap_active": 0.1}) < 0


def test_probe_with_no_features_is_the_majority_rate():
    y_tr = np.array([[0], [0], [1]])
    y_te = np.array([[0], [1], [0], [0]])
    assert V._mean_probe(np.zeros((3, 0)), y_tr, np.zeros((4, 0)), y_te) == pytest.approx(0.75)


def test_losses_and_training():
    x = dsprites.make(64, seed=0, size=16).x
    torch.manual_seed(0)
    model = V.build_vae(16, 4, widths=(8, 8, 8, 8), fc=16)
    torch.manual_seed(1)
    a = V.vae_loss("beta-VAE", 4.0, 64)(model, x)
    torch.manual_seed(1)
    assert torch.allclose(a, elbo_loss(model(x), x, beta=4.0))
    assert torch.isfinite(V.vae_loss("beta-TCVAE", 6.0, 64)(model, x))
    # recon_weight w: w * recon + beta * KL, i.e. the beta-VAE loss at beta / w, times w
    torch.manual_seed(1)
    b = V.vae_loss("beta-VAE", 4.0, 64, recon_weight=4.0)(model, x)
    torch.manual_seed(1)
    assert torch.allclose(b, 4.0 * elbo_loss(model(x), x, beta=1.0))
    torch.manual_seed(2)
    t1 = V.vae_loss("beta-TCVAE", 1.0, 64)(model, x)
    torch.manual_seed(2)
    out = model(x)                                          # TCVAE with all weights 1 = MWS ELBO
    from replibook.losses.vae import reconstruction_nll, tc_decomposition
    p = tc_decomposition(out.z, out.mu, out.logvar, 64)
    assert torch.allclose(t1, reconstruction_nll(out.out, x).mean() + p["mi"] + p["tc"] + p["dim_kl"])
    assert V.reconstruction_nll_of(model, x) > 0
    with pytest.raises(ValueError):
        V.vae_loss("dip-vae", 1.0, 64)
    m1, h = V.train_vae(x, "beta-TCVAE", 6.0, steps=3, batch_size=16, latent_dim=4,
                        widths=(8, 8, 8, 8), fc=16, seed=3, device="cpu")
    m2, _ = V.train_vae(x, "beta-TCVAE", 6.0, steps=3, batch_size=16, latent_dim=4,
                        widths=(8, 8, 8, 8), fc=16, seed=3, device="cpu")
    assert not m1.training
    mu1, lv1 = V.encode(m1, x, batch=10)
    mu2, _ = V.encode(m2, x)
    assert mu1.shape == (64, 4) and lv1.shape == (64, 4) and torch.equal(mu1, mu2)


def _resolver(table):
    def resolve(ref):
        if ref.key() not in table:
            raise KeyError(ref.key())
        return np.asarray(table[ref.key()], dtype=float)
    return resolve


def test_given_and_where_applicable():
    part = AtLeast(M("margin", "m", "b4"), 0.0)
    cond = [Check(M("n_passive", "m", "b4"), tol=1, below=False)]
    given = V.Given(part, cond, why="needs passive variables")
    ok = {"margin/m/b4": [1.0, 1.1, 0.9], "n_passive/m/b4": [1, 2, 1]}
    assert given.evaluate(_resolver(ok)).verdict == REPRODUCED
    bad = dict(ok, **{"margin/m/b4": [-1.0, -1.1, -0.9]})
    assert given.evaluate(_resolver(bad)).verdict == NOT_REPRODUCED
    # a seed without a passive variable: not applicable, and the part's metric is not read
    gated = {"n_passive/m/b4": [1, 0, 1]}
    out = given.evaluate(_resolver(gated))
    assert out.verdict == INCONCLUSIVE and out.numbers["applicable"] is False
    assert "assessed only if" in given.describe()
    part16 = AtLeast(M("margin", "m", "b16"), 0.0)
    cond16 = [Check(M("n_passive", "m", "b16"), tol=1, below=False)]
    both = V.WhereApplicable([given, V.Given(part16, cond16)])
    # b4 not applicable, b16 applicable and reproduced -> reproduced
    t = {"n_passive/m/b4": [0, 0, 1], "n_passive/m/b16": [3, 3, 4], "margin/m/b16": [1, 2, 1.5]}
    assert both.evaluate(_resolver(t)).verdict == REPRODUCED
    # none applicable -> inconclusive
    t = {"n_passive/m/b4": [0, 0, 1], "n_passive/m/b16": [0, 3, 4]}
    assert both.evaluate(_resolver(t)).verdict == INCONCLUSIVE
    # one applicable part fails -> not reproduced
    t = {"n_passive/m/b4": [1, 1, 1], "margin/m/b4": [-1, -1.2, -0.8],
         "n_passive/m/b16": [3, 3, 4], "margin/m/b16": [1, 2, 1.5]}
    assert both.evaluate(_resolver(t)).verdict == NOT_REPRODUCED
    assert len(both.refs()) == 2


def test_taxonomy_sweep_and_figures():
    model, data = _known_model(600)
    a = V.analyse(model, data.subset(range(300)), data.subset(range(300, 600)), probe=False)
    sweep = V.taxonomy_sweep(a.mu, a.logvar, (0.5, 0.9))
    assert list(sweep.columns) == ["active", "passive", "mixed"] and sweep.values.sum(1).tolist() == [5, 5]
    fig = V.plot_correlation_heatmaps([("toy", a.absr_mean, a.absr_sampled, a.taxonomy)])
    assert len(fig.axes) == 3
    plt.close(fig)
    vals = {("tc_mean_all", "m", "s"): [1, 2, 3], ("tc_sampled_all", "m", "s"): [0, 0.1, 0],
            ("tc_mean_active", "m", "s"): [0.1, 0.2, 0.1], ("tc_sampled_active", "m", "s"): [0, 0.1, 0]}
    fig = V.plot_tc_bars(lambda *k: np.asarray(vals[k], float), [("m", "s")])
    assert len(fig.axes) == 2
    plt.close(fig)
    table = V.arm_table(lambda *k: np.asarray(vals[k], float), [("m", "s")],
                        {"tc_mean_all": "TC mean", "nope": "missing"}, n_seeds=3)
    assert table.loc["m s", "TC mean"] == "2.000 ± 1.000" and table.loc["m s", "missing"] == "-"


def test_load_dsprites_npz_fake_copy(tmp_path):
    n = 50
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 2, size=(n, 64, 64), dtype=np.uint8)
    classes = np.stack([np.zeros(n, int), rng.integers(0, 3, n), rng.integers(0, 6, n),
                        rng.integers(0, 40, n), rng.integers(0, 32, n), rng.integers(0, 32, n)], 1)
    (tmp_path / "dsprites").mkdir()
    np.savez(tmp_path / "dsprites" / V.DSPRITES_FILE, imgs=imgs, latents_classes=classes,
             latents_values=classes.astype(float))
    b = V.load_dsprites_npz(tmp_path, n=20, seed=1)
    assert b.x.shape == (20, 1, 64, 64) and b.factors.shape == (20, 5)
    assert b.levels == [3, 6, 40, 32, 32] and b.factor_names == dsprites.FACTOR_NAMES
    # rows stay aligned: each image matches its own factors
    order = np.random.default_rng(1).permutation(n)[:20]
    assert np.array_equal(b.x[:, 0].numpy(), imgs[order].astype(np.float32))
    assert np.array_equal(b.factors.numpy(), classes[order][:, 1:])
    with pytest.raises(DatasetMissing):
        V.load_dsprites_npz(tmp_path / "nowhere")
    with pytest.raises(ValueError):
        V.load_data("mnist", 10)
    assert V.load_data("procedural", 10, size=16).x.shape == (10, 1, 16, 16)

"""DTS objective, arms, training and representation metrics (methods.disentangle_time_series)."""
import numpy as np
import pytest
import torch

from replibook.data.procedural import mts_factors as MF
from replibook.losses.vae import beta_tcvae_loss, elbo_loss, tc_decomposition
from replibook.methods import disentangle_time_series as D
from replibook.models.vae import SeqVAE, VAEOutput


def _batch(seed=0, n=32, d=6, T=16):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, T, generator=g)
    mu = torch.randn(n, d, generator=g)
    logvar = 0.5 * torch.randn(n, d, generator=g) - 1.0
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, d, generator=g)
    out = torch.randn(n, 3, T, generator=g)
    return VAEOutput(out, z, mu, logvar), x


def test_dts_weights_move_each_term_by_its_estimate():
    o, x = _batch()
    n = 500
    parts = tc_decomposition(o.z, o.mu, o.logvar, n, groups=D.two_groups(6))
    base, _ = D.dts_loss(o, x, n, alpha=0.0, beta=0.0, gamma=0.0, lambda_g=0.0)
    for kw, term, sign in [("alpha", "mi", -1), ("beta", "tc", 1), ("gamma", "dim_kl", 1),
                           ("lambda_g", "group_tc", 1)]:
        w = dict(alpha=0.0, beta=0.0, gamma=0.0, lambda_g=0.0)
        w[kw] = 2.5
        loss, logged = D.dts_loss(o, x, n, **w)
        assert torch.allclose(loss - base, sign * 2.5 * parts[term], atol=1e-4), kw
    # the reconstruction term alone is the Gaussian NLL
    assert torch.allclose(base, 0.5 * ((o.out - x) ** 2).flatten(1).sum(1).mean())
    assert set(logged) >= {"recon", "mi", "tc", "dim_kl", "group_tc"}


def test_dts_with_elbo_weights_is_the_tcvae_elbo():
    """alpha = -1 (the ELBO's own -I_q), beta = gamma = 1, no group term: the beta-TCVAE
    objective with unit weights, i.e. the MWS estimate of the negative ELBO."""
    o, x = _batch(1)
    dts, _ = D.dts_loss(o, x, 400, alpha=-1.0, beta=1.0, gamma=1.0, lambda_g=0.0)
    tcv, _ = beta_tcvae_loss(o, x, 400, alpha=1.0, beta=1.0, gamma=1.0, likelihood="gaussian")
    assert torch.allclose(dts, tcv, atol=1e-5)
    # and mi + tc + dim_kl is the sampled KL term log q(z|x) - log p(z)
    p = tc_decomposition(o.z, o.mu, o.logvar, 400)
    assert torch.allclose(p["mi"] + p["tc"] + p["dim_kl"], p["log_qz_x"] - p["log_pz"], atol=1e-4)


def test_dts_default_groups_and_validation():
    assert D.two_groups(8) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(ValueError):
        D.two_groups(1)
    o, x = _batch(2, d=4)
    with pytest.raises(ValueError, match="partition"):
        D.dts_loss(o, x, 100, groups=[[0, 1], [1, 2, 3]])


def test_arms_and_loss_functions():
    assert {"LSTM-VAE", "beta-TCVAE", "DTS", "DTS-noMI"} <= set(D.ARMS)
    assert D.ARMS["DTS-noMI"].weights["alpha"] == 0 and D.ARMS["DTS"].weights["alpha"] > 0
    assert D.ARMS["DTS-noGroup"].weights["lambda_g"] == 0
    torch.manual_seed(0)
    model = SeqVAE(3, 16, 4, hidden=8)
    x = torch.randn(16, 3, 16)
    for arm in D.ARMS.values():
        loss = D.loss_function(arm, 200)(model, x)
        assert loss.ndim == 0 and torch.isfinite(loss)
        loss.backward()
        assert all(p.grad is not None for p in model.parameters())
        model.zero_grad()
    # the plain LSTM-VAE arm is the ELBO (its loss uses the model's sample: compare under a seed)
    torch.manual_seed(1)
    a = D.loss_function(D.ARMS["LSTM-VAE"], 200)(model, x)
    torch.manual_seed(1)
    b = elbo_loss(model(x), x, beta=1.0, likelihood="gaussian")
    assert torch.allclose(a, b)
    with pytest.raises(ValueError, match="unknown arm kind"):
        D.loss_function(D.Arm("x", "nope"), 10)


@pytest.fixture(scope="module")
def tiny_data():
    b = MF.make(400, seed=0, size=16)
    return b.split(300, seed=0)


def test_mi_term_raises_heldout_mi_over_the_elbo(tiny_data):
    """The mechanism of claims C1/C2: rewarding I_q (alpha = +1) vs the ELBO's penalty."""
    train, test = tiny_data
    mis = {}
    for arm in ("LSTM-VAE", "DTS"):
        model, _ = D.train_arm(arm, train.x, hidden=8, latent_dim=4, steps=100, batch_size=64,
                               lr=1e-2, seed=0)
        mis[arm] = D.heldout_mi(model, test.x, n_batches=3, batch=64)["mi"]
    assert mis["DTS"] > mis["LSTM-VAE"] + 1.0, mis
    # the MWS estimate of I_q cannot exceed log N (x's own posterior carries weight 1/N)
    assert mis["DTS"] <= np.log(len(test.x)) + 1e-4


def test_train_arm_is_deterministic_and_records_curves(tiny_data):
    train, test = tiny_data
    runs = [D.train_arm("DTS-noMI", train.x, hidden=8, latent_dim=4, steps=10, batch_size=32,
                        seed=3, heldout_x=test.x, eval_every=5, eval_batches=1) for _ in range(2)]
    (m1, h1), (m2, h2) = runs
    assert h1.steps == [0, 5, 10] and set(h1.metrics) == {"mi", "kl", "mse"}
    assert h1.metrics == h2.metrics
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)


def test_evaluate_returns_every_metric_in_range(tiny_data):
    train, test = tiny_data
    model, _ = D.train_arm("LSTM-VAE", train.x, hidden=8, latent_dim=4, steps=20, batch_size=32,
                           seed=0)
    res = D.evaluate(model, train, test, mi_batches=2, mi_batch=64)
    assert set(res) == {"mi", "tc", "group_tc", "kl", "au", "mig", "dci_d", "probe_acc", "mse"}
    assert 0 <= res["au"] <= 4 and 0 <= res["mig"] <= 1 and 0 <= res["dci_d"] <= 1
    assert 0 <= res["probe_acc"] <= 1 and res["mse"] > 0 and res["kl"] >= 0
    assert res == D.evaluate(model, train, test, mi_batches=2, mi_batch=64)


def test_heldout_mi_is_near_zero_for_a_collapsed_encoder():
    class Collapsed(torch.nn.Module):
        def encode(self, x):
            n = len(x)
            return torch.zeros(n, 4), torch.zeros(n, 4)
    x = torch.randn(300, 3, 16)
    parts = D.heldout_mi(Collapsed(), x, n_batches=3, batch=100)
    assert abs(parts["mi"]) < 1e-4 and abs(parts["tc"]) < 1e-4


def test_traversal_effects_find_the_latent_that_drives_each_factor():
    """A known decoder: latent 0 -> frequency level, 1 -> amplitude, 2 -> trend, 3 -> nothing."""
    levels = torch.tensor(MF.LEVELS)

    class Known(torch.nn.Module):
        channels, length = 3, 32

        def decode(self, z):
            f = torch.tensor([[2, 2, 1, 0, 0, 0]]).repeat(len(z), 1)
            for j, k in enumerate((0, 1, 2)):
                f[:, k] = ((z[:, j] + 2) / 4 * (levels[k] - 1)).round().clamp(0, levels[k] - 1).long()
            return torch.from_numpy(MF.render(f, 32))

    dec = D.traversals(Known().decode, 4, torch.linspace(-2, 2, 5))
    assert dec.shape == (4, 5, 3, 32)
    eff = D.traversal_effects(dec)
    assert int(np.argmax(eff["frequency"])) == 0 and eff["frequency"][0] == 4
    assert int(np.argmax(eff["amplitude"])) == 1 and np.isclose(eff["amplitude"][1], 1.0, atol=1e-4)
    assert int(np.argmax(eff["rise"])) == 2 and np.isclose(eff["rise"][2], 4.0, atol=1e-4)
    assert np.allclose([eff[k][3] for k in eff], 0, atol=1e-4)

    # a decoder with no oscillation: frequency and lag are undefined (NaN), the trend is not
    class TrendOnly(torch.nn.Module):
        def decode(self, z):
            u = torch.arange(32) / 32 - 31 / 64
            return (z[:, :1, None] * u).expand(-1, 3, -1).clone()

    eff = D.traversal_effects(D.traversals(TrendOnly().decode, 2, [-1.0, 1.0]))
    assert np.isnan(eff["frequency"]).all() and np.isnan(eff["lag"]).all()
    assert np.isclose(eff["rise"][0], 2.0, atol=1e-5) and np.isclose(eff["rise"][1], 0.0, atol=1e-5)


def test_standardised_decoder_sweeps_each_latent_over_its_own_spread():
    class Identity(torch.nn.Module):
        def decode(self, z):
            return z[:, None, :]
    mu = torch.stack([torch.linspace(-10, 10, 101), torch.linspace(0.9, 1.1, 101),
                      torch.full((101,), 3.0)], 1)
    dec = D.standardised_decoder(Identity(), mu)
    out = D.traversals(dec, 3, [-1.0, 1.0])              # (3, 2, 1, 3)
    spread = mu.std(0)
    for j in range(3):
        assert torch.allclose(out[j, 1, 0, j] - out[j, 0, 0, j], 2 * spread[j])
        assert torch.allclose(out[j, 0, 0, [k for k in range(3) if k != j]],
                              mu.mean(0)[[k for k in range(3) if k != j]])
    assert torch.allclose(out[2, 0], out[2, 1])          # a constant latent does not move


def test_figures_and_tables_build(tiny_data):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = D.factor_gallery(32)
    assert len(fig.axes) == 6
    plt.close(fig)
    train, test = tiny_data
    hs = {arm: [D.train_arm(arm, train.x, hidden=4, latent_dim=2, steps=4, batch_size=32, seed=s,
                            heldout_x=test.x, eval_every=2, eval_batches=1)[1] for s in (0, 1)]
          for arm in ("LSTM-VAE", "DTS")}
    fig = D.curves_figure(hs)
    assert len(fig.axes) == 3
    plt.close(fig)
    eff = {"DTS": {"frequency": np.array([1.0, 0.0]), "rise": np.array([0.0, 2.0])}}
    tab = D.effects_table(eff, {"DTS": np.array([0.5, 1.5])})
    assert tab.shape == (2, 3) and tab.loc[("DTS", "z1"), "Δ rise"] == 2.0

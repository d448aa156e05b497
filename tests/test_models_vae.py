"""models.vae and losses.vae: shapes, gradients, closed forms and the MWS estimator."""
import math

import pytest
import torch
import torch.nn.functional as F

from replibook.losses import vae as L
from replibook.models import vae as V


@pytest.mark.parametrize("dim,size,widths", [(2, 32, (32, 32, 64, 64)), (2, 16, (8, 16)), (1, 64, (8, 8, 16))])
def test_encoder_decoder_shapes(dim, size, widths):
    enc = V.ConvEncoder(3, size, 7, widths, fc=16, dim=dim)
    dec = V.ConvDecoder(3, size, 7, tuple(reversed(widths)), fc=16, dim=dim)
    x = torch.rand(5, 3, *([size] * dim))
    z = enc(x)
    assert z.shape == (5, 7)
    assert dec(z).shape == x.shape


def test_bad_size_dim_and_likelihood_raise():
    with pytest.raises(ValueError, match="divisible"):
        V.ConvEncoder(1, 30, 4, (8, 8))
    with pytest.raises(ValueError, match="dim"):
        V.ConvEncoder(1, 32, 4, (8, 8), dim=3)
    with pytest.raises(ValueError, match="likelihood"):
        V.VAE(1, 16, 4, (8, 8), likelihood="poisson")
    with pytest.raises(ValueError, match="prior"):
        V.CVAE(1, 16, 4, 3, prior="mixture", widths=(8, 8))


def test_vae_forward_returns_posterior_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = V.VAE(1, 16, 4, (8, 16), fc=32)
    x = torch.rand(6, 1, 16, 16)
    out = model(x)
    assert out.out.shape == x.shape and out.mu.shape == (6, 4) and out.logvar.shape == (6, 4)
    mu, logvar = model.encode(x)
    assert torch.allclose(mu, out.mu)
    L.elbo_loss(out, x, beta=4.0).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_ae_is_deterministic_and_elbo_of_ae_is_reconstruction():
    model = V.AE(1, 16, 3, (8, 8), fc=16, likelihood="gaussian").eval()
    x = torch.rand(4, 1, 16, 16)
    a, b = model(x), model(x)
    assert torch.equal(a.out, b.out) and a.logvar is None
    assert torch.allclose(L.elbo_loss(a, x, likelihood="gaussian"),
                          L.reconstruction_nll(a.out, x, "gaussian").mean())


def test_cvae_priors_condition_and_generate():
    torch.manual_seed(0)
    x, y = torch.rand(5, 3, 16, 16), F.one_hot(torch.arange(5) % 3, 3).float()
    std = V.CVAE(3, 16, 4, 3, prior="standard", widths=(8, 8), fc=16)
    mu_p, logvar_p = std.prior(y)
    assert torch.equal(mu_p, torch.zeros(5, 4)) and torch.equal(logvar_p, torch.zeros(5, 4))
    learned = V.CVAE(3, 16, 4, 3, prior="learned", widths=(8, 8), fc=16)
    out = learned(x, y)
    assert out.mu_p.shape == (5, 4) and not torch.equal(out.mu_p[0], out.mu_p[1])
    g = torch.Generator().manual_seed(1)
    assert learned.generate(y, generator=g).shape == x.shape
    # the generator sees the condition: same z, different y, different output
    z = torch.zeros(1, 4)
    assert not torch.allclose(learned.decode(z, y[:1]), learned.decode(z, y[1:2]))
    L.elbo_loss(out, x).backward()
    assert learned.prior_net[0].weight.grad is not None


def test_seq_vae_shapes_and_decoder_depends_only_on_z():
    torch.manual_seed(0)
    model = V.SeqVAE(3, 20, 5, hidden=8)
    x = torch.randn(4, 3, 20)
    out = model(x)
    assert out.out.shape == x.shape and out.mu.shape == (4, 5)
    z = torch.randn(2, 5)
    assert torch.equal(model.decode(z), model.decode(z))
    assert not torch.allclose(model.decode(z)[0], model.decode(z)[1])


def test_reparameterize_uses_the_generator_and_matches_moments():
    mu, logvar = torch.full((20000, 2), 1.5), torch.full((20000, 2), math.log(4.0))
    a = V.reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    b = V.reparameterize(mu, logvar, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert abs(a.mean() - 1.5) < 0.05 and abs(a.std() - 2.0) < 0.05


def test_reconstruction_nll_matches_torch():
    out, x = torch.randn(3, 1, 4, 4), torch.rand(3, 1, 4, 4)
    ref = torch.stack([F.binary_cross_entropy_with_logits(out[i], x[i], reduction="sum") for i in range(3)])
    assert torch.allclose(L.reconstruction_nll(out, x, "bernoulli"), ref)
    nll = -torch.distributions.Normal(out, 1.0).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(L.reconstruction_nll(out, x, "gaussian") + 16 * 0.5 * math.log(2 * math.pi), nll)
    with pytest.raises(ValueError):
        L.reconstruction_nll(out, x, "laplace")


def test_kl_normal_matches_torch_distributions():
    torch.manual_seed(0)
    mu, logvar, mu_p, logvar_p = (torch.randn(4, 3) for _ in range(4))
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    std = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(L.kl_normal(mu, logvar), std, atol=1e-5)
    p = torch.distributions.Normal(mu_p, (0.5 * logvar_p).exp())
    assert torch.allclose(L.kl_normal(mu, logvar, mu_p, logvar_p),
                          torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)
    assert torch.allclose(L.kl_normal(mu, logvar, torch.zeros(4, 3), torch.zeros(4, 3)), std, atol=1e-5)


def _naive_log_qz(z, mu, logvar, n):
    # q(z_i) = (1/N) q(z_i|x_i) + (N-1)/(N(M-1)) sum_{j != i} q(z_i|x_j), written as a plain loop
    m, out = len(z), []
    for i in range(m):
        total = 0.0
        for j in range(m):
            dens = torch.distributions.Normal(mu[j], (0.5 * logvar[j]).exp()).log_prob(z[i]).sum().exp()
            total = total + dens * (1 / n if i == j else (n - 1) / (n * (m - 1)))
        out.append(torch.log(total))
    return torch.stack(out)


def test_mws_log_qz_matches_a_naive_loop_and_the_terms_sum_to_the_kl():
    torch.manual_seed(0)
    mu, logvar = torch.randn(6, 3) * 0.5, torch.randn(6, 3) * 0.2 - 0.5
    z = V.reparameterize(mu, logvar)
    parts = L.tc_decomposition(z, mu, logvar, dataset_size=100)
    assert torch.allclose(parts["log_qz"], _naive_log_qz(z, mu, logvar, 100).mean(), atol=1e-4)
    total = parts["mi"] + parts["tc"] + parts["dim_kl"]
    assert torch.allclose(total, parts["log_qz_x"] - parts["log_pz"], atol=1e-5)


def test_mws_weights_sum_to_one_per_row_and_batch_as_dataset_is_uniform():
    w = L.mws_log_weights(8, 1000).exp()
    assert torch.allclose(w.sum(1), torch.ones(8))
    assert torch.allclose(L.mws_log_weights(8, 8).exp(), torch.full((8, 8), 1 / 8))
    with pytest.raises(ValueError):
        L.tc_decomposition(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 2), dataset_size=3)


def test_total_correlation_separates_correlated_from_independent_codes():
    torch.manual_seed(0)
    m = 512
    logvar = torch.full((m, 2), math.log(0.1))
    indep = torch.randn(m, 2)
    shared = torch.randn(m, 1)
    corr = torch.cat([shared, shared + 0.2 * torch.randn(m, 1)], 1)
    tc_ind = L.tc_decomposition(V.reparameterize(indep, logvar), indep, logvar, m)["tc"]
    tc_cor = L.tc_decomposition(V.reparameterize(corr, logvar), corr, logvar, m)["tc"]
    assert tc_cor > 0.5 and abs(tc_ind) < 0.1 and tc_cor > tc_ind + 0.5


def test_group_tc_edge_cases_and_validation():
    torch.manual_seed(0)
    mu, logvar = torch.randn(32, 4), torch.zeros(32, 4) - 1
    z = V.reparameterize(mu, logvar)
    singles = L.tc_decomposition(z, mu, logvar, 1000, groups=[[0], [1], [2], [3]])
    assert torch.allclose(singles["group_tc"], singles["tc"], atol=1e-5)
    whole = L.tc_decomposition(z, mu, logvar, 1000, groups=[[0, 1, 2, 3]])
    assert abs(float(whole["group_tc"])) < 1e-5
    with pytest.raises(ValueError, match="partition"):
        L.tc_decomposition(z, mu, logvar, 1000, groups=[[0, 1], [1, 2, 3]])


def test_beta_tcvae_loss_weights_the_terms_and_is_differentiable():
    torch.manual_seed(0)
    model = V.VAE(1, 16, 4, (8, 8), fc=16)
    x = torch.rand(16, 1, 16, 16)
    out = model(x)
    loss1, parts = L.beta_tcvae_loss(out, x, dataset_size=1000, alpha=1, beta=1, gamma=1)
    expect = parts["recon"] + parts["log_qz_x"] - parts["log_pz"]
    assert torch.allclose(loss1.detach(), expect, atol=1e-4)
    loss6, parts6 = L.beta_tcvae_loss(out, x, 1000, beta=6.0)
    assert torch.allclose(loss6.detach() - loss1.detach(), 5 * parts6["tc"], atol=1e-4)
    loss6.backward()
    assert model.encoder.head[0].weight.grad is not None

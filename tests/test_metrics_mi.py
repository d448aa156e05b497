"""Known-answer tests for the CLUB mutual-information upper bound."""
import math

import pytest
import torch

from replibook.metrics.mi import CLUB, club_estimate, fit_club


def correlated_gaussians(n, d, rho, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = rho * x + math.sqrt(1 - rho ** 2) * torch.randn(n, d, generator=g)
    return x, y


def test_loglik_is_the_gaussian_density():
    club = CLUB(3, 2, hidden=8)
    x, y = torch.randn(5, 3), torch.randn(5, 2)
    mu, logvar = club.mu_logvar(x)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(y).sum(-1).mean()
    assert club.loglik(x, y).item() == pytest.approx(ref.item(), abs=1e-5)
    assert club.learning_loss(x, y).item() == pytest.approx(-ref.item(), abs=1e-5)
    assert bool((logvar.abs() < 1).all())   # tanh-bounded


def test_bound_on_correlated_gaussians_is_above_the_true_mi():
    d, rho = 2, 0.7
    true_mi = -0.5 * d * math.log(1 - rho ** 2)               # 0.673 nats
    # CLUB with the exact conditional q = p(y|x): d * rho^2 / (1 - rho^2)
    club_exact = d * rho ** 2 / (1 - rho ** 2)                # 1.92 nats
    x, y = correlated_gaussians(3000, d, rho, seed=0)
    xt, yt = correlated_gaussians(1000, d, rho, seed=1)
    out = club_estimate(x, y, xt, yt, steps=400, seed=0)
    assert out["club"] > true_mi
    assert out["club"] == pytest.approx(club_exact, rel=0.2)


def test_bound_is_near_zero_for_independent_variables():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4000, 3, generator=g), torch.randn(4000, 2, generator=g)
    xt, yt = torch.randn(2000, 3, generator=g), torch.randn(2000, 2, generator=g)
    out = club_estimate(x, y, xt, yt, steps=400, seed=0)
    assert abs(out["club"]) < 0.05


def test_sampled_bound_averages_to_the_full_bound():
    x, y = correlated_gaussians(512, 2, 0.6, seed=2)
    club = fit_club(x, y, steps=200, seed=0)
    with torch.no_grad():
        full = club.upper_bound(x, y, sampled=False).item()
        g = torch.Generator().manual_seed(0)
        sampled = torch.tensor([club.upper_bound(x, y, generator=g).item() for _ in range(200)])
    assert sampled.mean().item() == pytest.approx(full, abs=0.1)


def test_bound_is_differentiable_in_the_representations_and_deterministic():
    x, y = correlated_gaussians(64, 2, 0.8, seed=3)
    x.requires_grad_(True)
    club = CLUB(2, 2, hidden=16)
    bound = club.upper_bound(x, y, generator=torch.Generator().manual_seed(0))
    bound.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    a = club_estimate(x.detach(), y, steps=50, seed=5)
    b = club_estimate(x.detach(), y, steps=50, seed=5)
    assert a == b
    with pytest.raises(ValueError):
        club.upper_bound(x[:3], y)

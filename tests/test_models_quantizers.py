"""Tests for replibook.models.quantizers (scalar latent quantization, usage)."""
from __future__ import annotations

import pytest
import torch

from replibook.models.quantizers import ScalarLatentQuantizer, perplexity, usage


def test_codebooks_start_on_the_official_grid():
    q = ScalarLatentQuantizer(3, 10)
    for j in range(3):
        torch.testing.assert_close(q.codebook(j), torch.linspace(-0.5, 0.5, 10))
    assert q.values.requires_grad
    assert not ScalarLatentQuantizer(3, 10, learn_values=False).values.requires_grad


def test_quantize_picks_the_nearest_value_per_dimension():
    torch.manual_seed(0)
    q = ScalarLatentQuantizer(4, 7)
    with torch.no_grad():
        q.values.add_(0.05 * torch.randn_like(q.values))      # distinct codebooks per latent
    z = torch.randn(50, 4)
    z_hat, z_q, idx, _ = q(z)
    for j in range(4):
        brute = (z[:, j, None] - q.values[j][None]).abs().argmin(1)
        assert torch.equal(idx[:, j], brute)
        torch.testing.assert_close(z_q[:, j], q.values[j][brute])
    torch.testing.assert_close(z_hat, z_q)                     # the forward value is the code
    torch.testing.assert_close(q.lookup(idx), z_q)


def test_straight_through_gradient_and_loss_routing():
    q = ScalarLatentQuantizer(3, 5)
    z = torch.randn(8, 3, requires_grad=True)
    w = torch.randn(8, 3)
    z_hat, _, _, losses = q(z)
    (z_hat * w).sum().backward()
    torch.testing.assert_close(z.grad, w)                     # identity Jacobian through rounding
    assert q.values.grad is None or torch.all(q.values.grad == 0)

    z.grad = None
    _, z_q, _, losses = q(z)
    losses["quantization"].backward()                          # codebook only
    assert z.grad is None and q.values.grad.abs().sum() > 0
    q.values.grad = None
    _, z_q, _, losses = q(z)
    losses["commitment"].backward()                            # encoder only
    assert z.grad.abs().sum() > 0 and (q.values.grad is None or torch.all(q.values.grad == 0))
    torch.testing.assert_close(losses["commitment"], ((z - z_q) ** 2).mean())


def test_ragged_codebooks_never_use_padding():
    q = ScalarLatentQuantizer(2, [3, 6])
    z = torch.linspace(-2, 2, 101)[:, None].repeat(1, 2)
    _, z_q, idx, _ = q(z)
    assert idx[:, 0].max() == 2 and idx[:, 1].max() == 5
    assert set(z_q[:, 0].tolist()) <= set(torch.linspace(-0.5, 0.5, 3).tolist())
    with pytest.raises(ValueError):
        ScalarLatentQuantizer(2, [3])
    with pytest.raises(ValueError):
        q(torch.zeros(4, 3))


def test_usage_and_perplexity_known_answers():
    idx = torch.tensor([[0, 1], [0, 1], [2, 1], [3, 1]])
    u = usage(idx, 4)
    torch.testing.assert_close(u, torch.tensor([[0.5, 0.0, 0.25, 0.25], [0.0, 1.0, 0.0, 0.0]]))
    torch.testing.assert_close(perplexity(u)[1], torch.tensor(1.0))
    torch.testing.assert_close(perplexity(torch.full((5,), 0.2)), torch.tensor(5.0))
    torch.testing.assert_close(usage(torch.tensor([0, 0, 2]), 3), torch.tensor([2 / 3, 0.0, 1 / 3]))
    with pytest.raises(ValueError):
        usage(torch.tensor([0, 4]), 4)

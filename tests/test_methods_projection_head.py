"""Tests of replibook.methods.projection_head (part A trainer, losses, heads, augmentation)."""
import pytest
import torch

from replibook.data.procedural import latent_features as LF
from replibook.losses.contrastive import spectral
from replibook.methods import projection_head as PH


def test_spectral_pairs_equals_the_shared_loss():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(37, 6, generator=g), torch.randn(37, 6, generator=g)
    assert PH.spectral_pairs(a, b).item() == pytest.approx(spectral(a, b).item(), rel=1e-5)


def test_spectral_moments_equals_the_all_pairs_sample_loss():
    # with C+ and Sigma of the sample, the moment form is the Gram form with i = j included
    # and views symmetrised: -2 mean_i sym(a_i.b_i) + mean_{i,j} (f(x_i).f(x_j))^2-type terms
    g = torch.Generator().manual_seed(1)
    x, xp = torch.randn(50, 5, generator=g).double(), torch.randn(50, 5, generator=g).double()
    w1, w2 = torch.randn(4, 5, generator=g).double(), torch.randn(3, 4, generator=g).double()
    f = w2 @ w1
    a, b = x @ f.T, xp @ f.T
    attract = (a * b).sum(1).mean()
    sig = (x.T @ x + xp.T @ xp) / 100
    repel = (f @ sig @ f.T).pow(2).sum()
    c_pos, sigma = PH.pair_moments(x, xp)
    assert torch.allclose(sigma, sig)
    assert PH.spectral_moments([w1, w2], c_pos, sigma).item() == pytest.approx((-2 * attract + repel).item(), rel=1e-10)


def test_spectral_moments_gradient_matches_autograd_of_the_direct_form():
    g = torch.Generator().manual_seed(2)
    x, xp = torch.randn(40, 5, generator=g).double(), torch.randn(40, 5, generator=g).double()
    c_pos, sigma = PH.pair_moments(x, xp)
    w = torch.randn(3, 5, generator=g).double().requires_grad_()
    (gm,) = torch.autograd.grad(PH.spectral_moments([w], c_pos, sigma), [w])
    w2 = w.detach().clone().requires_grad_()
    direct = -2 * torch.trace(w2 @ c_pos @ w2.T) + (w2 @ sigma @ w2.T).pow(2).sum()
    (gd,) = torch.autograd.grad(direct, [w2])
    assert torch.allclose(gm, gd)


def test_linear_training_lowers_the_loss_is_deterministic_and_weights_spread_with_depth():
    tr = LF.make(1000, seed=0, noise=0.3)
    kw = dict(steps=600, lr=0.02, init=0.3, seed=0, record_every=100)
    run = PH.train_linear(tr.x, tr.extra["x_pos"], [50, 20, 20], **kw)
    losses = [l for _, l in run["trace"]]
    assert losses[-1] < losses[0] - 1.0
    again = PH.train_linear(tr.x, tr.extra["x_pos"], [50, 20, 20], **kw)
    assert all(torch.equal(a, b) for a, b in zip(run["layers"], again["layers"]))
    prof = PH.weight_profile(run["layers"], LF.directions(50, 5, 0))
    assert [p["layer"] for p in prof] == [1, 2]
    assert prof[1]["spread"] > prof[0]["spread"]          # the mechanism the chapter tests (C1)


def test_fully_disrupted_feature_is_shrunk_after_training():
    tr = LF.make(1000, seed=0, noise=0.3, disrupt=[0, 0, 0, 1.0, 0])
    run = PH.train_linear(tr.x, tr.extra["x_pos"], [50, 20, 20], steps=800, lr=0.02, init=0.3, seed=0)
    w_post = PH.weight_profile(run["layers"], LF.directions(50, 5, 0))[1]["weights"]
    assert w_post[3] < 0.3 * w_post[2]


def test_layer_outputs_shapes_and_relu():
    layers = [torch.randn(4, 6), torch.randn(3, 4)]
    x = torch.randn(10, 6)
    pre, post = PH.layer_outputs(layers, x, relu=True)
    assert pre.shape == (10, 4) and post.shape == (10, 3) and bool((pre >= 0).all())
    assert torch.allclose(post, torch.relu(x @ layers[0].T) @ layers[1].T)
    lin = PH.layer_outputs(layers, x)
    assert torch.allclose(lin[1], x @ (layers[1] @ layers[0]).T, atol=1e-5)


def test_train_relu_runs_and_lowers_the_loss():
    tr = LF.make(300, seed=0, noise=0.3)
    start = PH.train_relu(tr.x, tr.extra["x_pos"], [50, 16, 8], steps=0, init=0.3, seed=0)["loss"]
    end = PH.train_relu(tr.x, tr.extra["x_pos"], [50, 16, 8], steps=100, lr=0.02, init=0.3, seed=0)["loss"]
    assert end < start


def test_fixed_reweight_head():
    head = PH.FixedReweightHead(4, kappa=2.0)
    h = torch.ones(3, 4)
    assert torch.allclose(head(h), torch.tensor([1.0, 0.5, 0.25, 0.125]).expand(3, 4))
    assert list(head.parameters()) == []                      # nothing to train
    assert torch.equal(PH.FixedReweightHead(3, 1.0)(h[:, :3]), h[:, :3])
    with pytest.raises(ValueError):
        PH.FixedReweightHead(3, 0.5)


def test_make_head_kinds():
    x = torch.randn(8, 16)
    assert PH.make_head("mlp", 16)(x).shape == (8, 16)
    assert torch.equal(PH.make_head("none", 16)(x), x)
    assert isinstance(PH.make_head("fixed_diag", 16, kappa=1.1), PH.FixedReweightHead)


def test_digit_augment_shape_range_and_determinism():
    x = torch.rand(5, 1, 16, 16)
    a = PH.digit_augment(x, torch.Generator().manual_seed(0), noise=0.0)
    b = PH.digit_augment(x, torch.Generator().manual_seed(0), noise=0.0)
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)
    # without noise, every output pixel is an input pixel or 0 (shift fill / erased square)
    vals = set(x.flatten().tolist()) | {0.0}
    assert all(v in vals for v in a.flatten().tolist())
    # a pure shift (no erase, no noise) keeps the pixel mass of a centred blob
    blob = torch.zeros(1, 1, 16, 16)
    blob[..., 6:10, 6:10] = 1
    s = PH.digit_augment(blob, torch.Generator().manual_seed(1), noise=0.0, erase=0)
    assert s.sum().item() == 16.0


def test_supcon_pretrain_lowers_the_loss_and_separates_coarse_classes():
    from replibook.losses.contrastive import supcon
    from replibook.models.mlp import MLP
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = torch.randn(200, 1, 4, 4, generator=g) * 0.5 + y[:, None, None, None].float()
    torch.manual_seed(0)
    model = PH.SupConModel(MLP([16, 32, 16], norm="bn"), PH.make_head("mlp", 16))
    model.eval()
    with torch.no_grad():
        before = supcon(model(x), y).item()
    PH.supcon_pretrain(model, x, y, steps=60, batch_size=64, lr=3e-3, seed=0)
    with torch.no_grad():
        after = supcon(model(x), y).item()
    assert after < before

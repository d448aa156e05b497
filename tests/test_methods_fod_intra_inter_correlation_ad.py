"""Tests of replibook.methods.fod_intra_inter_correlation_ad (FOD: I2Correlation, association losses)."""
import math

import numpy as np
import pytest
import torch

from replibook.methods import fod_intra_inter_correlation_ad as F


GRID = (3, 4)
L = GRID[0] * GRID[1]


def _tokens(n=6, c=10, seed=0):
    return torch.randn(n, L, c, generator=torch.Generator().manual_seed(seed))


def test_grid_distances():
    dy2, dx2 = F.grid_distances(*GRID)
    assert dy2.shape == dx2.shape == (L, L)
    # patch 0 = (0, 0), patch 11 = (2, 3); patch 5 = (1, 1)
    assert dy2[0, 11] == 4 and dx2[0, 11] == 9 and dy2[5, 0] == 1 and dx2[5, 0] == 1
    assert torch.equal(dy2, dy2.T) and float(dy2.diagonal().abs().sum()) == 0


def test_positional_target_known_answer():
    dy2, dx2 = F.grid_distances(*GRID)
    sigma = torch.tensor([0.7, 1.3]).expand(1, 1, L, 2)
    t = F.positional_target(sigma, dy2, dx2)
    assert t.shape == (1, 1, L, L)
    torch.testing.assert_close(t.sum(-1), torch.ones(1, 1, L))
    i = 5
    k = torch.exp(-dy2[i] / (2 * 0.7 ** 2) - dx2[i] / (2 * 1.3 ** 2))
    torch.testing.assert_close(t[0, 0, i], k / k.sum())
    assert int(t[0, 0, i].argmax()) == i                     # peaked at the query's own position
    # the bandwidth map of the official code lies in (0, 2)
    s = F.sigma_from_logits(torch.tensor([-100.0, 0.0, 100.0]))
    torch.testing.assert_close(s, torch.tensor([3 ** 1e-5 - 1, 3 ** (0.5 + 1e-5) - 1, 3 ** (1 + 1e-5) - 1]))


def test_association_kl_and_entropy_known_answer():
    p = torch.tensor([0.5, 0.25, 0.25])
    q = torch.tensor([1 / 3, 1 / 3, 1 / 3])
    # two heads with the same rows: the head mean equals one head
    P, Q = p.expand(1, 2, 1, 3), q.expand(1, 2, 1, 3)
    expected = float((p * (torch.log(p + F.EPS) - torch.log(q + F.EPS))).sum())
    assert float(F.association_kl(P, Q)) == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.5 * math.log(1.5) + 0.5 * math.log(0.75), abs=1e-3)
    assert float(F.association_kl(P, P)) == pytest.approx(0.0, abs=1e-7)
    assert float(F.entropy(Q)) == pytest.approx(math.log(3), abs=1e-3)
    assert float(F.entropy(torch.tensor([1.0, 0, 0]).expand(1, 1, 1, 3))) == pytest.approx(0, abs=1e-3)


def test_association_losses_route_gradients():
    a = torch.softmax(torch.randn(2, 2, L, L), -1).requires_grad_(True)
    t = torch.softmax(torch.randn(2, 2, L, L), -1).requires_grad_(True)
    out = F.association_losses([{"intra_attn": a, "intra_target": t}], "intra")
    ga, = torch.autograd.grad(out["kl_attn"], a, retain_graph=True)
    assert ga.abs().sum() > 0
    assert torch.autograd.grad(out["kl_attn"], t, allow_unused=True, retain_graph=True)[0] is None
    gt, = torch.autograd.grad(out["kl_target"], t, retain_graph=True)
    assert gt.abs().sum() > 0
    assert torch.autograd.grad(out["kl_target"], a, allow_unused=True, retain_graph=True)[0] is None
    sym = F.association_kl(a, t) + F.association_kl(t, a)
    torch.testing.assert_close(out["sym_kl"], sym)
    torch.testing.assert_close(out["kl_attn"], sym.mean())


@pytest.mark.parametrize("variant", list(F.VARIANTS))
def test_fod_shapes_and_gradients(variant):
    torch.manual_seed(0)
    x = _tokens()
    spec = F.VARIANTS[variant]
    model = F.FOD(10, GRID, dim=16, heads=2, layers=2, head_dim=4, intra=spec["intra"], inter=spec["inter"],
                  reference=F.reference_features(x))
    x_hat, maps = model(x)
    assert x_hat.shape == x.shape and len(maps) == 2
    for m in maps:
        for br in ("intra", "inter"):
            if spec[br]:
                assert m[f"{br}_attn"].shape == m[f"{br}_target"].shape == (6, 2, L, L)
                torch.testing.assert_close(m[f"{br}_attn"].sum(-1), torch.ones(6, 2, L))
            else:
                assert f"{br}_attn" not in m
    loss, logs = F.fod_loss(model, x, use_entropy=spec["entropy"])
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["embed.weight"].abs().sum() > 0
    if spec["intra"]:
        assert grads["layers.0.intra.sigma.weight"].abs().sum() > 0       # the target is learned
    s = F.patch_scores(model, x)
    assert s.shape == (6, L) and torch.isfinite(s).all() and (s >= 0).all()
    rec = F.patch_scores(model, x, rec_only=True)
    torch.testing.assert_close(rec, F.reconstruction_error(model(x)[0], x))
    if spec["intra"] or spec["inter"]:
        assert not torch.allclose(s, rec)                       # the correlation weighting changes the score


def test_fod_loss_signs_match_the_official_two_pass_objective():
    torch.manual_seed(1)
    x = _tokens()
    model = F.FOD(10, GRID, dim=16, heads=2, layers=1, head_dim=4, reference=F.reference_features(x))
    loss, logs = F.fod_loss(model, x, lambda1=0.5, lambda2=0.5)
    x_hat, maps = model(x)
    rec = F.reconstruction_error(x_hat, x).mean()
    intra, inter = F.association_losses(maps, "intra"), F.association_losses(maps, "inter")
    loss1 = rec + 0.5 * intra["kl_target"] - 0.5 * inter["kl_target"]
    loss2 = rec - 0.5 * intra["kl_attn"] - 0.5 * intra["entropy"] + 0.5 * inter["kl_attn"] + 0.5 * inter["entropy"]
    torch.testing.assert_close(loss, loss1 + loss2)
    # one backward of the sum == the official two backward passes
    g_sum = torch.autograd.grad(loss, list(model.parameters()))
    model.zero_grad()
    x_hat, maps = model(x)
    rec = F.reconstruction_error(x_hat, x).mean()
    intra, inter = F.association_losses(maps, "intra"), F.association_losses(maps, "inter")
    (rec + 0.5 * intra["kl_target"] - 0.5 * inter["kl_target"]).backward(retain_graph=True)
    (rec - 0.5 * intra["kl_attn"] - 0.5 * intra["entropy"] + 0.5 * inter["kl_attn"]
     + 0.5 * inter["entropy"]).backward()
    for g, p in zip(g_sum, model.parameters()):
        torch.testing.assert_close(g, p.grad)
    # without the entropy constraint the entropy terms vanish
    plain, _ = F.fod_loss(model, x, use_entropy=False)
    torch.testing.assert_close(plain, loss + 0.5 * intra["entropy"].detach() - 0.5 * inter["entropy"].detach(),
                               rtol=1e-5, atol=1e-5)
    recon = F.FOD(10, GRID, dim=16, heads=2, layers=1, head_dim=4, intra=False, inter=False)
    r_loss, r_logs = F.fod_loss(recon, x)
    torch.testing.assert_close(r_loss, F.reconstruction_error(recon(x)[0], x).mean())


def test_fusion_is_difference_of_residual_branches():
    torch.manual_seed(2)
    layer = F.I2CorrelationLayer(16, 2, GRID, head_dim=4)
    x, r = torch.randn(3, L, 16), torch.randn(3, L, 16)
    out, maps = layer(x, r)
    h_intra = layer.intra(x, x)[0]
    h_inter = layer.inter(x, r)[0]
    z = layer.norm1(h_intra - h_inter)
    torch.testing.assert_close(out, layer.norm2(z + layer.mlp(z)))
    with pytest.raises(ValueError):
        layer(x, None)


def test_reconstruction_error_known_answer():
    x = torch.tensor([[[1.0, 0.0]]])
    assert float(F.reconstruction_error(x, x)) == pytest.approx(0.0, abs=1e-6)
    y = torch.tensor([[[0.0, 1.0]]])                          # orthogonal, squared error 1 per channel
    assert float(F.reconstruction_error(y, x)) == pytest.approx(1.0 + 1.0)


def test_training_is_deterministic_and_lowers_the_reconstruction_loss():
    x = _tokens(n=16, seed=3)
    m1, h1 = F.train_fod(x, GRID, "FOD", epochs=4, batch_size=4, lr=3e-3, dim=16, heads=2, layers=1,
                         head_dim=4, seed=0)
    m2, h2 = F.train_fod(x, GRID, "FOD", epochs=4, batch_size=4, lr=3e-3, dim=16, heads=2, layers=1,
                         head_dim=4, seed=0)
    torch.testing.assert_close(F.patch_scores(m1, x), F.patch_scores(m2, x))
    assert h1 == h2 and h1[-1]["rec"] < h1[0]["rec"]
    m3, _ = F.train_fod(x, GRID, "FOD", epochs=4, batch_size=4, lr=3e-3, dim=16, heads=2, layers=1,
                        head_dim=4, seed=1)
    assert not torch.equal(F.patch_scores(m1, x), F.patch_scores(m3, x))
    with pytest.raises(ValueError):
        F.train_fod(x, GRID, "nope")


def test_patch_scores_reconstruction_only_equals_error():
    x = _tokens()
    model = F.FOD(10, GRID, dim=16, heads=2, layers=1, head_dim=4, intra=False, inter=False)
    torch.testing.assert_close(F.patch_scores(model, x, batch_size=4), F.reconstruction_error(model(x)[0], x))


def test_maps_and_their_aurocs():
    scores = torch.zeros(4, L)
    scores[2:, 5] = 1.0                                        # images 2, 3: one hot patch at (1, 1)
    maps = F.anomaly_maps(scores, GRID, 12)
    assert maps.shape == (4, 1, 12, 12)
    masks = torch.zeros(4, 1, 12, 12)
    masks[2:, 0, 3:6, 3:6] = 1                                 # near patch (1, 1) of a 3x4 grid
    out = F.evaluate_maps(maps, torch.tensor([0, 0, 1, 1]), masks, sigma=1.0)
    assert out["image_auroc"] == 1.0 and out["pixel_auroc"] > 0.9
    flipped = F.evaluate_maps(maps, torch.tensor([1, 1, 0, 0]), masks.flip(0), sigma=0.0)
    assert flipped["image_auroc"] == 0.0 and flipped["pixel_auroc"] < 0.5


def test_padim_scores_flag_shifted_patches():
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.normal(size=(80, L, 5))).float()
    test = torch.from_numpy(rng.normal(size=(10, L, 5))).float()
    test[5:, 7] += 4.0
    s = F.padim_scores(train, test)
    assert s.shape == (10, L)
    assert float(s[5:, 7].min()) > float(s[:5, 7].max())


def test_sincos_2d():
    pe = F.sincos_2d(16, 3, 4)
    assert pe.shape == (12, 16)
    assert torch.equal(pe[0, :8], pe[4, :8])                   # same column -> same column code
    assert torch.equal(pe[0, 8:], pe[1, 8:])                   # same row -> same row code
    with pytest.raises(ValueError):
        F.sincos_2d(10, 2, 2)


def test_patch_features_grid(tmp_path, monkeypatch):
    pytest.importorskip("timm")
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path))
    x = torch.rand(2, 3, 32, 32)
    tokens, grid = F.patch_features(x, size=64, stages=(3, 5), pretrained=False)
    assert grid == (4, 4) and tokens.shape == (2, 16, 40 + 112)
    again, _ = F.patch_features(x, size=64, stages=(3, 5), pretrained=False)
    torch.testing.assert_close(tokens, again)                    # cached


def test_patch_features_timm_backbone_path(tmp_path, monkeypatch):
    # the full-size path (timm features_only model, e.g. wide_resnet50_2); weights are not
    # downloaded in tests: create_model is forced to the random init of a small ResNet
    timm = pytest.importorskip("timm")
    monkeypatch.setenv("REPLIBOOK_CACHE", str(tmp_path))
    real_create = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: real_create("resnet18", **{**kw, "pretrained": False}))
    x = torch.rand(2, 3, 32, 32)
    tokens, grid = F.patch_features(x, size=64, stages=(2, 3), backbone="wide_resnet50_2", device="cpu")
    assert grid == (4, 4) and tokens.shape == (2, 16, 128 + 256) and torch.isfinite(tokens).all()

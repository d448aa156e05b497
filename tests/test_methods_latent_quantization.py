"""Tests for replibook.methods.latent_quantization (QLAE, losses, optimiser groups, evaluation)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replibook.methods import latent_quantization as lq
from replibook.models.vae import AE, VAE


def _x(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def test_qlae_forward_decodes_the_quantized_code():
    torch.manual_seed(0)
    m = lq.QLAE(3, 16, n_latents=6, n_values=5)
    o = m(_x())
    assert o.out.shape == (8, 3, 16, 16) and o.z_c.shape == o.z_q.shape == (8, 6)
    torch.testing.assert_close(o.z_hat, o.z_q)
    torch.testing.assert_close(o.out, m.decode(o.z_q))
    assert o.indices.dtype == torch.long and int(o.indices.max()) < 5


def test_qlae_loss_matches_the_official_formula_and_reaches_the_encoder():
    torch.manual_seed(1)
    m = lq.QLAE(3, 16, n_latents=4)
    x = _x()
    loss = lq.qlae_loss(m, x)
    o = m(x)
    sq = ((o.z_c - o.z_q) ** 2).mean()
    expected = F.binary_cross_entropy_with_logits(o.out, x, reduction="none").mean() + 0.01 * sq + 0.01 * sq
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert m.encoder.head[-1].weight.grad.abs().sum() > 0          # straight-through gradient
    assert m.latent.values.grad.abs().sum() > 0                    # codebooks learn


def test_beta_vae_loss_is_the_official_pixel_mean_scaling():
    torch.manual_seed(2)
    m = VAE(3, 16, 5)
    x = _x()
    torch.manual_seed(7)
    loss = lq.beta_vae_loss(m, x, beta=4.0)
    torch.manual_seed(7)
    o = m(x)
    bce = F.binary_cross_entropy_with_logits(o.out, x, reduction="none").flatten(1).mean(1)
    kl_mean = (-0.5 * (1 + o.logvar - o.mu ** 2 - o.logvar.exp())).mean(1)
    official = (bce + (5 / x[0].numel()) * 4.0 * kl_mean).mean()     # mean BCE + (z/x) beta mean KL
    torch.testing.assert_close(loss, official)


def test_weight_decay_groups_follow_the_official_labels():
    m = lq.QLAE(3, 16, 4)
    reg = {n for n, p in m.named_parameters() if lq.is_regularized(n, p)}
    assert "latent.values" not in reg
    assert all(not n.endswith("bias") for n in reg)
    assert "encoder.features.0.weight" in reg and "decoder.head.0.weight" in reg
    n_weights = sum(1 for n, _ in m.named_parameters() if n.endswith("weight"))
    assert len(reg) == n_weights


def test_optimizer_decays_and_clips_only_the_regularised_group():
    torch.manual_seed(3)
    m = lq.QLAE(3, 16, 4)
    opt = lq.make_optimizer(m, lr=1e-2, weight_decay=0.5, clip=1.0)
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.zeros_like(p)                 # Adam's update is 0: only the decay acts
    opt.step()
    for n, p in m.named_parameters():
        factor = 1 - 1e-2 * 0.5 if lq.is_regularized(n, p) else 1.0
        torch.testing.assert_close(p.detach(), before[n] * factor)
    for p in m.parameters():
        p.grad = torch.full_like(p, 5.0)
    opt.step()
    reg_group, rest_group = opt.param_groups
    assert all(float(p.grad.max()) == 1.0 for p in reg_group["params"])    # clipped element-wise
    assert all(float(p.grad.max()) == 5.0 for p in rest_group["params"])   # plain Adam, no clip


def test_build_model_and_loss_for_reject_unknown_kinds():
    assert isinstance(lq.build_model("ae", 3, 16, 4), AE)
    assert isinstance(lq.build_model("vae", 3, 16, 4), VAE)
    with pytest.raises(ValueError):
        lq.build_model("vqvae", 3, 16, 4)
    with pytest.raises(ValueError):
        lq.loss_for("gan")


def test_training_reduces_the_loss():
    from replibook.train import fit
    torch.manual_seed(0)
    x = _x(64, seed=4) ** 3
    m = lq.QLAE(3, 16, 4)
    first = float(lq.qlae_loss(m, x).detach())
    fit(m, (x,), steps=30, batch_size=32, opt=lq.make_optimizer(m), loss_fn=lq.qlae_loss, progress=False)
    assert float(lq.qlae_loss(m, x).detach()) < first - 0.02


def test_representation_and_evaluate():
    torch.manual_seed(5)
    x = _x(60)
    f = torch.stack([torch.arange(60) % 3, torch.arange(60) % 4], 1)
    q = lq.QLAE(3, 16, 4)
    with torch.no_grad():                                # spread each codebook over its codes' range
        zc = q.encode(x)
        lo, hi = zc.min(0).values[:, None], zc.max(0).values[:, None]
        q.latent.values.copy_(lo + (hi - lo) * torch.linspace(0, 1, 10))
    rep = lq.representation(q, x, batch_size=25)
    assert rep["discrete"] and rep["z"].shape == (60, 4) and rep["indices"].shape == (60, 4)
    v = lq.VAE(3, 16, 4)
    a, b = lq.representation(v, x)["z"], lq.representation(v, x)["z"]
    np.testing.assert_array_equal(a, b)                  # the posterior mean: deterministic
    assert not lq.representation(v, x)["discrete"]
    r = lq.evaluate(q, x, f)
    assert r["infom_binned"] == pytest.approx(r["infom"])   # a quantized code is scored as it is
    for key in ("infom", "infoe", "infoc", "mig", "dci_d", "mse", "psnr", "values_used", "infom_binned"):
        assert np.isfinite(r[key]), key
    assert r["nmi_all"].shape == (2, 4)
    cheap = lq.evaluate(lq.AE(3, 16, 4), x, f, extra=False)
    assert np.isnan(cheap["infoe"]) and "mig" not in cheap


def test_codebook_traversals_and_nmi_order():
    torch.manual_seed(6)
    q = lq.QLAE(3, 16, 3, n_values=4)
    t = lq.codebook_traversals(q, torch.zeros(3), dims=[0, 2])
    assert t.shape == (2, 4, 3, 16, 16) and float(t.min()) >= 0 and float(t.max()) <= 1
    nmi = np.array([[0.1, 0.9, 0.0, 0.5], [0.8, 0.05, 0.0, 0.1]])
    order = lq.nmi_order(nmi, np.array([True, True, False, True]))
    assert order.tolist() == [1, 3, 0, 2]


def test_arms_and_tcvae_loss():
    assert lq.arm_settings("QLAE")["weight_decay"] == 0.1
    assert lq.arm_settings("QLAE-low-wd")["weight_decay"] == 1e-3
    assert lq.arm_settings("AE")["weight_decay"] == 1e-3
    assert lq.arm_settings("beta-VAE", beta=4.0)["beta"] == 4.0
    assert lq.arm_settings("beta-TCVAE")["kind"] == "tcvae"
    with pytest.raises(ValueError):
        lq.arm_settings("BioAE")
    torch.manual_seed(0)
    m = lq.build_model("tcvae", 3, 16, 4)
    loss = lq.loss_for("tcvae", beta=6.0, dataset_size=100)(m, _x())
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError):
        lq.loss_for("tcvae")


def test_train_arm_records_the_infom_curve():
    x = _x(64, seed=3)
    f = torch.stack([torch.arange(64) % 2, torch.arange(64) % 4], 1)
    model, hist = lq.train_arm("QLAE", x, x[:32], f[:32], steps=4, batch_size=16, n_latents=4,
                               seed=0, curve_every=2, progress=False)
    assert isinstance(model, lq.QLAE) and hist.steps == [0, 2, 4] and "infom" in hist.metrics


def test_inactive_latent_check_pruning_makes_infomec_insensitive():
    r = lq.inactive_latent_check((4, 3, 5), n=400, n_inactive=4, seed=0)
    assert r["infom_shift"] < 1e-9 and r["infoc_shift"] < 1e-9 and r["n_active"] == 3
    assert r["infom_shift_unpruned"] > 0.02          # what the pruning protects against


def test_load_shapes3d_file_npz_and_errors(tmp_path):
    from replibook.errors import DatasetMissing, ReplibookError
    rng = np.random.default_rng(0)
    n = 20
    values = [np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 10), np.linspace(0, 0.9, 10),
              np.linspace(0.75, 1.25, 8), np.arange(4.0), np.linspace(-30, 30, 15)]
    labels = np.stack([rng.choice(v, n) for v in values], 1)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "3dshapes.npz"
    np.savez(path, images=images, labels=labels)
    b = lq.load_shapes3d_file(path)
    assert b.x.shape == (n, 3, 8, 8) and float(b.x.max()) <= 1.0
    torch.testing.assert_close(b.x[3, :, 2, 5], torch.as_tensor(images[3, 2, 5] / 255.0, dtype=torch.float32))
    for k in range(6):                               # level index order follows the sorted values
        order = np.argsort(np.unique(labels[:, k]))
        assert np.array_equal(np.unique(labels[:, k])[b.factors[:, k].numpy()], labels[:, k])
        assert len(order) == b.levels[k]
    assert len(lq.load_shapes3d_file(path, n=5, seed=1)) == 5
    with pytest.raises(DatasetMissing):
        lq.load_shapes3d_file(tmp_path / "missing.h5")
    bad = tmp_path / "bad.npz"
    np.savez(bad, images=images[..., 0], labels=labels)
    with pytest.raises(ReplibookError):
        lq.load_shapes3d_file(bad)
    with pytest.raises(ValueError):
        lq.load_data("mpi3d", 10, 16)
    small = lq.load_data("dsprites", 12, 16, levels=(3, 4, 8, 8, 8))
    assert small.x.shape == (12, 1, 16, 16) and small.levels == [3, 4, 8, 8, 8]


def test_weight_norm_counts_only_regularised_parameters():
    m = lq.QLAE(3, 16, 4)
    with torch.no_grad():
        for n, p in m.named_parameters():
            p.fill_(0.0 if lq.is_regularized(n, p) else 3.0)
    assert lq.weight_norm(m) == 0.0

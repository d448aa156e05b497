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


# ----------------------------------------------------------------------------- full tier (ResNet / CIFAR path)
import pickle                                                    # noqa: E402

import numpy as np                                               # noqa: E402

from replibook.data.augment import simclr_augment               # noqa: E402
from replibook.errors import DatasetMissing                     # noqa: E402


def _tiny_encoder():
    return PH.cifar_encoder(width=4, blocks=(1, 1))              # 8-d features


def _fake_cifar100(root, n_train=40, n_test=20):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = [i % 4 for i in range(n)]                         # fine classes 0-3 -> superclasses 0, 0, 1, 1
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"fine_labels": fine,
             b"coarse_labels": [f // 2 for f in fine]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    return root


def _fake_cifar10(root, n=20):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        with open(folder / name, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
    return root


def test_cifar_encoder_is_the_resnet18_feature_extractor():
    enc = PH.cifar_encoder()
    assert enc.num_features == 512 and sum(p.numel() for p in enc.parameters()) == 11_173_962 - 5_130
    assert enc.net.conv1.stride == (1, 1) and enc(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert _tiny_encoder()(torch.rand(3, 3, 16, 16)).shape == (3, 8)


def test_supcon_pretrain_resnet_path_uint8_sgd_cosine_and_simclr():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 16, 16), generator=g, dtype=torch.uint8)
    y = torch.arange(16) % 2
    for labels in (y, None):                                     # SupCon, then SimCLR (nt_xent)
        torch.manual_seed(0)
        model = PH.SupConModel(_tiny_encoder(), PH.make_head("mlp", 8))
        before = [p.detach().clone() for p in model.parameters()]
        hist = PH.supcon_pretrain(model, x, labels, steps=2, batch_size=8, lr=0.05, tau=0.5, opt="sgd",
                                  schedule="cosine", weight_decay=1e-4, device="cpu",
                                  augment=lambda b, gen: simclr_augment(b, generator=gen))
        assert not model.training and hist.wall_s > 0
        after = list(model.parameters())
        assert all(torch.isfinite(p).all() for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(before, after))


def test_supcon_pretrain_feeds_uint8_as_pixels_in_0_1():
    seen = []

    def aug(b, gen):
        seen.append(b)
        return b
    x = torch.full((4, 3, 8, 8), 255, dtype=torch.uint8)
    model = PH.SupConModel(_tiny_encoder(), PH.make_head("none", 8))
    PH.supcon_pretrain(model, x, None, steps=1, batch_size=4, augment=aug, device="cpu")
    assert seen[0].dtype == torch.float32 and float(seen[0].max()) == 1.0


def test_representations_per_head_kind_batched_and_uint8():
    torch.manual_seed(0)
    x8 = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    xf = x8.float() / 255
    mlp = PH.SupConModel(_tiny_encoder(), PH.make_head("mlp", 8)).eval()
    reps = PH.representations(mlp, xf, batch_size=3)
    assert set(reps) == {"pre", "hidden", "post"}
    with torch.no_grad():
        assert torch.allclose(reps["post"], mlp(xf), atol=1e-5)
        assert torch.allclose(reps["pre"], mlp.encoder(xf), atol=1e-5)
        assert torch.allclose(reps["hidden"], mlp.projector.net.features(mlp.encoder(xf)), atol=1e-5)
    assert torch.allclose(PH.representations(mlp, x8, batch_size=100)["pre"], reps["pre"], atol=1e-5)
    fixed = PH.SupConModel(_tiny_encoder(), PH.make_head("fixed_diag", 8, kappa=2.0))
    r = PH.representations(fixed, xf)
    assert set(r) == {"pre", "post"} and torch.allclose(r["post"][:, 1], r["pre"][:, 1] / 2)
    assert set(PH.representations(PH.SupConModel(_tiny_encoder(), PH.make_head("none", 8)), xf)) == {"pre"}


def test_full_code_path_supcon_on_fake_cifar100(tmp_path):
    data = PH.load_supcon_data("cifar100", root=_fake_cifar100(tmp_path), device="cpu")
    assert data["x_tr"].shape == (40, 3, 32, 32)
    assert torch.equal(data["coarse_tr"], data["fine_tr"] // 2)     # superclasses from the files
    targets = {"fine_acc": (data["fine_tr"], data["fine_te"]), "coarse_acc": (data["coarse_tr"], data["coarse_te"])}
    kw = dict(labels=data["coarse_tr"], targets=targets, encoder_fn=_tiny_encoder, dim=8, kappa=1.02,
              layers=("pre", "hidden", "post"), steps=2, batch_size=16, lr=0.05, tau=0.1, opt="sgd",
              schedule="cosine", weight_decay=1e-4, probe="lbfgs", eval_batch=16, seed=0, device="cpu",
              augment=lambda b, g: simclr_augment(b, generator=g))
    got = {kind: PH.head_experiment(kind, data["x_tr"], data["x_te"], **kw) for kind in ("mlp", "none", "fixed_diag")}
    assert set(got["mlp"]) == {"pre", "hidden", "post", "_wall_s"}
    assert set(got["none"]) == {"pre", "_wall_s"} and set(got["fixed_diag"]) == {"pre", "_wall_s"}
    for res in got.values():
        for layer, accs in res.items():
            if layer != "_wall_s":
                assert set(accs) == {"fine_acc", "coarse_acc"} and all(0 <= a <= 1 for a in accs.values())
    again = PH.head_experiment("mlp", data["x_tr"], data["x_te"], **kw)
    assert {k: v for k, v in again.items() if k != "_wall_s"} == {k: v for k, v in got["mlp"].items() if k != "_wall_s"}
    assert PH.row_name("mlp", "hidden") == "learned head: hidden" and PH.row_name("none", "pre") == "no head"


def test_full_code_path_simclr_on_fake_cifar10(tmp_path):
    data = PH.load_supcon_data("cifar10", root=_fake_cifar10(tmp_path), device="cpu")
    assert data["coarse_tr"] is None and data["x_tr"].shape == (100, 3, 32, 32)
    res = PH.head_experiment("mlp", data["x_tr"], data["x_te"], labels=None,
                             targets={"acc": (data["fine_tr"], data["fine_te"])}, encoder_fn=_tiny_encoder,
                             dim=8, layers=("pre", "post"), steps=2, batch_size=32, lr=0.05, tau=0.5,
                             opt="sgd", schedule="cosine", probe="lbfgs", device="cpu",
                             augment=lambda b, g: simclr_augment(b, generator=g))
    assert set(res) == {"pre", "post", "_wall_s"} and 0 <= res["pre"]["acc"] <= 1


def test_missing_full_datasets_raise_dataset_missing(tmp_path):
    for name in ("cifar100", "cifar10"):
        with pytest.raises(DatasetMissing, match="CIFAR-10.*REPLIBOOK_DATA"):
            PH.load_supcon_data(name, root=tmp_path / "nowhere", device="cpu")
    with pytest.raises(ValueError, match="unknown part-B dataset"):
        PH.load_supcon_data("imagenet")

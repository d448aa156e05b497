"""`methods.cvae_attributes`: the CVAE / GSNN / hybrid objectives, the deterministic baseline, the
compositional split and the probe-based metrics."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from replibook.data.procedural import shapes3d  # noqa: E402
from replibook.losses.vae import elbo_loss  # noqa: E402
from replibook.methods import cvae_attributes as C  # noqa: E402
from replibook.models.vae import CVAE, VAE  # noqa: E402

# float() of a loss that carries a graph: fine here, the graphs are dropped right after
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")

LEVELS = [6, 6, 6, 4, 4, 5]
NAMES = shapes3d.FACTOR_NAMES


def _cvae(prior="learned", size=16, cond_dim=5, seed=0):
    torch.manual_seed(seed)
    return CVAE(3, size, 4, cond_dim, prior=prior, widths=(8, 8), fc=16, prior_hidden=8)


def _batch(n=6, size=16, cond_dim=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    y = torch.nn.functional.one_hot(torch.randint(0, cond_dim, (n,), generator=g), cond_dim).float()
    return x, y


# --------------------------------------------------------------------------- objectives

def test_cvae_loss_is_the_shared_elbo_with_the_conditional_prior():
    model, (x, y) = _cvae(), _batch()
    for beta in (1.0, 4.0):
        torch.manual_seed(5)
        ours = C.cvae_loss(model, x, y, beta).detach()
        torch.manual_seed(5)
        shared = elbo_loss(model(x, y), x, beta=beta, likelihood="bernoulli")
        assert float(ours) == pytest.approx(float(shared), rel=1e-6)
    torch.manual_seed(5)
    b1 = C.cvae_loss(model, x, y, 1.0)
    torch.manual_seed(5)
    b4 = C.cvae_loss(model, x, y, 4.0)
    assert float(b4) > float(b1)                      # KL > 0, weighted 4x


def test_gsnn_loss_uses_the_prior_network_not_the_recognition_network():
    model, (x, y) = _cvae(), _batch()
    model.zero_grad()
    C.gsnn_loss(model, x, y).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.encoder.parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.prior_net.parameters())
    assert all(p.grad is not None for p in model.decoder.parameters())
    # standard prior: the GSNN term decodes z ~ N(0, I)
    std = _cvae("standard")
    torch.manual_seed(3)
    ours = C.gsnn_loss(std, x, y)
    torch.manual_seed(3)
    z = torch.randn(len(x), std.latent_dim)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(std.decode(z, y), x, reduction="none")
    assert float(ours) == pytest.approx(float(ref.flatten(1).sum(1).mean()), rel=1e-6)


def test_hybrid_loss_is_the_convex_combination():
    model, (x, y) = _cvae(), _batch()
    torch.manual_seed(7)
    a = C.cvae_loss(model, x, y, 2.0)
    b = C.gsnn_loss(model, x, y)
    torch.manual_seed(7)
    h = C.hybrid_loss(model, x, y, beta=2.0, alpha=0.5)
    assert float(h) == pytest.approx(0.5 * float(a) + 0.5 * float(b), rel=1e-6)
    torch.manual_seed(7)
    assert float(C.hybrid_loss(model, x, y, beta=2.0, alpha=1.0)) == pytest.approx(float(a), rel=1e-6)
    torch.manual_seed(9)
    g = C.gsnn_loss(model, x, y)
    torch.manual_seed(9)
    assert float(C.hybrid_loss(model, x, y, alpha=0.0)) == pytest.approx(float(g), rel=1e-6)
    with pytest.raises(ValueError, match="convex"):
        C.hybrid_loss(model, x, y, alpha=1.5)


def test_vae_loss_is_the_shared_elbo():
    torch.manual_seed(0)
    vae = VAE(3, 16, 4, widths=(8, 8), fc=16)
    x, _ = _batch()
    torch.manual_seed(2)
    ours = C.vae_loss(vae, x, 3.0)
    torch.manual_seed(2)
    assert float(ours) == pytest.approx(float(elbo_loss(vae(x), x, beta=3.0)), rel=1e-6)


def test_deterministic_cnn_learns_the_conditional_mean_of_a_two_mode_condition():
    # one condition, two different images half of the time each: MSE's optimum is their average,
    # the "single blurry output" of the paper's motivation
    torch.manual_seed(0)
    x1, x2 = torch.full((3, 8, 8), 0.1), torch.full((3, 8, 8), 0.1)
    x2[:, :4] = 0.9                                   # top half differs
    x = torch.stack([x1, x2] * 16)
    y = torch.ones(len(x), 1)
    model = C.AttributeCNN(3, 8, 1, widths=(8, 8), fc=16)
    from replibook.train import fit
    fit(model, (x, y), steps=300, batch_size=32, lr=1e-2,
        loss_fn=lambda m, xb, yb: C.deterministic_loss(m, xb, yb), progress=False)
    with torch.no_grad():
        out = torch.sigmoid(model.generate(y[:2]))
    assert torch.equal(out[0], out[1])                # no latent: one output per condition
    assert torch.allclose(out[0], (x1 + x2) / 2, atol=0.05)


# --------------------------------------------------------------------------- conditions and split

def test_one_hot_condition_concatenates_codes():
    lv = torch.tensor([[0, 5, 2], [3, 0, 5]])
    y = C.one_hot_condition(lv, [4, 6, 6])
    assert y.shape == (2, 16) and torch.equal(y.sum(1), torch.tensor([3.0, 3.0]))
    assert y[0, 0] == 1 and y[0, 4 + 5] == 1 and y[0, 10 + 2] == 1
    assert y[1, 3] == 1 and y[1, 4] == 1 and y[1, 15] == 1
    with pytest.raises(ValueError, match="columns"):
        C.one_hot_condition(lv, [4, 6])


def test_compositional_holdout_keeps_every_shape_and_hue_in_training():
    for seed in range(5):
        pairs = C.compositional_holdout(4, 6, 0.2, seed=seed)
        assert pairs.shape == (5, 2) and len({tuple(p) for p in pairs}) == 5
        train = [(s, h) for s in range(4) for h in range(6) if (s, h) not in {tuple(p) for p in pairs}]
        assert {s for s, _ in train} == set(range(4)) and {h for _, h in train} == set(range(6))
    assert np.array_equal(C.compositional_holdout(4, 6, 0.2, 3), C.compositional_holdout(4, 6, 0.2, 3))
    with pytest.raises(ValueError):
        C.compositional_holdout(2, 2, 0.9)


def test_condition_grid_and_held_out_mask_agree():
    pairs = C.compositional_holdout(4, 6, 0.2, seed=0)
    grid_in, grid_out = C.condition_grid([4, 6, 6], pairs)
    assert len(grid_in) == 144 - 5 * 6 and len(grid_out) == 5 * 6
    full = np.zeros((len(grid_out), 6), dtype=np.int64)
    full[:, C.factor_index(NAMES, C.CONDITION)] = grid_out.numpy()
    assert C.held_out_mask(torch.as_tensor(full), NAMES, pairs).all()
    full[:, C.factor_index(NAMES, C.CONDITION)] = grid_in[:30].numpy()
    assert not C.held_out_mask(torch.as_tensor(full), NAMES, pairs).any()


def test_make_data_excludes_held_out_pairs_from_training():
    pairs = C.compositional_holdout(4, 6, 0.2, seed=1)
    data = C.make_data(shapes3d.make, 300, 60, size=16, levels=LEVELS, pairs=pairs, seed=0)
    assert len(data["train"]) == 300 and len(data["test"]) == 60 and len(data["heldout"]) == 60
    assert not C.held_out_mask(data["train"].factors, NAMES, pairs).any()
    assert not C.held_out_mask(data["test"].factors, NAMES, pairs).any()
    assert C.held_out_mask(data["heldout"].factors, NAMES, pairs).all()
    assert data["train"].x.shape == (300, 3, 16, 16)


def test_expand_grid_repeats_conditions_and_draws_nuisance_in_range():
    grid = torch.tensor([[1, 2, 3], [0, 5, 0]])
    f = C.expand_grid(grid, 4, NAMES, LEVELS, seed=0)
    assert f.shape == (8, 6)
    cc = C.factor_index(NAMES, C.CONDITION)
    assert torch.equal(f[:, cc], grid.repeat_interleave(4, 0))
    assert ((f >= 0) & (f < torch.tensor(LEVELS))).all()


# --------------------------------------------------------------------------- sampling and ELBO

def test_generate_samples_vary_for_a_cvae_are_seeded_and_the_vae_ignores_y():
    model = _cvae()
    y = torch.eye(5)[[0] * 4]
    a, b = C.generate(model, y, seed=0), C.generate(model, y, seed=0)
    assert torch.equal(a, b) and a.shape == (4, 3, 16, 16) and a.min() >= 0 and a.max() <= 1
    assert (a[0] - a[1]).abs().max() > 1e-4                         # z ~ p(z|y) differs per row
    torch.manual_seed(0)
    vae = VAE(3, 16, 4, widths=(8, 8), fc=16)
    assert torch.equal(C.generate(vae, torch.eye(5)[[0, 1]], seed=3), C.generate(vae, torch.eye(5)[[4, 2]], seed=3))
    cnn = C.AttributeCNN(3, 16, 5, widths=(8, 8), fc=16)
    s = C.generate(cnn, y, seed=0)
    assert torch.equal(s[0], s[3])


def test_negative_elbo_matches_a_manual_computation():
    model, (x, y) = _cvae(), _batch(n=10)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        mu, lv = model.encode(x, y)
        mp, lp = model.prior(y)
        z = mu + torch.exp(0.5 * lv) * torch.randn(mu.shape, generator=gen)
        rec = torch.nn.functional.binary_cross_entropy_with_logits(model.decode(z, y), x, reduction="none")
        kl = 0.5 * (lp - lv + (lv.exp() + (mu - mp) ** 2) / lp.exp() - 1).sum(1)
        manual = float((rec.flatten(1).sum(1) + kl).mean())
    assert C.negative_elbo(model, x, y, seed=4) == pytest.approx(manual, rel=1e-5)
    chunked = C.negative_elbo(model, x, y, seed=4, batch_size=3)     # other noise draws, same quantity
    assert chunked == pytest.approx(manual, rel=0.05)
    with pytest.raises(TypeError):
        C.negative_elbo(C.AttributeCNN(3, 16, 5, widths=(8, 8), fc=16), x, y)


# --------------------------------------------------------------------------- metrics

def test_conditional_accuracy_and_diversity_known_answers():
    cc, nc = C.factor_index(NAMES, C.CONDITION), C.factor_index(NAMES, C.NUISANCE)
    # columns: floor, wall, object, scale, shape, orientation
    pred = torch.tensor([[1, 0, 2, 0, 3, 0],       # condition (shape 3, object 2, floor 1)
                         [1, 1, 2, 1, 3, 1],
                         [1, 1, 2, 0, 3, 2],
                         [0, 1, 2, 0, 3, 3]])      # wrong floor hue
    target = torch.tensor([[3, 2, 1]] * 4)          # (shape, object hue, floor hue)
    assert C.conditional_accuracy(pred, target, cc) == pytest.approx(0.75)
    div = C.nuisance_diversity(pred, 4, nc)
    # wall {0,1} -> 2, scale {0,1} -> 2, orientation {0,1,2,3} -> 4; tuples: 4 distinct
    assert div["per_factor"] == [2.0, 2.0, 4.0]
    assert div["diversity"] == pytest.approx(8 / 3) and div["distinct_tuples"] == 4
    same = pred[[0, 0, 0, 0]]
    assert C.nuisance_diversity(same, 2, nc)["diversity"] == 1.0
    with pytest.raises(ValueError, match="groups"):
        C.nuisance_diversity(pred[:3], 2, nc)


class _OracleProbe:
    """Reads the factors off a lookup of the images' first pixel (a perfect probe for the test)."""

    def __init__(self, factors):
        self.factors = factors

    def predict_factors(self, x):
        return self.factors[x[:, 0, 0, 0].long()]

    def embed_images(self, x):
        return self.factors[x[:, 0, 0, 0].long()].float()


def test_evaluate_samples_with_a_perfect_probe_on_real_scenes():
    grid = torch.tensor([[0, 1, 2], [3, 5, 0]])
    factors = C.expand_grid(grid, 16, NAMES, LEVELS, seed=0)
    images = torch.arange(len(factors)).float().view(-1, 1, 1, 1).expand(-1, 3, 2, 2).clone()
    probe = _OracleProbe(factors)
    cc, nc = C.factor_index(NAMES, C.CONDITION), C.factor_index(NAMES, C.NUISANCE)
    m = C.evaluate_samples(images, factors[:, cc], probe, n_per=16, cond_cols=cc, nuisance_cols=nc,
                           real_features=probe.embed_images(images))
    assert m["cond_acc"] == 1.0 and m["fid_lite"] == pytest.approx(0.0, abs=1e-8)
    assert m["acc_shape"] == m["acc_object_hue"] == m["acc_floor_hue"] == 1.0
    assert 3.0 < m["diversity"] <= 5.0 and m["distinct_tuples"] > 10
    # a generator that ignores the condition: wrong targets
    m2 = C.evaluate_samples(images, factors[:, cc].flip(0), probe, n_per=16, cond_cols=cc, nuisance_cols=nc)
    assert m2["cond_acc"] == 0.0
    wrong_shape = factors[:, cc].clone()
    wrong_shape[:16, 0] = 2                                         # first condition: shape 0 -> asked for 2
    m3 = C.evaluate_samples(images, wrong_shape, probe, n_per=16, cond_cols=cc, nuisance_cols=nc)
    assert m3["cond_acc"] == 0.5 and m3["acc_shape"] == 0.5 and m3["acc_object_hue"] == 1.0


def test_real_reference_with_the_untrained_probe_runs_and_is_bounded():
    from replibook import zoo
    probe = zoo.load("probe_shapes3d", cfg={"image_size": 16, "levels": LEVELS}, pretrained=False, device="cpu")
    grid = torch.tensor([[0, 1, 2], [3, 5, 0]])
    ref = C.real_reference(shapes3d.render, grid, probe, n_per=4, factor_names=NAMES, levels=LEVELS, size=16,
                           seed=0)
    assert 0.0 <= ref["cond_acc"] <= 1.0 and 1.0 <= ref["diversity"] <= 4.0


# --------------------------------------------------------------------------- training and figures

@pytest.mark.parametrize("arm", C.ARMS)
def test_every_arm_trains_a_few_steps(arm):
    x, y = _batch(n=32, size=16, cond_dim=5)
    model, hist = C.train_arm(arm, x, y, beta=2.0, alpha=0.5, steps=4, batch_size=8, lr=1e-3, seed=0,
                              model_kw=dict(latent_dim=4, widths=(8, 8), fc=16), progress=False)
    expected = {"CNN": C.AttributeCNN, "VAE": VAE, "CVAE-std": CVAE, "CVAE-learned": CVAE}[arm]
    assert isinstance(model, expected)
    if isinstance(model, CVAE):
        assert model.prior_kind == ("standard" if arm == "CVAE-std" else "learned")
    with pytest.raises(ValueError, match="unknown arm"):
        C.build_model("GAN", size=16, cond_dim=5, latent_dim=4, widths=(8, 8), fc=16)


def test_train_arm_is_deterministic_for_a_seed():
    x, y = _batch(n=32, size=16, cond_dim=5)
    kw = dict(beta=1.0, steps=3, batch_size=8, lr=1e-3, model_kw=dict(latent_dim=4, widths=(8, 8), fc=16),
              progress=False)
    a, _ = C.train_arm("CVAE-learned", x, y, seed=1, **kw)
    b, _ = C.train_arm("CVAE-learned", x, y, seed=1, **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_sample_rows_and_grid_figure():
    model = _cvae(cond_dim=16)
    rows = torch.tensor([[0, 1, 2], [3, 5, 5]])
    imgs = C.sample_rows(model, rows, [4, 6, 6], n_cols=3, seed=0)
    assert imgs.shape == (2, 3, 3, 16, 16)
    fig, ax = plt.subplots()
    C.plot_sample_grid(ax, imgs, row_labels=["a", "b"], title="t")
    assert ax.get_title() == "t"
    plt.close(fig)


def test_evaluate_arm_reports_every_metric_and_the_cnn_has_one_output_per_condition():
    from replibook import zoo
    probe = zoo.load("probe_shapes3d", cfg={"image_size": 16, "levels": LEVELS}, pretrained=False, device="cpu")
    pairs = C.compositional_holdout(4, 6, 0.2, seed=0)
    grid_in, grid_out = C.condition_grid([4, 6, 6], pairs)
    data = C.make_data(shapes3d.make, 40, 40, size=16, levels=LEVELS, pairs=pairs, seed=0)
    cc, nc = C.factor_index(NAMES, C.CONDITION), C.factor_index(NAMES, C.NUISANCE)
    kw = dict(grid_in=grid_in[:6], grid_out=grid_out[:3], condition_levels=[4, 6, 6], n_per=4, cond_cols=cc,
              nuisance_cols=nc, real_features=probe.embed_images(data["test"].x), test=data["test"], seed=0)
    mk = dict(size=16, cond_dim=16, latent_dim=4, widths=(8, 8), fc=16)
    cnn = C.evaluate_arm(C.build_model("CNN", **mk), probe, **kw)
    assert set(cnn) == {"cond_acc", "acc_shape", "acc_object_hue", "acc_floor_hue", "diversity",
                        "distinct_tuples", "fid_lite", "cond_acc_heldout"}
    assert cnn["diversity"] == 1.0 and cnn["distinct_tuples"] == 1.0
    cvae = C.evaluate_arm(C.build_model("CVAE-learned", **mk), probe, **kw)
    assert "neg_elbo" in cvae and cvae["neg_elbo"] > 0 and cvae["fid_lite"] >= 0

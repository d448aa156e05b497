"""analysis.latents: taxonomy of VAE latents, traversals, 2-D embeddings."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from replibook.analysis import latents  # noqa: E402


def _posterior(n=2000, seed=0):
    """Known latents: 0-1 active, 2-3 passive, 4 mixed (active on 40% of x), 5 wide but moving."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.zeros(n, 6)
    logvar = torch.zeros(n, 6)
    mu[:, :2] = torch.randn(n, 2, generator=g)
    logvar[:, :2] = np.log(0.05) + 0.1 * torch.randn(n, 2, generator=g)
    mu[:, 2:4] = 0.01 * torch.randn(n, 2, generator=g)
    logvar[:, 2:4] = 0.02 * torch.randn(n, 2, generator=g)            # sigma^2 ~ 1
    on = torch.rand(n, generator=g) < 0.4
    mu[:, 4] = torch.where(on, torch.randn(n, generator=g), torch.zeros(n))
    logvar[:, 4] = torch.where(on, torch.full((n,), np.log(0.1)), torch.zeros(n))
    mu[:, 5] = 0.5 * torch.randn(n, generator=g)                      # Var[mu] = 0.25, sigma^2 = 1
    return mu, logvar


def test_taxonomy_known_answer():
    mu, logvar = _posterior()
    tax = latents.taxonomy(mu, logvar)
    assert tax.labels == ["active", "active", "passive", "passive", "mixed", "mixed"]
    assert tax.counts() == {"active": 2, "passive": 2, "mixed": 2}
    assert tax.active.tolist() == [True, True, False, False, False, False]
    assert tax.passive.sum() == 2 and tax.mixed.sum() == 2
    assert abs(tax.frac_low_var[4] - 0.4) < 0.05
    assert tax.table().shape == (6, 5)
    assert tax.thresholds["var_threshold"] == 0.8


def test_taxonomy_thresholds_are_arguments():
    mu, logvar = _posterior()
    # with a loose passive mean threshold, latent 5 (Var[mu] = 0.25) becomes passive
    assert latents.taxonomy(mu, logvar, mean_var_threshold=1.0).labels[5] == "passive"
    # with high = 0.3, the latent active on 40% of x counts as active
    assert latents.taxonomy(mu, logvar, high=0.3).labels[4] == "active"
    # a variance threshold below every sigma^2 makes nothing active
    assert latents.taxonomy(mu, logvar, var_threshold=0.01).counts()["active"] == 0
    # a prior-like latent whose variance straddles the threshold (half 0.6, half 1.3, E = 0.95):
    # passive by the data-set rule, mixed under the strict per-input rule (low=0.05)
    straddle = logvar.clone()
    straddle[:, 2] = torch.where(torch.arange(len(mu)) % 2 == 0, torch.tensor(np.log(0.6)),
                                 torch.tensor(np.log(1.3))).float()
    assert latents.taxonomy(mu, straddle).labels[2] == "passive"
    assert latents.taxonomy(mu, straddle, low=0.05).labels[2] == "mixed"
    assert latents.taxonomy(mu, logvar, low=0.05).labels[3] == "passive"
    with pytest.raises(ValueError):
        latents.taxonomy(mu, logvar[:, :3])
    with pytest.raises(ValueError):
        latents.taxonomy(mu, logvar, low=0.9, high=0.1)


def test_taxonomy_accepts_numpy():
    mu, logvar = _posterior(300)
    assert latents.taxonomy(mu.numpy(), logvar.numpy()).labels == latents.taxonomy(mu, logvar).labels


def test_traversal_sets_one_latent():
    decode = lambda z: z * 2.0            # noqa: E731  identity-like decoder: (B, D) -> (B, D)
    z0 = torch.tensor([1.0, 2.0, 3.0])
    out = latents.traversal(decode, z0, 1, [-1.0, 0.0, 1.0])
    assert out.shape == (3, 3)
    assert torch.allclose(out[:, 1], torch.tensor([-2.0, 0.0, 2.0]))
    assert torch.allclose(out[:, 0], torch.full((3,), 2.0)) and torch.allclose(out[:, 2], torch.full((3,), 6.0))
    many = latents.traversal(decode, torch.zeros(4, 3), 2, torch.linspace(-2, 2, 5))
    assert many.shape == (4, 5, 3)
    with pytest.raises(ValueError):
        latents.traversal(decode, z0, 3, [0.0])


def _image_decoder(z):
    """(B, D) -> (B, 1, 8, 8): brightness set by z0, a bar whose position follows z1."""
    b = z.shape[0]
    img = torch.sigmoid(z[:, 0]).view(b, 1, 1, 1).expand(b, 1, 8, 8).clone()
    col = ((z[:, 1].clamp(-2, 2) + 2) / 4 * 7).round().long()
    img[torch.arange(b), 0, :, col] = 1.0
    return img


def test_traversal_grid_images():
    fig, ax = plt.subplots()
    out = latents.traversal_grid(ax, _image_decoder, torch.zeros(3), dims=[0, 1, 2],
                                 values=torch.linspace(-2, 2, 5), highlight=[2])
    assert out is fig
    img = ax.get_images()[0].get_array()
    assert img.shape == (3 * 9 - 1, 5 * 9 - 1)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["z0", "z1", "z2"]
    # row 0 varies in brightness, row 2 (an unused latent) is constant across columns
    row0 = [img[0:8, 9 * k:9 * k + 8].mean() for k in range(5)]
    row2 = [img[18:26, 9 * k:9 * k + 8] for k in range(5)]
    assert np.all(np.diff(row0) > 0)
    assert all(np.array_equal(row2[0], r) for r in row2)
    plt.close(fig)
    fig = plt.figure()
    latents.traversal_grid(fig, lambda z: _image_decoder(z).repeat(1, 3, 1, 1), torch.zeros(2),
                           [0, 1], [-1.0, 1.0])
    assert fig.axes[0].get_images()[0].get_array().shape == (17, 17, 3)
    plt.close(fig)


def test_traversal_grid_series():
    t = torch.linspace(0, 1, 20)
    decode = lambda z: (z[:, :1] * t + z[:, 1:2]).unsqueeze(1)   # noqa: E731  (B, 1, T)
    fig = plt.figure()
    latents.traversal_grid(fig, decode, torch.zeros(2), [0, 1], [-1.0, 0.0, 1.0])
    assert len(fig.axes) == 2 and all(len(a.lines) == 3 for a in fig.axes)
    plt.close(fig)
    fig, ax = plt.subplots()
    latents.traversal_grid(ax, lambda z: decode(z)[:, 0], torch.zeros(2), [0, 1], [-1.0, 1.0])
    assert len(ax.lines) == 4
    plt.close(fig)


def test_embed2d():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 5))
    a[:30, 0] += 10                      # two clusters along the first axis
    for method in ("pca", "tsne"):
        e = latents.embed2d(torch.as_tensor(a), method=method)
        assert e.shape == (60, 2)
        # the clusters separate in 2-D
        d = np.linalg.norm(e[:30].mean(0) - e[30:].mean(0))
        assert d > 2 * max(e[:30].std(0).max(), e[30:].std(0).max())
    pca = latents.embed2d(a, "pca")
    assert abs(pca[:, 0].var() / a.var(0).sum()) > 0.5     # first component carries the split
    with pytest.raises(ValueError):
        latents.embed2d(a, "umap")

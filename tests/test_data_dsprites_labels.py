"""dsprites' ``label_sampler``: long-tailed regression labels with uniform nuisances."""
import numpy as np
import pytest
import torch
from scipy import stats

from replibook.data.procedural import dsprites, sample_factor_grid

LEVELS = (1, 3, 360, 4, 4)            # one arrow, orientation in whole degrees
ARROW = ("arrow",)


def _chi2_pvalue(counts, p):
    """Pearson chi-square goodness of fit, pooling cells with expected count < 5 into one."""
    expected = p * counts.sum()
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    keep = exp > 0
    return stats.chisquare(obs[keep], exp[keep]).pvalue


def test_exponential_density_shape():
    p = dsprites.exponential_density(360, decay=15, support=90)
    assert p.shape == (360,) and np.isclose(p.sum(), 1) and (p[90:] == 0).all()
    # the ratio between neighbouring levels is exp(-1/15)
    assert np.allclose(p[1:90] / p[:89], np.exp(-1 / 15))
    u = dsprites.uniform_density(360, support=90)
    assert np.allclose(u[:90], 1 / 90) and (u[90:] == 0).all()
    with pytest.raises(ValueError):
        dsprites.exponential_density(10, decay=0)
    with pytest.raises(ValueError):
        dsprites.uniform_density(10, support=11)


def test_label_histogram_follows_the_requested_density():
    p = dsprites.exponential_density(360, decay=15, support=90)
    rng = np.random.default_rng(0)
    fac = dsprites.sample_factors(20000, LEVELS, rng, label_sampler=p)
    counts = np.bincount(fac[:, 2], minlength=360)
    assert counts[90:].sum() == 0
    assert _chi2_pvalue(counts, p) > 1e-3
    # the same test rejects a uniform density (i.e. it has power)
    assert _chi2_pvalue(counts, dsprites.uniform_density(360, 90)) < 1e-10
    # mean of a truncated geometric with ratio r = exp(-1/15) over 0..89
    r, k = np.exp(-1 / 15), np.arange(90)
    mean = (k * r ** k).sum() / (r ** k).sum()
    assert abs(fac[:, 2].mean() - mean) < 4 * np.sqrt((p[:90] * (k - mean) ** 2).sum() / 20000)
    # nuisances stay uniform and independent of the label
    for col in (1, 3, 4):
        c = np.bincount(fac[:, col], minlength=LEVELS[col])
        assert _chi2_pvalue(c, np.full(LEVELS[col], 1 / LEVELS[col])) > 1e-3
    head, tail = fac[:, 2] < 10, fac[:, 2] >= 30
    table = np.stack([np.bincount(fac[head, 3], minlength=4), np.bincount(fac[tail, 3], minlength=4)])
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_make_with_label_sampler_returns_labels_and_images():
    p = dsprites.exponential_density(360, decay=15, support=90)
    b = dsprites.make(400, seed=3, size=16, levels=LEVELS, shapes=ARROW, label_sampler=p)
    assert b.y is not None and b.y.dtype == torch.float32 and b.y.shape == (400,)
    deg = torch.rad2deg(b.y)
    assert torch.allclose(deg, b.factors[:, 2].float(), atol=1e-3)
    assert float(deg.max()) < 90
    assert torch.equal(dsprites.render(b.factors, 16, LEVELS, ARROW), b.x)
    assert b.info["label_factor"] == "orientation"
    # more head than tail samples, as requested
    assert (b.factors[:, 2] < 15).sum() > 3 * (b.factors[:, 2] >= 45).sum()


def test_callable_sampler_and_other_label_factor():
    def sampler(n, rng):
        return np.full(n, 2)
    b = dsprites.make(50, seed=0, size=16, levels=(1, 6, 8, 4, 4), shapes=ARROW,
                      label_sampler=sampler, label_factor="scale")
    assert (b.factors[:, 1] == 2).all()
    assert torch.allclose(b.y, torch.full((50,), 0.7))          # linspace(0.5, 1, 6)[2]
    with pytest.raises(ValueError):
        dsprites.make(5, size=16, levels=(1, 6, 8, 4, 4), shapes=ARROW, label_sampler=np.ones(3))
    with pytest.raises(ValueError):
        dsprites.make(5, size=16, levels=(1, 6, 8, 4, 4), shapes=ARROW, label_sampler=np.ones(8),
                      label_factor="colour")
    with pytest.raises(ValueError):
        dsprites.make(5, size=16, levels=(1, 6, 8, 4, 4), shapes=ARROW,
                      label_sampler=lambda n, rng: np.full(n, 8))


def test_default_behaviour_unchanged():
    # without label_sampler: the exact draws of sample_factor_grid with the seed's generator, no labels
    b = dsprites.make(64, seed=5, size=16)
    expected = sample_factor_grid(64, dsprites.DEFAULT_LEVELS, np.random.default_rng(5))
    assert np.array_equal(b.factors.numpy(), expected)
    assert b.y is None
    assert set(b.info) == {"size", "levels", "shapes", "seed"}


def test_determinism():
    p = dsprites.exponential_density(360, decay=15, support=90)
    a, b, c = (dsprites.make(100, seed=s, size=16, levels=LEVELS, shapes=ARROW, label_sampler=p)
               for s in (1, 1, 2))
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.factors, c.factors)
    # no global random state is read or changed
    np.random.seed(0)
    torch.manual_seed(0)
    before = (np.random.rand(), torch.rand(1).item())
    np.random.seed(0)
    torch.manual_seed(0)
    dsprites.make(10, seed=1, size=16, levels=LEVELS, shapes=ARROW, label_sampler=p)
    assert (np.random.rand(), torch.rand(1).item()) == before

"""Procedural multivariate series with known factors (data.procedural.mts_factors)."""
import math

import numpy as np
import pytest
import torch

from replibook.data.procedural import all_factor_combinations
from replibook.data.procedural import mts_factors as M

BASE = np.array([[2, 2, 1, 0, 0, 0]])      # frequency 3 cycles, amplitude 1, falling trend


def vary(k, levels=M.LEVELS):
    """Factor rows equal to BASE except factor k, which runs over all its levels."""
    rows = np.repeat(BASE, levels[k], axis=0)
    rows[:, k] = np.arange(levels[k])
    return rows


def without_trend(rows, x):
    """The series minus their (known) shared linear trend: the oscillation alone."""
    T = x.shape[-1]
    trend = M.factor_values(rows)[:, 2, None] * (np.arange(T) / T - (T - 1) / (2 * T))
    return x - trend[:, None, :]


def circ_dist(a, b):
    d = np.mod(a - b, 2 * math.pi)
    return np.minimum(d, 2 * math.pi - d)


def test_shapes_types_and_card():
    b = M.make(50, seed=0, size=32)
    assert b.x.shape == (50, 3, 32) and b.x.dtype == torch.float32
    assert b.factors.shape == (50, 6) and b.factors.dtype == torch.long
    assert b.factor_names == ["frequency", "amplitude", "trend", "phase", "noise", "coupling"]
    assert b.levels == [5, 5, 4, 4, 3, 2]
    assert b.extra["clean"].shape == b.x.shape and b.extra["values"].shape == (50, 6)
    assert bool((b.factors >= 0).all()) and bool((b.factors < torch.tensor(b.levels)).all())
    card = b.card()
    assert card["x_shape"] == [3, 32] and card["factors"]["coupling"] == 2
    assert M.make(4, seed=0, size=64).x.shape == (4, 3, 64)


def test_same_seed_same_data_other_seed_other_data_global_state_untouched():
    a, b, c = M.make(40, seed=3), M.make(40, seed=3), M.make(40, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.x, c.x)
    torch.manual_seed(0)
    np.random.seed(0)
    before = (torch.rand(1).item(), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    M.make(5, seed=9)
    assert (torch.rand(1).item(), np.random.rand()) == before


def test_factor_round_trip_render_and_measure():
    b = M.make(600, seed=1)
    # the clean series is exactly the rendering of the stored factor levels
    assert np.allclose(M.render(b.factors, 32), b.extra["clean"].numpy(), atol=1e-6)
    # and the noise is what is left, with the per-sample noise level
    resid = (b.x - b.extra["clean"]).numpy()
    sigma = b.extra["values"][:, 4].numpy()
    ratio = resid.reshape(len(b), -1).std(1) / sigma
    assert 0.7 < ratio.min() and ratio.max() < 1.3 and abs(ratio.mean() - 1) < 0.03
    # every factor value can be read back off the clean series (the analysis in `measure`)
    v = M.factor_values(b.factors)
    r = M.measure(b.extra["clean"])
    assert np.array_equal(r["frequency"], v[:, 0])
    assert np.allclose(r["amplitude"], v[:, 1], atol=1e-5)
    assert np.allclose(r["rise"], v[:, 2], atol=1e-5)
    assert circ_dist(r["phase"], v[:, 3]).max() < 1e-4
    assert circ_dist(r["lag"], v[:, 5]).max() < 1e-4
    assert r["noise"].max() < 1e-5
    # and the noise level off the noisy series (estimation error, so by correlation)
    rn = M.measure(b.x)
    assert np.corrcoef(rn["noise"], v[:, 4])[0, 1] > 0.9


def test_frequency_moves_the_fft_peak():
    x = M.render(vary(0), 32)
    spec = np.abs(np.fft.rfft(x[:, 0] - x[:, 0].mean(-1, keepdims=True), axis=-1))
    peaks = spec[:, 1:].argmax(-1) + 1
    # BASE has a falling trend: its ramp leaks into the low bins, but the peak is the sine's
    assert peaks.tolist() == [1, 2, 3, 4, 5]


def test_amplitude_scales_the_range():
    rows = vary(1)
    x = M.render(rows, 32)
    osc = without_trend(rows, x)     # BASE has a trend shared by all rows
    for c, g in enumerate(M.CHANNEL_GAINS):
        half_range = np.ptp(osc[:, c], axis=-1) / 2
        assert np.all(np.diff(half_range) > 0)
        assert np.allclose(half_range, g * np.linspace(0.5, 1.5, 5), rtol=0.03)
    # with the trend left in, the range still grows with the amplitude
    assert np.all(np.diff(np.ptp(x[:, 0], axis=-1)) > 0)


def test_trend_sets_the_linear_fit_slope():
    x = M.render(vary(2), 32)
    u = np.arange(32) / 32
    slope = np.polyfit(u, x[:, 0].T, 1)[0]                 # (levels,)
    # one trend step adds exactly one step of total rise to the fitted slope
    steps = np.diff(slope)
    assert np.allclose(steps, 4 / 3, atol=1e-5)
    # with the oscillation removed the slope is the trend value itself, same on every channel
    r = M.measure(x)
    assert np.allclose(r["rise"], [-2, -2 / 3, 2 / 3, 2], atol=1e-5)
    # the trend shifts no channel's mean
    assert np.abs(x.mean(-1) - x[:1].mean(-1)).max() < 1e-5


def test_phase_only_shifts_the_oscillation_in_time():
    x = without_trend(vary(3), M.render(vary(3), 32))
    # same spectrum magnitude, same range: a nuisance that changes only the timing
    mags = np.abs(np.fft.rfft(x, axis=-1))
    assert np.allclose(mags, mags[:1], atol=1e-4)
    assert not np.allclose(x[0], x[1], atol=0.1)
    # frequency 3 cycles in 32 steps: a quarter-period phase step is a circular shift
    # of the oscillation by 32 / (4 * 3) steps, visible as a changed argmax position
    assert len({int(v) for v in x[:, 0].argmax(-1)}) == 4


def test_noise_level_sets_the_residual_std():
    bundle = M.make(3000, seed=2)
    resid = (bundle.x - bundle.extra["clean"]).flatten(1).std(1).numpy()
    noise = bundle.factors[:, 4].numpy()
    means = [resid[noise == k].mean() for k in range(M.LEVELS[4])]
    assert np.allclose(means, np.linspace(0.05, 0.3, 3), rtol=0.05)
    # and the noise does not depend on the other factors (e.g. amplitude)
    amp = bundle.factors[:, 1].numpy()
    low = resid[(noise == 2) & (amp == 0)].mean()
    high = resid[(noise == 2) & (amp == 4)].mean()
    assert abs(low - high) < 0.03


def test_coupling_is_a_group_factor():
    osc = without_trend(vary(5), M.render(vary(5), 32))
    # no single channel's spectrum magnitude or range changes ...
    mags = np.abs(np.fft.rfft(osc, axis=-1))
    assert np.allclose(mags[0], mags[1], atol=1e-4)
    assert np.allclose(np.ptp(osc[0], -1), np.ptp(osc[1], -1), rtol=0.05)
    # ... but the cross-channel correlation does (synchronous vs travelling wave)
    corr = [np.corrcoef(o[0], o[1])[0, 1] for o in osc]
    assert corr[0] > 0.99 and corr[1] < -0.45


def test_label_definition():
    combos = torch.from_numpy(all_factor_combinations(M.LEVELS))
    y = M.label(combos)
    assert y.min() == 0 and y.max() == 5
    fbin = {0: 0, 1: 0, 2: 1, 3: 2, 4: 2}
    expected = torch.tensor([2 * fbin[int(f)] + int(t >= 2) for f, t in combos[:, [0, 2]]])
    assert torch.equal(y, expected)
    # the label agrees with the measured series: frequency band and sign of the trend
    v = M.factor_values(combos)
    assert torch.equal((y % 2).bool(), torch.from_numpy(v[:, 2] > 0))
    b = M.make(300, seed=5)
    assert torch.equal(b.y, M.label(b.factors))
    # all six classes occur in a modest sample
    assert len(torch.unique(b.y)) == 6
    # numpy and torch frequency bins agree
    assert np.array_equal(M.frequency_bin(np.arange(5)), M.frequency_bin(torch.arange(5)).numpy())


def test_bad_input_raises():
    with pytest.raises(ValueError, match="even"):
        M.make(10, seed=0, levels=(5, 5, 3, 4, 3, 2))
    with pytest.raises(ValueError, match="6 entries"):
        M.make(10, seed=0, levels=(5, 5, 4))
    with pytest.raises(ValueError, match="out of range"):
        M.render(np.array([[5, 0, 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="n must"):
        M.make(0, seed=0)


def test_other_levels_and_device():
    b = M.make(20, seed=0, levels=(3, 2, 2, 1, 1, 2), device="cpu")
    assert b.levels == [3, 2, 2, 1, 1, 2]
    assert set(b.y.tolist()) <= set(range(6))
    assert b.x.device.type == "cpu"

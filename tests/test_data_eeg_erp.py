"""Tests of the synthetic ERP cohort `replibook.data.procedural.eeg_erp`."""
import numpy as np
import pytest
import torch

from replibook.data.procedural import eeg_erp as E


@pytest.fixture(scope="module")
def cohort():
    return E.make(60, seed=3, size=64, trials=8, return_parts=True)


def _people(n=1, **values):
    base = E.draw_participants(n, np.random.default_rng(0), individual=False)
    return base.replace(age=40.0, depression=0.0, sex=0.0).replace(**values)


def _window(wave, t, lo, hi):
    return wave[..., (t >= lo) & (t <= hi)].mean(-1)


T_FINE = E.time_ms(1024)                  # 1 ms per sample, for latency tests


def test_shapes_factors_and_extras(cohort):
    b = cohort
    assert b.x.shape == (60 * 8, 6, 64) and b.x.dtype == torch.float32
    assert b.factor_names == ["age", "depression", "sex"] and b.levels == [4, 2, 2]
    assert (b.factors >= 0).all() and (b.factors < torch.tensor(b.levels)).all()
    assert torch.equal(b.y, b.factors[:, 1])
    assert b.extra["clean"].shape == b.x.shape and b.extra["signal"].shape == b.x.shape
    pid = b.extra["participant"]
    assert torch.equal(pid, torch.arange(60).repeat_interleave(8))
    assert torch.equal(b.extra["trial"], torch.arange(8).repeat(60))
    # participant-level quantities are constant within a participant
    for name in ("age", "clean"):
        v = b.extra[name].reshape(60, 8, -1)
        assert torch.allclose(v, v[:, :1].expand_as(v))
    assert torch.equal(b.factors.reshape(60, 8, 3), b.factors.reshape(60, 8, 3)[:, :1].expand(60, 8, 3))
    ages = b.extra["age"]
    assert ages.min() >= 18 and ages.max() <= 65
    assert b.info["channels"] == list(E.CHANNELS)


def test_same_seed_same_data_other_seed_other_data():
    a = E.make(5, seed=11, size=32, trials=3)
    b = E.make(5, seed=11, size=32, trials=3)
    c = E.make(5, seed=12, size=32, trials=3)
    assert torch.equal(a.x, b.x) and torch.equal(a.factors, b.factors)
    assert not torch.equal(a.x, c.x)
    state = np.random.get_state()[1].copy()
    E.make(2, seed=1, size=32, trials=2)
    assert np.array_equal(state, np.random.get_state()[1])          # global RNG untouched


def test_depression_lowers_lpp_in_the_emotional_condition_only():
    t = E.time_ms(256)
    healthy = E.render_components(_people(depression=0.0), t)
    depressed = E.render_components(_people(depression=1.0), t)
    emo, neu = E.channel_index("emotional"), E.channel_index("neutral")
    ratio = _window(depressed["LPP"][0, emo], t, 400, 800) / _window(healthy["LPP"][0, emo], t, 400, 800)
    assert np.allclose(ratio, 0.75)
    assert np.allclose(depressed["LPP"][0, neu], healthy["LPP"][0, neu])
    for comp in ("P1", "P300"):
        assert np.allclose(depressed[comp], healthy[comp])
    # the emotional LPP is larger than the neutral one (the picture-valence effect)
    assert (_window(healthy["LPP"][0, emo], t, 400, 800) > 1.5 * _window(healthy["LPP"][0, neu], t, 400, 800)).all()


def test_age_delays_and_lowers_the_p300_only():
    young = E.render_components(_people(age=20.0), T_FINE)
    old = E.render_components(_people(age=60.0), T_FINE)
    pz = E.channel_index("neutral", "Pz")[0]
    peak_young = T_FINE[np.argmax(young["P300"][0, pz])]
    peak_old = T_FINE[np.argmax(old["P300"][0, pz])]
    assert peak_old - peak_young == pytest.approx(0.8 * 40, abs=1.5)
    assert old["P300"][0, pz].max() < young["P300"][0, pz].max()
    assert old["P300"][0, pz].max() / young["P300"][0, pz].max() == pytest.approx(
        (1 - 0.006 * 20) / (1 + 0.006 * 20), rel=1e-3)
    for comp in ("P1", "LPP"):
        assert np.allclose(young[comp], old[comp])


def test_sex_changes_only_the_p1_gain():
    t = E.time_ms(256)
    a = E.render_components(_people(sex=0.0), t)
    b = E.render_components(_people(sex=1.0), t)
    assert np.allclose(b["P1"], 1.25 * a["P1"])
    for comp in ("P300", "LPP"):
        assert np.allclose(a[comp], b[comp])


def test_factor_effects_survive_individual_differences_in_the_cohort():
    b = E.make(400, seed=5, size=64, trials=1)
    t = E.time_ms(64)
    clean = b.extra["clean"].numpy()
    dep = b.factors[:, 1].numpy() == 1
    emo = _window(clean[:, E.channel_index("emotional", "Pz")[0]], t, 400, 800)
    neu = _window(clean[:, E.channel_index("neutral", "Pz")[0]], t, 400, 800)
    ratio = emo / neu
    assert np.median(ratio[dep]) / np.median(ratio[~dep]) == pytest.approx(0.75, abs=0.08)
    assert abs(np.median(neu[dep]) / np.median(neu[~dep]) - 1) < 0.12
    assert 0.2 < dep.mean() < 0.4


def test_snr_matches_the_requested_value(cohort):
    b = cohort
    s = b.extra["signal"].double()
    n = b.x.double() - s
    assert 10 * torch.log10((s ** 2).mean() / (n ** 2).mean()).item() == pytest.approx(b.info["snr_db"], abs=0.05)
    assert b.info["realised_snr_db"] == pytest.approx(b.info["snr_db"], abs=0.05)
    per_trial = 10 * torch.log10((s ** 2).mean((1, 2)) / (n ** 2).mean((1, 2)))
    assert abs(per_trial.median().item() - b.info["snr_db"]) < 2.0
    other = E.make(20, seed=3, size=64, trials=4, snr_db=-10.0, return_parts=True)
    s2 = other.extra["signal"].double()
    n2 = other.x.double() - s2
    assert 10 * torch.log10((s2 ** 2).mean() / (n2 ** 2).mean()).item() == pytest.approx(-10.0, abs=0.05)


def test_trials_are_baseline_corrected(cohort):
    t = E.time_ms(64)
    pre = cohort.x[..., torch.as_tensor(t < 0)]
    assert pre.shape[-1] == int((t < 0).sum()) > 0
    assert pre.mean(-1).abs().max() < 1e-4 * cohort.x.abs().max()
    # the noise-free signal too: its pre-stimulus mean is removed, its ERP is kept
    signal = cohort.extra["signal"]
    assert signal[..., torch.as_tensor(t < 0)].mean(-1).abs().max() < 1e-4
    assert signal[..., torch.as_tensor(t > 0)].mean() > 0.5


def _slope(series, fs, lo, hi, exclude=()):
    freqs = np.fft.rfftfreq(series.shape[-1], 1 / fs)
    power = (np.abs(np.fft.rfft(series, axis=-1)) ** 2).reshape(-1, len(freqs)).mean(0)
    sel = (freqs >= lo) & (freqs <= hi)
    for a, b in exclude:
        sel &= ~((freqs >= a) & (freqs <= b))
    return np.polyfit(np.log(freqs[sel]), np.log(power[sel]), 1)[0], freqs, power


def test_background_noise_has_a_one_over_f_spectrum():
    noise = E.pink_noise((400,), 256, np.random.default_rng(0), exponent=1.0, fs=250.0)
    assert noise.std() == pytest.approx(1.0, rel=1e-5)
    slope, _, _ = _slope(noise, 250.0, 2, 60)
    assert slope == pytest.approx(-1.0, abs=0.2)
    steeper, _, _ = _slope(E.pink_noise((400,), 256, np.random.default_rng(0), exponent=2.0), 250.0, 2, 60)
    assert steeper < slope - 0.5


def test_cohort_noise_slope_is_negative_with_an_alpha_peak():
    b = E.make(40, seed=2, size=256, trials=10, return_parts=True)
    noise = (b.x - b.extra["signal"]).numpy()
    fs = 1000.0 / b.info["step_ms"]
    slope, freqs, power = _slope(noise, fs, 2, 40, exclude=[(7, 13)])
    assert slope < -0.5
    fit = np.polyfit(np.log(freqs[(freqs >= 2) & (freqs <= 40) & ((freqs < 7) | (freqs > 13))]),
                     np.log(power[(freqs >= 2) & (freqs <= 40) & ((freqs < 7) | (freqs > 13))]), 1)
    alpha = (freqs >= 9) & (freqs <= 11)
    assert (np.log(power[alpha]) - np.polyval(fit, np.log(freqs[alpha]))).mean() > 0.3  # alpha bump
    line = np.argmin(np.abs(freqs - 50.0))
    assert power[line] > 3 * np.median(power[(freqs > 40) & (freqs < 60) & (np.abs(freqs - 50) > 3)])


def test_participant_helpers_on_a_subset(cohort):
    table = E.participant_table(cohort)
    assert len(table["participant"]) == 60
    assert set(np.unique(table["old"])) == {0, 1} and table["old"].sum() == 30
    sub = cohort.subset(np.flatnonzero(np.isin(cohort.extra["participant"].numpy(), [4, 9, 17])))
    rows = E.trials_by_participant(sub)
    assert rows.shape == (3, 8)
    assert (sub.extra["participant"].numpy()[rows] == np.array([[4], [9], [17]])).all()
    with pytest.raises(ValueError):
        E.trials_by_participant(cohort.subset([0, 1, 8]))


def test_bad_arguments():
    with pytest.raises(ValueError):
        E.make(0, seed=0)
    with pytest.raises(ValueError):
        E.time_ms(7)
    with pytest.raises(ValueError):
        _people().replace(weight=1.0)

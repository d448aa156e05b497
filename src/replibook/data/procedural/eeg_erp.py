"""A synthetic event-related-potential (ERP) cohort with known clinical factors.

Honke, Higgins et al. (arXiv 2010.15274) learn representations of single EEG trials
recorded while participants view neutral and emotional pictures; the labels are
clinical (depression diagnosis, age, ...). Those data are private, so this generator
builds a cohort whose ground truth is known, with the structure the paper relies on:
a stereotyped ERP that is buried, on each single trial, in background EEG stronger than
it (twice its power at the calibrated SNR of -3 dB), so that averaging over trials is the
classical way to see it.

**Cohort.** ``n`` participants, ``trials`` trials each. A trial is 3 scalp sites
(Fz, Cz, Pz) x ``size`` samples covering -248..772 ms around stimulus onset (the paper's
window: 256 samples at 4 ms; ``size=128`` gives 8 ms per sample), recorded in two
conditions, neutral and emotional pictures, **stacked as 6 channels**
(``neutral-Fz, neutral-Cz, neutral-Pz, emotional-Fz, ...``), as in the paper.

**Clean ERP** of participant ``p`` = the sum of three Gaussian bumps in time (latency,
width = sd of the bump, amplitude in µV, gains at Fz / Cz / Pz):

- P1: 100 ms, 20 ms, 2.5 µV, gains 0.6 / 0.8 / 1.0;
- P300: 320 + 0.8 (age - 40) ms, 50 ms, 7 (1 - 0.006 (age - 40)) µV, gains 0.5 / 0.8 / 1.0;
- LPP: 600 ms, 160 ms, 2.5 µV (neutral) or 5 µV (emotional), gains 0.4 / 0.8 / 1.0.

Participant factors (independent):

- **age** ~ U(18, 65) years: shifts the P300 latency by +0.8 ms per year and lowers its
  amplitude by 0.6% per year (both relative to age 40);
- **depression** ~ Bernoulli(0.3): multiplies the LPP amplitude by 0.75 in the
  *emotional* condition only (blunted emotional reactivity); the neutral condition and
  the other components are unchanged;
- **sex** ~ Bernoulli(0.5): a nuisance factor, multiplies the P1 gain by 1.25.

People differ beyond their factors (fixed a priori, not tuned): an overall gain
(log-normal, sd 0.2), a gain per component (log-normal, sd 0.15), latency offsets per
component (sd 8 ms for P1, 25 ms for P300, 40 ms for LPP) and an individual emotional
reactivity (the emotional LPP gain, log-normal, sd 0.15). With these, depression is
separable from a perfectly clean ERP at an AUROC of about 0.9, not 1.

**Single trials** = the clean ERP x a trial gain (log-normal, sd 0.2), shifted by a
trial latency jitter (sd 10 ms), plus noise made of

- background EEG with a 1/f power spectrum (75% of the noise power), correlated across
  the three sites (correlation 0.6 between neighbours, 0.36 between Fz and Pz);
- alpha bursts (20%): 8-12 Hz oscillations under a Gaussian envelope at a random time,
  in 60% of the trials, strongest at Pz;
- line noise (5%): a 50 Hz sinusoid of random amplitude and phase (with fewer than
  ~100 samples per second it aliases, as it would in an undersampled recording);

every trial is baseline-corrected (the mean of its pre-stimulus samples subtracted, per
channel), as in standard ERP preprocessing, and the noise is scaled so that the
cohort's **signal-to-noise ratio per trial** (mean power of the noise-free trials over
mean power of the noise, both after baseline correction) equals ``snr_db``.

**Calibration of ``snr_db``** (done once, before any representation model was trained,
and not changed after; `CALIBRATED_SNR_DB`, sweep in `CALIBRATION`): the book's spec asks
that the canonical ERP-window baseline (trial-averaged window amplitudes + logistic
regression) reach an AUROC for depression of about 0.8 with 40 trials per participant and
about 0.6 with 2. Everything else in the generator was fixed beforehand; ``snr_db`` was the
only knob. Protocol: 5 cohorts (seeds 100-104, not the chapter's seeds) of 300
participants x 40 trials x 128 samples; participants split 60/20/20, the probe
(`train.probes.logreg_auroc`) fitted on the 60% and scored on the pooled 40%; 3 random
draws of ``k`` trials; criterion ``(AUROC_40 - 0.8)^2 + (AUROC_2 - 0.6)^2``. The sweep went
from -5 dB upwards in 2 dB steps and stopped once the criterion rose (at -1 dB); -3 dB won
(AUROC 0.61 at k=2, 0.78 at k=40; 0.88 from the clean ERP).

Deterministic given ``seed`` (a private ``numpy.random.default_rng``; the global random
state is never touched).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from . import Bundle

__all__ = [
    "make", "time_ms", "SITES", "CONDITIONS", "CHANNELS", "COMPONENTS", "AGE_RANGE", "AGE_EDGES",
    "CALIBRATED_SNR_DB", "CALIBRATION", "Participants", "draw_participants", "render_components", "render_erp",
    "pink_noise", "participant_table", "trials_by_participant", "channel_index",
]

SITES = ("Fz", "Cz", "Pz")
CONDITIONS = ("neutral", "emotional")
CHANNELS = tuple(f"{c}-{s}" for c in CONDITIONS for s in SITES)
COMPONENTS = ("P1", "P300", "LPP")
AGE_RANGE = (18.0, 65.0)
AGE_EDGES = (18.0, 30.0, 42.0, 54.0, 66.0)       # 4 age bins for the discretised factor
EPOCH_START_MS, PAPER_STEP_MS, PAPER_SIZE = -248.0, 4.0, 256

# component shapes: latency (ms), width (ms), amplitude (µV), site gains
_P1 = dict(latency=100.0, width=20.0, amp=2.5, gains=(0.6, 0.8, 1.0))
_P300 = dict(latency=320.0, width=50.0, amp=7.0, gains=(0.5, 0.8, 1.0))
_LPP = dict(latency=600.0, width=160.0, amp=(2.5, 5.0), gains=(0.4, 0.8, 1.0))
AGE_REF = 40.0
AGE_LATENCY_MS_PER_YEAR = 0.8
AGE_AMPLITUDE_PER_YEAR = -0.006
DEPRESSION_LPP_FACTOR = 0.75        # emotional condition only
DEPRESSION_PREVALENCE = 0.3
SEX_P1_FACTOR = 1.25

# individual differences (log-normal sds of gains; sds of latency offsets in ms)
_INDIVIDUAL = dict(gain_sd=0.2, component_gain_sd=0.15, reactivity_sd=0.15,
                   latency_sd=(8.0, 25.0, 40.0))
# trial-to-trial variability and noise mixture
_TRIAL = dict(gain_sd=0.2, jitter_ms=10.0)
_NOISE_SHARES = dict(background=0.75, alpha=0.20, line=0.05)
_SITE_CORR = 0.6
_ALPHA = dict(p=0.6, f=(8.0, 12.0), width_ms=(100.0, 250.0), gains=(0.5, 0.8, 1.0))
LINE_HZ = 50.0
PINK_EXPONENT = 1.0                 # background power spectrum ~ 1 / f ** PINK_EXPONENT

#: SNR per trial (dB) fixed by the one-off calibration described in the module docstring.
CALIBRATED_SNR_DB = -3.0
#: The calibration sweep: snr_db -> ERP-baseline depression AUROC at k = 2, 5, 40 trials and
#: from the clean ERP (means over the 5 calibration cohorts; sds 0.07, 0.04-0.05, 0.06-0.07, 0.04).
CALIBRATION: dict[float, tuple[float, float, float, float]] = {
    -5.0: (0.587, 0.614, 0.752, 0.882),
    -3.0: (0.612, 0.645, 0.779, 0.882),
    -1.0: (0.637, 0.674, 0.807, 0.882),
}


def time_ms(size: int = 128) -> np.ndarray:
    """Sample times (ms) of an epoch of ``size`` samples over the paper's -248..772 ms window."""
    if size < 8 or size % 2:
        raise ValueError(f"size must be an even number >= 8, got {size}")
    step = PAPER_STEP_MS * PAPER_SIZE / size
    return EPOCH_START_MS + step * np.arange(size)


def channel_index(condition: str | None = None, site: str | None = None) -> list[int]:
    """Indices of the stacked channels of one condition and/or site."""
    return [i for i, name in enumerate(CHANNELS)
            if (condition is None or name.startswith(condition + "-"))
            and (site is None or name.endswith("-" + site))]


@dataclass
class Participants:
    """Factors and individual parameters of P participants (NumPy arrays of length P).

    ``gain``: overall gain; ``comp_gain`` (P, 3) per component; ``latency`` (P, 3)
    offsets in ms per component; ``reactivity``: the individual emotional LPP gain.
    """

    age: np.ndarray
    depression: np.ndarray
    sex: np.ndarray
    gain: np.ndarray
    comp_gain: np.ndarray
    latency: np.ndarray
    reactivity: np.ndarray

    def __len__(self) -> int:
        return len(self.age)

    def replace(self, **changes) -> "Participants":
        """A copy with some fields replaced (e.g. ``depression=np.ones(P)``)."""
        values = {f.name: np.array(getattr(self, f.name), copy=True) for f in fields(self)}
        for key, value in changes.items():
            if key not in values:
                raise ValueError(f"unknown participant field '{key}'")
            values[key] = np.broadcast_to(np.asarray(value, dtype=float), values[key].shape).copy()
        return Participants(**values)


def draw_participants(n: int, rng: np.random.Generator, individual: bool = True) -> Participants:
    """Draw ``n`` participants: factors, and individual differences unless ``individual=False``."""
    age = rng.uniform(*AGE_RANGE, n)
    depression = (rng.random(n) < DEPRESSION_PREVALENCE).astype(float)
    sex = (rng.random(n) < 0.5).astype(float)
    ind = _INDIVIDUAL
    gain = np.exp(ind["gain_sd"] * rng.standard_normal(n))
    comp_gain = np.exp(ind["component_gain_sd"] * rng.standard_normal((n, 3)))
    latency = rng.standard_normal((n, 3)) * np.asarray(ind["latency_sd"])
    reactivity = np.exp(ind["reactivity_sd"] * rng.standard_normal(n))
    if not individual:
        gain, comp_gain = np.ones(n), np.ones((n, 3))
        latency, reactivity = np.zeros((n, 3)), np.ones(n)
    return Participants(age, depression, sex, gain, comp_gain, latency, reactivity)


def _bump(t: np.ndarray, latency: np.ndarray, width: float) -> np.ndarray:
    """Gaussian bumps exp(-(t - latency)^2 / (2 width^2)): latency (...,) -> (..., T)."""
    return np.exp(-0.5 * ((t - latency[..., None]) / width) ** 2)


def render_components(people: Participants, t: np.ndarray, shift_ms: np.ndarray | None = None,
                      ) -> dict[str, np.ndarray]:
    """The clean ERP of each participant, one array (P, 6, T) per component (µV).

    ``shift_ms`` (P,) delays every component of a row (trial latency jitter).
    """
    p = len(people)
    shift = np.zeros(p) if shift_ms is None else np.asarray(shift_ms, dtype=float)
    age_dev = people.age - AGE_REF
    out = {}
    # P1: same in both conditions; sex is a nuisance gain
    amp = _P1["amp"] * people.gain * people.comp_gain[:, 0] * np.where(people.sex > 0, SEX_P1_FACTOR, 1.0)
    wave = amp[:, None] * _bump(t, _P1["latency"] + people.latency[:, 0] + shift, _P1["width"])
    out["P1"] = _stack(wave, _P1["gains"], _P1["gains"])
    # P300: age delays it (+0.8 ms/yr) and lowers it (-0.6 %/yr)
    amp = _P300["amp"] * (1 + AGE_AMPLITUDE_PER_YEAR * age_dev) * people.gain * people.comp_gain[:, 1]
    lat = _P300["latency"] + AGE_LATENCY_MS_PER_YEAR * age_dev + people.latency[:, 1] + shift
    wave = amp[:, None] * _bump(t, lat, _P300["width"])
    out["P300"] = _stack(wave, _P300["gains"], _P300["gains"])
    # LPP: larger for emotional pictures; depression blunts the emotional one only
    base = people.gain * people.comp_gain[:, 2]
    wave = _bump(t, _LPP["latency"] + people.latency[:, 2] + shift, _LPP["width"])
    neutral = (_LPP["amp"][0] * base)[:, None] * wave
    emo_gain = _LPP["amp"][1] * base * people.reactivity * np.where(
        people.depression > 0, DEPRESSION_LPP_FACTOR, 1.0)
    emotional = emo_gain[:, None] * wave
    out["LPP"] = np.concatenate([np.asarray(_LPP["gains"])[None, :, None] * neutral[:, None],
                                 np.asarray(_LPP["gains"])[None, :, None] * emotional[:, None]], axis=1)
    return out


def _stack(wave: np.ndarray, gains_neutral: Sequence[float], gains_emotional: Sequence[float]) -> np.ndarray:
    """(P, T) waveform -> (P, 6, T) with per-site gains in each condition."""
    g = np.concatenate([np.asarray(gains_neutral), np.asarray(gains_emotional)])
    return g[None, :, None] * wave[:, None, :]


def render_erp(people: Participants, t: np.ndarray, shift_ms: np.ndarray | None = None) -> np.ndarray:
    """The clean ERP (sum of P1, P300 and LPP), (P, 6, T) in µV."""
    return sum(render_components(people, t, shift_ms).values())


def pink_noise(shape: Sequence[int], size: int, rng: np.random.Generator, exponent: float = PINK_EXPONENT,
               fs: float = 250.0, f_min: float = 1.0) -> np.ndarray:
    """Gaussian noise with power spectrum ~ 1 / f**exponent (flat below ``f_min``), unit variance.

    Drawn at twice the length and cropped, so the epoch does not wrap around.
    Returns (*shape, size).
    """
    length = 2 * size
    freqs = np.fft.rfftfreq(length, d=1.0 / fs)
    amp = (np.maximum(freqs, f_min) ** (-exponent / 2.0)).astype(np.float32)
    amp[0] = 0.0
    re_im = rng.standard_normal((*shape, len(freqs), 2), dtype=np.float32)
    spec = re_im.view(np.complex64)[..., 0] * amp
    series = np.fft.irfft(spec, n=length, axis=-1)[..., :size].astype(np.float32)
    return series / series.std()


def _baseline(x: np.ndarray, pre: np.ndarray) -> np.ndarray:
    """Subtract the mean of the pre-stimulus samples, per row and channel."""
    return x - x[..., pre].mean(-1, keepdims=True)


def make(n: int, seed: int, size: int = 128, *, trials: int = 40, snr_db: float | None = None,
         age_bins: Sequence[float] = AGE_EDGES, individual: bool = True, return_parts: bool = False,
         device: torch.device | str | None = None) -> Bundle:
    """A cohort of ``n`` participants x ``trials`` single trials (one Bundle row per trial).

    Args:
        n: participants.
        seed: seeds everything (participants, trials, noise).
        size: samples per epoch (-248..772 ms; 256 is the paper's 4 ms sampling).
        trials: trials per participant (rows are participant-major: participant p owns
            rows ``p * trials ... (p + 1) * trials - 1``).
        snr_db: signal-to-noise ratio per trial in dB (default `CALIBRATED_SNR_DB`).
        age_bins: edges of the discretised age factor.
        individual: individual differences between participants (False: factors only).
        return_parts: also return the noise-free trials in ``extra["signal"]``.

    Returns a Bundle with ``x`` (n * trials, 6, size) float32 in µV, ``factors``
    (age bin, depression, sex), ``y`` = depression, and ``extra``: ``participant`` (id),
    ``trial`` (index within participant), ``age`` (years), ``clean`` (the participant's
    clean ERP without trial jitter, (N, 6, size)); ``info`` holds the settings and the
    realised SNR.
    """
    if n < 1 or trials < 1:
        raise ValueError(f"need n >= 1 participants and trials >= 1, got n={n}, trials={trials}")
    snr_db = CALIBRATED_SNR_DB if snr_db is None else float(snr_db)
    rng = np.random.default_rng(seed)
    t = time_ms(size)
    fs = 1000.0 / (t[1] - t[0])
    pre = t < 0
    people = draw_participants(n, rng, individual=individual)
    clean = render_erp(people, t)                                       # (n, 6, T)

    # single-trial signals: participant ERP with a trial gain and a latency jitter
    rows = n * trials
    pid = np.repeat(np.arange(n), trials)
    trial_gain = np.exp(_TRIAL["gain_sd"] * rng.standard_normal(rows))
    jitter = _TRIAL["jitter_ms"] * rng.standard_normal(rows)
    expanded = Participants(**{f.name: getattr(people, f.name)[pid] for f in fields(people)})
    signal = trial_gain[:, None, None] * render_erp(expanded, t, jitter)
    signal = _baseline(signal, pre)

    # noise per condition (the two conditions are different trials: independent noise)
    noise = _noise(rows, size, fs, t, rng)
    noise = _baseline(noise, pre)
    p_signal = float(np.mean(signal ** 2))
    scale = np.sqrt(p_signal / 10 ** (snr_db / 10) / np.mean(noise ** 2))
    noise *= scale
    x = signal + noise
    realised = 10 * np.log10(p_signal / float(np.mean(noise ** 2)))

    age_bin = np.clip(np.digitize(people.age, np.asarray(age_bins)[1:-1]), 0, len(age_bins) - 2)
    factors = np.stack([age_bin, people.depression, people.sex], 1).astype(np.int64)[pid]

    def tens(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=device)

    extra = {"participant": tens(pid, torch.long), "trial": tens(np.tile(np.arange(trials), n), torch.long),
             "age": tens(people.age[pid]), "clean": tens(clean[pid])}
    if return_parts:
        extra["signal"] = tens(signal)
    info = {"participants": n, "trials": trials, "size": size, "snr_db": snr_db,
            "realised_snr_db": round(realised, 3), "fs_hz": round(fs, 3), "t0_ms": float(t[0]),
            "step_ms": float(t[1] - t[0]), "channels": list(CHANNELS), "units": "µV",
            "individual": individual, "age_bins": [float(a) for a in age_bins], "seed": seed}
    return Bundle(x=tens(x), factors=tens(factors, torch.long), factor_names=["age", "depression", "sex"],
                  levels=[len(age_bins) - 1, 2, 2], y=tens(factors[:, 1], torch.long), name="eeg_erp",
                  info=info, extra=extra)


def _noise(rows: int, size: int, fs: float, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unscaled noise (rows, 6, T): background 1/f EEG + alpha bursts + line noise."""
    # background: 1/f, correlated across the 3 sites of each condition
    corr = np.array([[1.0, _SITE_CORR, _SITE_CORR ** 2], [_SITE_CORR, 1.0, _SITE_CORR],
                     [_SITE_CORR ** 2, _SITE_CORR, 1.0]])
    mix = np.linalg.cholesky(corr)
    white = pink_noise((rows, 2, 3), size, rng, fs=fs)                  # unit variance per series
    background = (mix.astype(np.float32) @ white).reshape(rows, 6, size)
    # alpha bursts: one per condition-trial with probability p, strongest at Pz
    a = _ALPHA
    present = rng.random((rows, 2)) < a["p"]
    freq = rng.uniform(*a["f"], (rows, 2))
    centre = rng.uniform(t[0], t[-1], (rows, 2))
    width = rng.uniform(*a["width_ms"], (rows, 2))
    phase = rng.uniform(0, 2 * np.pi, (rows, 2))
    amp = present * np.exp(0.3 * rng.standard_normal((rows, 2)))
    burst = (amp[..., None] * np.exp(-0.5 * ((t - centre[..., None]) / width[..., None]) ** 2)
             * np.sin(2 * np.pi * freq[..., None] * t / 1000.0 + phase[..., None]))   # (rows, 2, T)
    alpha = (np.asarray(a["gains"])[None, None, :, None] * burst[:, :, None, :]).reshape(rows, 6, size)
    # line noise: random amplitude and phase per condition-trial, the same at every site
    lamp = rng.uniform(0, 1, (rows, 2))
    lphase = rng.uniform(0, 2 * np.pi, (rows, 2))
    line = lamp[..., None] * np.sin(2 * np.pi * LINE_HZ * t / 1000.0 + lphase[..., None])
    line = np.repeat(line[:, :, None, :], 3, axis=2).reshape(rows, 6, size)
    parts = {"background": background, "alpha": alpha, "line": line}
    total = np.zeros((rows, 6, size), dtype=np.float32)
    for name, part in parts.items():
        power = float(np.mean(np.square(part, dtype=np.float64)))
        if power > 0:
            total += np.float32(np.sqrt(_NOISE_SHARES[name] / power)) * part.astype(np.float32)
    return total


def participant_table(bundle: Bundle) -> dict[str, np.ndarray]:
    """One row per participant (sorted by id): ``participant``, ``age``, ``depression``, ``sex``,
    ``old`` (age above the cohort's median age), as NumPy arrays."""
    pid = bundle.extra["participant"].cpu().numpy()
    ids, first = np.unique(pid, return_index=True)
    age = bundle.extra["age"].cpu().numpy()[first].astype(float)
    names = list(bundle.factor_names)
    f = bundle.factors.cpu().numpy()[first]
    return {"participant": ids, "age": age, "depression": f[:, names.index("depression")],
            "sex": f[:, names.index("sex")], "old": (age > np.median(age)).astype(np.int64)}


def trials_by_participant(bundle: Bundle) -> np.ndarray:
    """Row indices of each participant's trials, (P, trials), participants sorted by id.

    Works on any subset that keeps the same number of trials for every participant.
    """
    pid = bundle.extra["participant"].cpu().numpy()
    ids, counts = np.unique(pid, return_counts=True)
    if len(set(counts.tolist())) != 1:
        raise ValueError("participants have different numbers of trials in this bundle")
    order = np.argsort(pid, kind="stable")
    return order.reshape(len(ids), counts[0])

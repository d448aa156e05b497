"""Multivariate time series with known generative factors (``mts_factors``).

Disentanglement metrics need the true factors of every sample, which real sensor data never
provide. This generator draws 3-channel series of length ``T = size`` from six discrete
factors, so a representation of the series can be scored against each of them:

| factor | levels | values | what it changes |
|---|---|---|---|
| ``frequency`` | 5 | 1 ... 5 whole cycles per window | position of the FFT peak |
| ``amplitude`` | 5 | 0.5 ... 1.5 | size of the oscillation |
| ``trend`` | 4 | total rise -2, -2/3, +2/3, +2 over the window | slope of a linear fit |
| ``phase`` | 4 | 0, pi/2, pi, 3pi/2 | start of the oscillation (a nuisance factor) |
| ``noise`` | 3 | white-noise std 0.05, 0.175, 0.3 | residual around the clean series |
| ``coupling`` | 2 | channel lag 0 or 2pi/3 | synchronous channels vs a travelling wave |

``coupling`` is the *group* factor: it changes no single channel's statistics, only how the
channels relate to each other (their cross-correlation), the kind of multi-channel concept
the DTS paper's group-segment disentanglement targets. With ``u = t / T`` for
``t = 0 ... T-1`` and channel ``c = 0, 1, 2``,

.. math::

    x_c(u) = g_c\\,a\\,\\sin(2\\pi f u + \\varphi + c\\,\\delta) + r\\,(u - \\bar u) + \\sigma\\,\\epsilon_c(u),
    \\qquad g = (1, 0.8, 0.6),\\; \\epsilon \\sim \\mathcal N(0, 1),

where ``f, a, r, phi, sigma, delta`` are the values of frequency, amplitude, trend, phase,
noise and coupling, and ``u_bar`` is the mean of ``u`` (so the trend does not move the
series' mean). The 6-class label ``y = 2 * frequency_bin + (trend > 0)`` crosses a frequency
band (low / mid / high: the lower third, middle third and upper third of the frequency
levels, i.e. levels {0, 1}, {2}, {3, 4} at 5 levels) with the sign of the trend.

Deterministic given ``seed`` (a private ``numpy.random.default_rng``). ``extra["clean"]``
holds the noise-free series and ``extra["values"]`` the continuous factor values.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from . import Bundle, sample_factor_grid

__all__ = ["make", "render", "factor_values", "label", "frequency_bin", "measure",
           "FACTOR_NAMES", "LEVELS", "CHANNEL_GAINS"]

FACTOR_NAMES = ["frequency", "amplitude", "trend", "phase", "noise", "coupling"]
LEVELS = (5, 5, 4, 4, 3, 2)
CHANNEL_GAINS = (1.0, 0.8, 0.6)

# value ranges: level k of n maps to lo + (hi - lo) * k / (n - 1)
_RANGES = {
    "frequency": (1.0, 5.0),          # whole cycles per window
    "amplitude": (0.5, 1.5),
    "trend": (-2.0, 2.0),             # total rise over the window
    "noise": (0.05, 0.3),             # white-noise standard deviation
    "coupling": (0.0, 2 * math.pi / 3),  # phase lag between neighbouring channels
}


def _check_levels(levels: Sequence[int]) -> list[int]:
    levels = [int(k) for k in levels]
    if len(levels) != len(FACTOR_NAMES):
        raise ValueError(f"levels needs {len(FACTOR_NAMES)} entries ({', '.join(FACTOR_NAMES)}), "
                         f"got {levels}")
    if any(k < 1 for k in levels):
        raise ValueError(f"every factor needs >= 1 level, got {levels}")
    if levels[2] % 2:
        raise ValueError(f"trend needs an even number of levels (no zero slope, so the "
                         f"label's trend sign is defined), got {levels[2]}")
    if levels[5] < 2:
        raise ValueError("coupling needs >= 2 levels")
    return levels


def _grid(name: str, n: int) -> np.ndarray:
    lo, hi = _RANGES[name]
    return np.linspace(lo, hi, n) if n > 1 else np.array([0.5 * (lo + hi)])


def factor_values(factors: torch.Tensor | np.ndarray, levels: Sequence[int] = LEVELS) -> np.ndarray:
    """Continuous values of level indices: (N, 6) ints -> (N, 6) float64.

    Columns as `FACTOR_NAMES`: cycles per window, amplitude, total rise, phase (radians),
    noise std, inter-channel lag (radians).
    """
    levels = _check_levels(levels)
    f = np.asarray(factors.cpu() if torch.is_tensor(factors) else factors, dtype=np.int64)
    if f.ndim != 2 or f.shape[1] != len(FACTOR_NAMES):
        raise ValueError(f"factors must be (N, {len(FACTOR_NAMES)}), got {f.shape}")
    if (f < 0).any() or (f >= np.asarray(levels)).any():
        raise ValueError(f"factor levels out of range for levels={levels}")
    out = np.empty(f.shape, dtype=np.float64)
    for k, name in enumerate(FACTOR_NAMES):
        if name == "phase":
            out[:, k] = 2 * math.pi * f[:, k] / levels[k]
        else:
            out[:, k] = _grid(name, levels[k])[f[:, k]]
    return out


def render(factors: torch.Tensor | np.ndarray, size: int = 32,
           levels: Sequence[int] = LEVELS) -> np.ndarray:
    """The noise-free series of the given factor levels: (N, 6) -> (N, 3, size) float32."""
    if size < 8:
        raise ValueError(f"size (series length) must be >= 8, got {size}")
    v = factor_values(factors, levels)
    freq, amp, rise, phase, _, lag = (v[:, k, None] for k in range(6))
    u = np.arange(size, dtype=np.float64) / size                          # (T,)
    trend = rise * (u - u.mean())                                          # (N, T)
    chans = [g * amp * np.sin(2 * math.pi * freq * u + phase + c * lag) + trend
             for c, g in enumerate(CHANNEL_GAINS)]
    return np.stack(chans, axis=1).astype(np.float32)


def frequency_bin(freq_level: torch.Tensor | np.ndarray, n_levels: int = LEVELS[0]):
    """Frequency band of a level: 0 = lower third, 1 = middle third, 2 = upper third of the
    level range (levels {0, 1} / {2} / {3, 4} at 5 levels)."""
    pos = freq_level / max(n_levels - 1, 1)
    if torch.is_tensor(pos):
        return (pos >= 1 / 3).long() + (pos >= 2 / 3 - 1e-9).long()
    return (pos >= 1 / 3).astype(np.int64) + (pos >= 2 / 3 - 1e-9).astype(np.int64)


def label(factors: torch.Tensor, levels: Sequence[int] = LEVELS) -> torch.Tensor:
    """The 6-class label ``2 * frequency_bin + (trend > 0)``: (N, 6) long -> (N,) long."""
    levels = _check_levels(levels)
    rising = (factors[:, 2] >= levels[2] // 2).long()     # upper half of the trend levels
    return 2 * frequency_bin(factors[:, 0], levels[0]) + rising


def make(n: int, seed: int, size: int = 32, levels: Sequence[int] = LEVELS,
         device: torch.device | str | None = None) -> Bundle:
    """``n`` series of length ``size`` with factors drawn uniformly from the level grid.

    Returns a `Bundle` with x (n, 3, size) float32, factors (n, 6), y the 6-class label,
    extra["clean"] (the series without noise) and extra["values"] (continuous factor values).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    levels = _check_levels(levels)
    rng = np.random.default_rng(seed)
    factors = sample_factor_grid(n, levels, rng)
    clean = render(factors, size, levels)
    sigma = factor_values(factors, levels)[:, 4]
    noise = rng.standard_normal(clean.shape) * sigma[:, None, None]
    x = (clean + noise).astype(np.float32)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    f = torch.from_numpy(factors).to(dev)
    return Bundle(
        x=torch.from_numpy(x).to(dev), factors=f, factor_names=list(FACTOR_NAMES),
        levels=levels, y=label(f, levels), name="mts_factors",
        info={"size": size, "channels": len(CHANNEL_GAINS), "channel_gains": list(CHANNEL_GAINS),
              "ranges": {k: list(v) for k, v in _RANGES.items()}, "seed": seed,
              "label": "2 * frequency_bin + (trend > 0)"},
        extra={"clean": torch.from_numpy(clean).to(dev),
               "values": torch.from_numpy(factor_values(factors, levels).astype(np.float32)).to(dev)})


def measure(x: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Read the factor values back off series (N, 3, T), e.g. data or decoded traversals.

    1. ``frequency``: the FFT peak (cycles per window) of channel 0 after removing its
       least-squares line (an integer; exact on clean series, since the line fit leaks
       little of a whole-cycle sine into the residual).
    2. A joint least-squares fit per channel of ``[1, u - u_bar, sin(2 pi f u), cos(2 pi f u)]``
       at that frequency gives ``rise`` (total rise over the window, averaged over channels),
       ``amplitude`` (fitted sine amplitude of channel 0 divided by its gain), ``phase``
       (channel 0, radians in [0, 2 pi)), ``lag`` (phase of channel 1 minus channel 0, in
       [0, 2 pi)) and ``noise`` (residual std, with the 4 fitted parameters' degrees of
       freedom removed).

    On the generator's clean series all values equal `factor_values` (tested); on noisy
    series they are least-squares estimates.
    """
    a = np.asarray(x.detach().cpu() if torch.is_tensor(x) else x, dtype=np.float64)
    if a.ndim != 3 or a.shape[1] < 2:
        raise ValueError(f"x must be (N, C>=2, T), got {a.shape}")
    n, C, T = a.shape
    u = np.arange(T) / T
    uc = u - u.mean()
    # 1. frequency from the spectrum of the detrended first channel
    slope0 = (a[:, 0] * uc).sum(-1) / (uc ** 2).sum()
    detr = a[:, 0] - a[:, 0].mean(-1, keepdims=True) - slope0[:, None] * uc
    spec = np.abs(np.fft.rfft(detr, axis=-1))
    spec[:, 0] = 0.0
    freq = spec.argmax(-1)
    # 2. joint linear fit per series (design depends on the series' frequency)
    coef = np.empty((n, C, 4))
    resid = np.empty((n, C, T))
    for f in np.unique(freq):
        idx = np.nonzero(freq == f)[0]
        w = 2 * math.pi * f * u
        design = np.stack([np.ones(T), uc, np.sin(w), np.cos(w)], axis=1)   # (T, 4)
        sol, *_ = np.linalg.lstsq(design, a[idx].reshape(-1, T).T, rcond=None)
        coef[idx] = sol.T.reshape(len(idx), C, 4)
        resid[idx] = a[idx] - (sol.T @ design.T).reshape(len(idx), C, T)
    # sin(w + p) = cos(p) sin(w) + sin(p) cos(w)
    amp_c = np.hypot(coef[..., 2], coef[..., 3])                            # (N, C)
    phase_c = np.arctan2(coef[..., 3], coef[..., 2])
    two_pi = 2 * math.pi
    dof = max(T - 4, 1)
    return {"frequency": freq.astype(np.float64),
            "amplitude": amp_c[:, 0] / CHANNEL_GAINS[0],
            "rise": coef[..., 1].mean(-1),
            "phase": np.mod(phase_c[:, 0], two_pi),
            "lag": np.mod(phase_c[:, 1] - phase_c[:, 0], two_pi),
            "noise": np.sqrt((resid ** 2).sum((-1, -2)) / (C * dof))}

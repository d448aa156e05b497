r"""Latent-feature vectors with augmentation pairs (the synthetic model of Xue et al., ICLR 2024).

An input is a sum of K features along fixed orthonormal directions plus isotropic noise,

.. math:: x = \sum_{k=1}^K s_k\, z_k\, u_k + \xi,\qquad z_k \in \{-1, +1\}\ \text{uniform},
          \quad \xi \sim \mathcal N(0, \sigma^2 I_d),

with strengths :math:`s_k`. Its positive view :math:`x^+` keeps every :math:`z_k` except that
feature :math:`k` is *disrupted* with probability :math:`p_k`: then :math:`z_k` is drawn
afresh (independently of :math:`x`), and the view gets its own noise. So the cross-view
covariance along :math:`u_k` is :math:`s_k^2 (1 - p_k)`: strong, undisrupted features are the
ones a contrastive objective rewards; weak or disrupted ones are what it down-weights.

Options:

- ``magnitude_only``: indices of features that reach the input only through their
  magnitude: the input carries :math:`s_k m_k \epsilon u_k` with the label
  :math:`m_k \in \{0, 1\}` and a random sign :math:`\epsilon` drawn afresh for *every* sample
  and every view. No linear function of :math:`x` correlates with :math:`m_k`
  (:math:`E[x\, m_k] = 0` along :math:`u_k`), but :math:`|u_k^\top x|` reveals it, which a ReLU
  pair :math:`\mathrm{relu}(t) + \mathrm{relu}(-t)` can compute (the "ReLU-visible" variant).

Returned as a `Bundle`: ``x`` (N, d) anchors; ``extra["x_pos"]`` (N, d) positive views;
``extra["z"]`` (N, K) the signed (or 0/1 for magnitude-only features) latent values of the
anchor; ``factors`` (N, K) their binary level index (``z > 0``); ``y`` = factor 0.
The directions are `directions(d, K, basis_seed)` (the same for every ``seed``, so train and
test sets drawn with different seeds share them).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from . import Bundle

__all__ = ["directions", "make", "STRENGTHS"]

STRENGTHS = (3.0, 2.0, 1.5, 1.0, 0.5)


def directions(dim: int, k: int, seed: int = 0) -> torch.Tensor:
    """``(dim, k)`` orthonormal columns (QR of a seeded Gaussian matrix; signs fixed so the
    diagonal of R is positive, making the result unique for the seed)."""
    if not 0 < k <= dim:
        raise ValueError(f"need 0 < k <= dim, got k={k}, dim={dim}")
    g = np.random.default_rng(seed)
    q, r = np.linalg.qr(g.standard_normal((dim, k)))
    q = q * np.sign(np.diag(r))[None, :]
    return torch.as_tensor(q, dtype=torch.float32)


def make(n: int, seed: int, dim: int = 50, strengths: Sequence[float] = STRENGTHS,
         disrupt: Sequence[float] | None = None, noise: float = 0.1,
         magnitude_only: Sequence[int] = (), basis_seed: int = 0,
         device: torch.device | str | None = None) -> Bundle:
    """``n`` anchors and their positive views (see the module docstring).

    Args:
        n: number of pairs.
        seed: draws of latents, disruption and noise (a private NumPy generator).
        dim: input dimension d (>= K).
        strengths: :math:`s_k` (K values, >= 0).
        disrupt: :math:`p_k \\in [0, 1]` per feature (default all 0).
        noise: :math:`\\sigma` of the isotropic Gaussian noise of each view.
        magnitude_only: feature indices present only through their magnitude (ReLU-visible).
        basis_seed: seed of the feature directions.
    """
    s = np.asarray(strengths, dtype=np.float64)
    k = len(s)
    p = np.zeros(k) if disrupt is None else np.asarray(disrupt, dtype=np.float64)
    if p.shape != (k,) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"disrupt must hold {k} probabilities in [0, 1], got {disrupt}")
    if np.any(s < 0):
        raise ValueError("strengths must be non-negative")
    mag = sorted({int(j) for j in magnitude_only})
    if any(not 0 <= j < k for j in mag):
        raise ValueError(f"magnitude_only indices must lie in [0, {k}), got {magnitude_only}")
    if n < 1 or noise < 0:
        raise ValueError("need n >= 1 and noise >= 0")
    rng = np.random.default_rng(seed)
    u = directions(dim, k, basis_seed).double().numpy()

    def draw(size):
        z = rng.integers(0, 2, size=(size, k)).astype(np.float64) * 2 - 1
        if mag:
            z[:, mag] = (z[:, mag] > 0)          # magnitude-only features: labels in {0, 1}
        return z

    z = draw(n)
    fresh = draw(n)
    hit = rng.random((n, k)) < p[None, :]
    z_pos = np.where(hit, fresh, z)

    def render(latent):
        a = latent * s[None, :]
        if mag:                                   # a random sign per sample and view
            a[:, mag] *= rng.integers(0, 2, size=(len(latent), len(mag))) * 2 - 1
        return a @ u.T + noise * rng.standard_normal((len(latent), dim))

    x, x_pos = render(z), render(z_pos)
    t = lambda a, dt=torch.float32: torch.as_tensor(a, dtype=dt, device=device)  # noqa: E731
    factors = t((z > 0).astype(np.int64), torch.long)
    info = {"dim": dim, "strengths": s.tolist(), "disrupt": p.tolist(), "noise": float(noise),
            "magnitude_only": mag, "basis_seed": int(basis_seed)}
    return Bundle(x=t(x), factors=factors, factor_names=[f"z{j}" for j in range(k)], levels=[2] * k,
                  y=factors[:, 0].clone(), name="latent_features", info=info,
                  extra={"x_pos": t(x_pos), "z": t(z)})

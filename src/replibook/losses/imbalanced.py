r"""Objectives for imbalanced labels (components.md, section 6).

- `logit_adjust` — logit adjustment (Menon et al. 2021, "Long-tail learning via logit
  adjustment", Eq. 10 for the loss, Eq. 9 post hoc): shift logits by
  :math:`\tau \log \pi_y`, the log class prior.
- `lds_weights` — label distribution smoothing (Yang et al. 2021, "Delving into Deep
  Imbalanced Regression", Sec. 3.1): convolve the (square-rooted) label histogram with a
  symmetric kernel and weight each sample by the inverse of the smoothed value at its label.
- `balanced_mse` — Balanced MSE with batch-based Monte-Carlo (BMC) (Ren et al. 2022,
  Eq. 6 / Alg. 1): a contrastive-like cross-entropy over the batch's targets.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["logit_adjust", "lds_weights", "smoothed_label_density", "balanced_mse"]


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[float] | torch.Tensor, tau: float = 1.0,
                 posthoc: bool = False) -> torch.Tensor:
    r"""Logits shifted by the log prior :math:`\pi_k = n_k / \sum_j n_j`.

    ``posthoc=False`` (training): :math:`f_k(x) + \tau\log\pi_k` — use in the cross-entropy
    (the logit-adjusted loss); predict with the *unadjusted* logits.
    ``posthoc=True`` (inference): :math:`f_k(x) - \tau\log\pi_k`, applied to a model trained
    with plain cross-entropy.
    Classes with zero count get prior ``1e-12`` rather than ``log 0``.
    """
    counts = torch.as_tensor(class_counts, dtype=torch.float32, device=logits.device)
    if counts.shape != logits.shape[-1:]:
        raise ValueError(f"{len(counts)} class counts for logits with {logits.shape[-1]} classes")
    if (counts < 0).any() or counts.sum() <= 0:
        raise ValueError("class counts must be non-negative with a positive total")
    log_prior = torch.log((counts / counts.sum()).clamp_min(1e-12))
    sign = -1.0 if posthoc else 1.0
    return logits + sign * tau * log_prior


def _kernel(kind: str, ks: int, sigma: float) -> np.ndarray:
    if ks < 1 or ks % 2 == 0:
        raise ValueError(f"kernel size must be odd and positive, got {ks}")
    half = ks // 2
    u = np.arange(-half, half + 1, dtype=float)
    if kind == "gaussian":
        k = np.exp(-u ** 2 / (2 * sigma ** 2))
    elif kind == "triang":
        k = 1.0 - np.abs(u) / (half + 1)
    elif kind == "laplace":
        k = np.exp(-np.abs(u) / sigma)
    else:
        raise ValueError(f"unknown LDS kernel {kind!r}; known: gaussian, triang, laplace")
    return k / k.max()          # peak 1, as in the reference implementation (the scale cancels below)


def smoothed_label_density(y_train, bin_edges: Sequence[float] | np.ndarray, sigma: float = 2.0,
                           kernel: str = "gaussian", ks: int = 5, power: float = 1.0) -> np.ndarray:
    """The LDS-smoothed histogram of ``y_train`` over the bins ``bin_edges`` (length B+1) -> (B,).

    ``power`` is applied to the bin counts *before* smoothing (``0.5`` for the DIR code's
    "sqrt_inv" re-weighting, which smooths the square-rooted counts).
    """
    y = np.asarray(torch.as_tensor(y_train).detach().cpu(), dtype=float).ravel()
    edges = np.asarray(bin_edges, dtype=float)
    counts, _ = np.histogram(np.clip(y, edges[0], edges[-1]), bins=edges)
    return np.convolve(counts.astype(float) ** power, _kernel(kernel, ks, sigma), mode="same")


def lds_weights(y_train, bin_edges: Sequence[float] | np.ndarray, sigma: float = 2.0, kernel: str = "gaussian",
                ks: int = 5, power: float = 0.5, y=None) -> torch.Tensor:
    r"""Per-sample loss weights :math:`w_i = 1 / \widetilde{n^{p}}(b(y_i))`, normalised to mean 1.

    As in the DIR reference code (``_prepare_weights``): the bin counts are raised to ``power``
    (0.5, "sqrt_inv", the default; 1 = plain inverse), smoothed with the kernel, and inverted.

    Args:
        y_train: ``(N,)`` training targets (they define the density).
        bin_edges: label bin edges (length B+1); labels outside are clipped into the end bins.
        sigma, kernel, ks: the smoothing kernel (the DIR defaults: Gaussian, size 5, sigma 2).
        power: exponent applied to the counts before smoothing.
        y: targets to weight (default ``y_train``); the weights are normalised to mean 1 over them.
    Returns:
        ``(N,)`` float tensor.
    """
    density = smoothed_label_density(y_train, bin_edges, sigma, kernel, ks, power=power)
    edges = np.asarray(bin_edges, dtype=float)
    target = y_train if y is None else y
    t = np.asarray(torch.as_tensor(target).detach().cpu(), dtype=float).ravel()
    idx = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
    d = density[idx]
    if (d <= 0).any():
        raise ValueError("a target falls in a bin with zero smoothed density; widen the kernel or the bins")
    w = 1.0 / d
    w = w * len(w) / w.sum()
    return torch.as_tensor(w, dtype=torch.float32)


def balanced_mse(pred: torch.Tensor, target: torch.Tensor, noise_var: float | torch.Tensor) -> torch.Tensor:
    r"""Balanced MSE, batch-based Monte-Carlo estimate (Ren et al. 2022, Eq. 6).

    .. math:: \mathcal{L} = -\log \frac{\exp(-\|\hat y_i - y_i\|^2 / 2\sigma^2)}
              {\sum_{j\in\text{batch}} \exp(-\|\hat y_i - y_j\|^2 / 2\sigma^2)} \cdot 2\sigma^2

    The factor :math:`2\sigma^2` (detached) keeps the gradient scale of the MSE, as the
    authors' code does. ``pred``/``target`` ``(N,)`` or ``(N, 1)``; ``noise_var`` is
    :math:`\sigma^2`, fixed or a learnable scalar tensor.
    """
    p = pred.reshape(len(pred), -1).float()
    t = target.reshape(len(target), -1).float()
    if p.shape != t.shape or p.shape[1] != 1:
        raise ValueError(f"balanced_mse expects one scalar target per sample, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    var = torch.as_tensor(noise_var, dtype=torch.float32, device=p.device)
    logits = -(p - t.T) ** 2 / (2 * var)                       # (N, N): prediction i vs target j
    loss = F.cross_entropy(logits, torch.arange(len(p), device=p.device))
    return loss * (2 * var).detach()

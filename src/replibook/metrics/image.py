r"""Image quality: PSNR, SSIM and L1 (optionally restricted to a mask); FID-lite between feature sets.

Used by the restoration and generation chapters (inpainting, low light, super-resolution,
editing). Every function takes images as float tensors ``(N, C, H, W)`` (or one image
``(C, H, W)``) with values in ``[0, data_range]`` and returns **one number per image**
with ``reduction="none"`` or their mean with ``reduction="mean"`` (the default). Papers
report the mean of per-image scores, which is what the mean here is.

PSNR (peak signal-to-noise ratio), in dB, per image:

.. math:: \mathrm{PSNR}(x, y) = 10 \log_{10} \frac{R^2}{\frac{1}{CHW}\sum (x - y)^2}

SSIM (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13) with an 11x11 Gaussian window
(sigma 1.5), :math:`C_1 = (K_1 R)^2`, :math:`C_2 = (K_2 R)^2`, :math:`K_1 = 0.01`,
:math:`K_2 = 0.03`, local statistics weighted by the window (population covariance):

.. math:: \mathrm{SSIM}(x, y) = \frac{(2\mu_x\mu_y + C_1)(2\sigma_{xy} + C_2)}
          {(\mu_x^2 + \mu_y^2 + C_1)(\sigma_x^2 + \sigma_y^2 + C_2)}

averaged over the positions where the window fits inside the image and over channels.
These are exactly the settings of ``skimage.metrics.structural_similarity(...,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=R)``, and the
unit tests compare both functions with scikit-image on the same arrays.

FID-lite (`fid_lite`) is the Frechet distance between Gaussian fits of two feature sets
(Heusel et al. 2017) computed on a small in-book feature extractor instead of Inception;
its values are comparable only within one extractor.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["psnr", "ssim", "ssim_map", "l1", "gaussian_window", "fid_lite", "frechet_distance", "gaussian_fit"]


def _batched(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4:
        raise ValueError(f"{name} must be (N, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    return x.float()


def _pair(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = _batched(pred, "pred"), _batched(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "differ in shape")
    return pred, target


def _reduce(per_image: torch.Tensor, reduction: str) -> torch.Tensor | float:
    if reduction == "none":
        return per_image
    if reduction == "mean":
        return float(per_image.mean())
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


@torch.no_grad()
def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         reduction: str = "mean") -> torch.Tensor | float:
    """Peak signal-to-noise ratio in dB, computed per image, then averaged.

    Args:
        pred, target: ``(N, C, H, W)`` or ``(C, H, W)`` in ``[0, data_range]``.
    Returns:
        the mean PSNR (float), or ``(N,)`` per-image values with ``reduction="none"``.
        Identical images give ``inf``.
    """
    pred, target = _pair(pred, target)
    mse = (pred - target).pow(2).flatten(1).mean(1)               # (1/CHW) sum (x - y)^2
    per_image = 10.0 * torch.log10(data_range ** 2 / mse)          # 10 log10(R^2 / MSE)
    return _reduce(per_image, reduction)


def gaussian_window(size: int = 11, sigma: float = 1.5, device=None) -> torch.Tensor:
    """The normalised 2-D Gaussian window ``(size, size)`` (outer product of a 1-D one)."""
    coords = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


@torch.no_grad()
def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
             win_size: int = 11, sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03
             ) -> torch.Tensor:
    """Local SSIM at every position where the window fits: ``(N, C, H - win + 1, W - win + 1)``."""
    pred, target = _pair(pred, target)
    n, c, h, w = pred.shape
    if h < win_size or w < win_size:
        raise ValueError(f"images of {h}x{w} px are smaller than the {win_size}px SSIM window")
    window = gaussian_window(win_size, sigma, pred.device).expand(c, 1, win_size, win_size)

    def filt(z: torch.Tensor) -> torch.Tensor:   # Gaussian-weighted local mean, per channel
        return F.conv2d(z, window, groups=c)

    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_x, mu_y = filt(pred), filt(target)                          # mu_x, mu_y
    var_x = filt(pred * pred) - mu_x ** 2                          # sigma_x^2
    var_y = filt(target * target) - mu_y ** 2                      # sigma_y^2
    cov_xy = filt(pred * target) - mu_x * mu_y                     # sigma_xy
    num = (2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2)
    return num / den


@torch.no_grad()
def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, win_size: int = 11,
         sigma: float = 1.5, reduction: str = "mean") -> torch.Tensor | float:
    """Structural similarity (Wang et al. 2004) per image, averaged over positions and channels.

    Args:
        pred, target: ``(N, C, H, W)`` or ``(C, H, W)`` in ``[0, data_range]``; at least
            ``win_size`` pixels on each side.
    Returns:
        the mean SSIM (float), or ``(N,)`` per-image values with ``reduction="none"``.
    """
    per_image = ssim_map(pred, target, data_range, win_size, sigma).flatten(1).mean(1)
    return _reduce(per_image, reduction)


@torch.no_grad()
def l1(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
       reduction: str = "mean") -> torch.Tensor | float:
    """Mean absolute error per image, over all pixels or only where ``mask`` is 1.

    Args:
        mask: ``(N, 1, H, W)`` or ``(N, C, H, W)``, 1 on the pixels to score (e.g. the hole
            of an inpainting mask). An image whose mask is empty scores ``nan``.
    """
    pred, target = _pair(pred, target)
    err = (pred - target).abs()
    if mask is None:
        return _reduce(err.flatten(1).mean(1), reduction)
    mask = _batched(mask, "mask").expand_as(err)
    count = mask.flatten(1).sum(1)
    per_image = (err * mask).flatten(1).sum(1) / count.clamp_min(1)
    per_image = torch.where(count > 0, per_image, torch.full_like(per_image, math.nan))
    return _reduce(per_image, reduction)


# --------------------------------------------------------------------------- FID-lite

def gaussian_fit(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (ddof=1, as ``np.cov``) of ``feats (N, D)``, float64."""
    if isinstance(feats, torch.Tensor):
        feats = feats.detach().cpu().double().numpy()
    f = np.asarray(feats, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {f.shape}")
    if len(f) < 2:
        raise ValueError(f"a Gaussian fit needs at least 2 feature vectors, got {len(f)}")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain non-finite values")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu_a, cov_a, mu_b, cov_b) -> float:
    r"""Squared Frechet (2-Wasserstein) distance between :math:`N(\mu_a, \Sigma_a)` and :math:`N(\mu_b, \Sigma_b)`:

    .. math:: d^2 = \lVert\mu_a - \mu_b\rVert^2 + \operatorname{tr}\big(\Sigma_a + \Sigma_b
              - 2(\Sigma_a \Sigma_b)^{1/2}\big)

    :math:`\operatorname{tr}(\Sigma_a\Sigma_b)^{1/2}` is computed as the sum of the square roots of
    the eigenvalues of the symmetric PSD matrix :math:`\Sigma_a^{1/2}\Sigma_b\Sigma_a^{1/2}` (same
    spectrum as :math:`\Sigma_a\Sigma_b`), which stays real and stable when a covariance is singular
    (fewer samples than dimensions); ``scipy.linalg.sqrtm`` of the product, the usual FID code, gives
    the same value where it converges (a unit test compares them).
    """
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    cov_a, cov_b = np.atleast_2d(cov_a).astype(np.float64), np.atleast_2d(cov_b).astype(np.float64)
    if mu_a.shape != mu_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != (mu_a.size, mu_a.size):
        raise ValueError(f"shapes disagree: mu {mu_a.shape} / {mu_b.shape}, cov {cov_a.shape} / {cov_b.shape}")
    w, v = np.linalg.eigh((cov_a + cov_a.T) / 2)
    sqrt_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T                   # Sigma_a^{1/2}
    inner = sqrt_a @ cov_b @ sqrt_a                                      # Sigma_a^{1/2} Sigma_b Sigma_a^{1/2}
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())               # tr (Sigma_a Sigma_b)^{1/2}
    diff = mu_a - mu_b
    d2 = float(diff @ diff + np.trace(cov_a) + np.trace(cov_b) - 2.0 * tr_sqrt)
    return max(d2, 0.0)                                                  # round-off can give -1e-12


def fid_lite(feats_a, feats_b) -> float:
    """FID-lite: the Frechet distance between Gaussian fits of two feature sets.

    The recipe of FID (Heusel et al. 2017) on the book's small feature extractors (e.g. the
    penultimate layer of zoo ``probe_shapes3d``) instead of Inception-v3 pool features, so the
    numbers are comparable only within one extractor and one sample size (the estimate is biased
    upward at small N). Symmetric; 0 for identical sets.

    Args:
        feats_a, feats_b: ``(N_a, D)`` and ``(N_b, D)`` tensors or arrays (N >= 2 each).
    """
    mu_a, cov_a = gaussian_fit(feats_a)
    mu_b, cov_b = gaussian_fit(feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature dimensions differ: {mu_a.size} vs {mu_b.size}")
    return frechet_distance(mu_a, cov_a, mu_b, cov_b)

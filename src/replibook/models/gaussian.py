r"""Gaussian models of feature vectors: shrunk covariances, Mahalanobis scores, (N)PCA, class Gaussians.

A multivariate Gaussian fitted to the features of normal data is the anomaly model of
Rippel et al. (ICPR 2020, arXiv:2005.14140) and the class model of Mahalanobis-style
out-of-distribution detectors. With :math:`N` samples and :math:`D` dimensions,

.. math:: \mu = \tfrac1N \textstyle\sum_i f_i, \qquad
          S = \tfrac1N \textstyle\sum_i (f_i - \mu)(f_i - \mu)^\top, \qquad
          M(f) = \sqrt{(f - \mu)^\top \Sigma^{-1} (f - \mu)} .

When :math:`N` is not much larger than :math:`D`, :math:`S` is singular or badly
conditioned, so :math:`\Sigma` is the **Ledoit-Wolf** shrinkage estimate (Ledoit & Wolf 2004)

.. math:: \Sigma = (1 - \rho) S + \rho\, \nu I, \quad \nu = \operatorname{tr}(S) / D, \quad
          \rho = \min(\beta, \delta) / \delta,

with :math:`\delta = \lVert S - \nu I\rVert_F^2 / D` and
:math:`\beta = \big(\tfrac1N \sum_i \lVert f_i - \mu\rVert^4 - \lVert S\rVert_F^2\big) / (N D)`,
the same estimator as ``sklearn.covariance.LedoitWolf`` (a test checks the two agree).

Under the Gaussian assumption :math:`M^2 \sim \chi^2_D`, so a target false-positive rate
``fpr`` gives the threshold :math:`\sqrt{F^{-1}_{\chi^2_D}(1 - \text{fpr})}` (`MVG.threshold`).

**PCA / NPCA** (Rippel et al., Sec. IV): project onto principal components of the normal
data before fitting. ``project="pca"`` keeps the top components that explain ``var`` of the
variance; ``project="npca"`` keeps the *bottom* components that explain ``var`` (e.g. 1%).
As in the official code (``compute_pca``), with threshold :math:`t` (``t = var`` for PCA,
``t = 1 - var`` for NPCA) and :math:`k` the first component whose cumulative explained
variance exceeds :math:`t`, PCA keeps components :math:`0..k` and NPCA keeps
:math:`k-1..` (both include the component that straddles the threshold).

Everything is computed in float64 on the input's device (torch tensors or arrays in,
tensors out).
"""
from __future__ import annotations

import math
import numpy as np
import torch

__all__ = ["ledoit_wolf", "empirical_covariance", "mahalanobis", "chi2_threshold", "pca",
           "select_components", "MVG", "ClassGaussians"]

_DTYPE = torch.float64


def _as_tensor(x, device=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    dev = device if device is not None else t.device
    if torch.device(dev).type == "mps":                      # no float64 on Apple GPUs: fit on the CPU
        dev = "cpu"
    t = t.detach().to(dtype=_DTYPE, device=dev)
    if t.ndim == 1:
        t = t[:, None]
    if t.ndim != 2:
        raise ValueError(f"expected features of shape (N, D), got {tuple(t.shape)}")
    return t


def empirical_covariance(x, assume_centered: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean (D,), S (D, D))`` with the biased (1/N) normalisation, as sklearn."""
    x = _as_tensor(x)
    mean = torch.zeros(x.shape[1], dtype=_DTYPE, device=x.device) if assume_centered else x.mean(0)
    xc = x - mean
    return mean, xc.T @ xc / x.shape[0]


def ledoit_wolf(x, assume_centered: bool = False) -> tuple[torch.Tensor, torch.Tensor, float]:
    r"""Ledoit-Wolf shrunk covariance of ``x (N, D)``: ``(mean, Sigma, rho)``.

    :math:`\Sigma = (1-\rho) S + \rho\,\nu I` with the shrinkage :math:`\rho \in [0, 1]` of
    the module docstring (sklearn's ``ledoit_wolf``; :math:`\rho = 0` when ``D == 1``).
    """
    x = _as_tensor(x)
    n, d = x.shape
    mean, s = empirical_covariance(x, assume_centered)
    xc = x - mean
    nu = torch.trace(s) / d
    if d == 1:                                            # sklearn: no shrinkage in 1-D
        return mean, s, 0.0
    s_fro2 = (s ** 2).sum()
    beta = ((xc ** 2).sum(1) ** 2).sum() / n - s_fro2          # (1/N) sum ||x_i||^4 - ||S||_F^2
    beta = beta / (n * d)
    delta = (s_fro2 - 2 * nu * torch.trace(s) + d * nu ** 2) / d  # ||S - nu I||_F^2 / D
    beta = torch.minimum(beta, delta)
    rho = 0.0 if float(beta) == 0.0 else float(beta / delta)
    sigma = (1 - rho) * s + rho * nu * torch.eye(d, dtype=_DTYPE, device=x.device)
    return mean, sigma, rho


def _precision(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric PSD matrix: by Cholesky when it is positive definite (the
    shrunk case), else the pseudo-inverse on its numerical range (eigendecomposition)."""
    chol, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        prec = torch.cholesky_inverse(chol)
        if bool(torch.isfinite(prec).all()):
            return (prec + prec.T) / 2
    evals, evecs = torch.linalg.eigh(sigma)
    keep = evals > evals.max().clamp(min=0) * sigma.shape[0] * torch.finfo(_DTYPE).eps
    inv = torch.where(keep, 1.0 / evals.clamp(min=torch.finfo(_DTYPE).tiny), torch.zeros_like(evals))
    return (evecs * inv) @ evecs.T


def mahalanobis(x, mean, precision) -> torch.Tensor:
    r""":math:`\sqrt{(x - \mu)^\top P (x - \mu)}` for every row of ``x (N, D)``: ``(N,)``."""
    x = _as_tensor(x)
    diff = x - mean.to(x.device)
    sq = torch.einsum("nd,de,ne->n", diff, precision.to(x.device), diff)
    return sq.clamp(min=0).sqrt()


def chi2_threshold(fpr: float, df: int) -> float:
    r"""Distance :math:`t` with :math:`P(M > t) = \text{fpr}` when :math:`M^2 \sim \chi^2_{df}`."""
    from scipy.stats import chi2
    if not 0.0 < fpr < 1.0:
        raise ValueError(f"fpr must lie in (0, 1), got {fpr}")
    return float(math.sqrt(chi2.ppf(1.0 - fpr, df)))


def pca(x) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Principal components of ``x (N, D)``: ``(mean (D,), components (K, D), explained_variance_ratio (K,))``.

    Rows sorted by decreasing variance, as ``sklearn.decomposition.PCA``, but only the
    ``K <= min(N - 1, D)`` components with non-zero variance (sklearn also returns the
    ``min(N, D) - rank`` directions of zero variance, whose orientation in the null space is
    arbitrary). Signs are fixed so the largest-magnitude entry of each component is
    positive (deterministic).
    """
    x = _as_tensor(x)
    mean = x.mean(0)
    _, svals, vh = torch.linalg.svd(x - mean, full_matrices=False)
    rank = int((svals > svals.max() * max(x.shape) * torch.finfo(_DTYPE).eps).sum()) if len(svals) else 0
    svals, vh = svals[:max(rank, 1)], vh[:max(rank, 1)]
    var = svals ** 2
    total = var.sum()
    ratio = var / total if float(total) > 0 else torch.zeros_like(var)
    idx = vh.abs().argmax(1)
    signs = torch.sign(vh[torch.arange(len(vh)), idx])
    signs[signs == 0] = 1.0
    return mean, vh * signs[:, None], ratio


def select_components(ratio: torch.Tensor, mode: str, var: float | None = None,
                      n_components: int | None = None) -> slice:
    """Which rows of a PCA basis to keep (sorted by decreasing variance).

    ``mode="pca"``: the top components; ``"npca"``: the bottom ones. Either a count
    (``n_components``) or an explained-variance fraction ``var`` with the official rule
    (module docstring).
    """
    if mode not in ("pca", "npca"):
        raise ValueError(f"mode must be 'pca' or 'npca', got {mode!r}")
    k_total = len(ratio)
    if n_components is not None:
        if not 1 <= n_components <= k_total:
            raise ValueError(f"n_components must lie in [1, {k_total}], got {n_components}")
        return slice(0, n_components) if mode == "pca" else slice(k_total - n_components, k_total)
    if var is None or not 0.0 < var < 1.0:
        raise ValueError(f"var must lie in (0, 1), got {var}")
    threshold = var if mode == "pca" else 1.0 - var
    cum = torch.cumsum(ratio, 0)
    above = torch.nonzero(cum > threshold)
    last = int(above[0]) if len(above) else k_total - 1
    return slice(0, last + 1) if mode == "pca" else slice(max(last - 1, 0), k_total)


class MVG:
    r"""A multivariate Gaussian model of normal features, scored by Mahalanobis distance.

    Args:
        covariance: ``"ledoit-wolf"`` (shrunk full covariance, the paper's choice),
            ``"empirical"`` (unshrunk; pseudo-inverse where singular), ``"diag"``
            (per-feature variance: the standardised Euclidean distance, *SED*) or
            ``"identity"`` (Euclidean distance to the mean).
        project: None, ``"pca"`` or ``"npca"``: fit in a principal subspace first.
        var: explained-variance fraction the kept components carry (PCA: e.g. 0.99,
            NPCA: e.g. 0.01).
        n_components: keep this many components instead (overrides ``var``).

    After `fit`: ``mean_``, ``covariance_``, ``precision_``, ``shrinkage_`` (rho, 0 unless
    Ledoit-Wolf), ``components_`` (K, D) and ``pca_mean_`` when projecting,
    ``explained_variance_ratio_`` (of the full PCA), ``dim`` (dimensions modelled).
    """

    COVARIANCES = ("ledoit-wolf", "empirical", "diag", "identity")

    def __init__(self, covariance: str = "ledoit-wolf", project: str | None = None,
                 var: float | None = None, n_components: int | None = None) -> None:
        if covariance not in self.COVARIANCES:
            raise ValueError(f"covariance must be one of {self.COVARIANCES}, got {covariance!r}")
        if project not in (None, "pca", "npca"):
            raise ValueError(f"project must be None, 'pca' or 'npca', got {project!r}")
        if project is not None and var is None and n_components is None:
            var = 0.99 if project == "pca" else 0.01
        self.covariance, self.project, self.var, self.n_components = covariance, project, var, n_components
        self.components_: torch.Tensor | None = None
        self.pca_mean_: torch.Tensor | None = None
        self.explained_variance_ratio_: torch.Tensor | None = None

    def transform(self, x) -> torch.Tensor:
        """Features in the modelled space: projected onto the kept components if any, (N, dim)."""
        x = _as_tensor(x)
        if self.components_ is None:
            return x
        return (x - self.pca_mean_.to(x.device)) @ self.components_.to(x.device).T

    def fit(self, x) -> "MVG":
        """Fit on normal features ``x (N, D)``."""
        x = _as_tensor(x)
        if x.shape[0] < 2:
            raise ValueError("MVG needs at least 2 samples")
        if self.project is not None:
            self.pca_mean_, basis, ratio = pca(x)
            self.explained_variance_ratio_ = ratio
            self.components_ = basis[select_components(ratio, self.project, self.var, self.n_components)]
        z = self.transform(x)
        d = z.shape[1]
        eye = torch.eye(d, dtype=_DTYPE, device=z.device)
        self.shrinkage_ = 0.0
        if self.covariance == "ledoit-wolf":
            self.mean_, self.covariance_, self.shrinkage_ = ledoit_wolf(z)
        elif self.covariance == "empirical":
            self.mean_, self.covariance_ = empirical_covariance(z)
        elif self.covariance == "diag":
            self.mean_ = z.mean(0)
            self.covariance_ = torch.diag(z.var(0, unbiased=True))
        else:
            self.mean_, self.covariance_ = z.mean(0), eye
        if self.covariance == "identity":
            self.precision_ = eye
        elif self.covariance == "diag":
            v = torch.diagonal(self.covariance_)
            self.precision_ = torch.diag(torch.where(v > 0, 1.0 / v.clamp(min=torch.finfo(_DTYPE).tiny),
                                                     torch.zeros_like(v)))
        else:
            self.precision_ = _precision(self.covariance_)
        self.dim = d
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "precision_"):
            raise RuntimeError("MVG is not fitted: call fit(x) first")

    def mahalanobis(self, x) -> torch.Tensor:
        """Distance of every row of ``x (N, D)`` to the fitted Gaussian: ``(N,)``."""
        self._check_fitted()
        return mahalanobis(self.transform(x), self.mean_, self.precision_)

    score = mahalanobis

    def threshold(self, fpr: float) -> float:
        """Distance above which a sample is flagged, for target false-positive rate ``fpr`` (chi^2_dim)."""
        self._check_fitted()
        return chi2_threshold(fpr, self.dim)

    def predict(self, x, fpr: float = 0.05) -> torch.Tensor:
        """Boolean ``(N,)``: anomalous at the chi-squared threshold for ``fpr``."""
        return self.mahalanobis(x) > self.threshold(fpr)


class ClassGaussians:
    r"""One Gaussian per class with a shared (pooled) or per-class covariance.

    ``shared=True``: :math:`\Sigma` is the Ledoit-Wolf estimate of the pooled within-class
    scatter (every sample centred by its class mean), as in the Mahalanobis OOD detector
    of Lee et al. (2018); ``shared=False``: one Ledoit-Wolf covariance per class.
    ``shrinkage=False`` uses the unshrunk estimates instead.

    After `fit`: ``classes_`` (K,), ``means_`` (K, D), ``precisions_`` (K, D, D) (the same
    matrix K times when shared), ``shrinkage_`` (list of rho).
    """

    def __init__(self, shared: bool = True, shrinkage: bool = True) -> None:
        self.shared, self.shrinkage = shared, shrinkage

    def _cov(self, x, centered: bool) -> tuple[torch.Tensor, float]:
        if self.shrinkage:
            _, sigma, rho = ledoit_wolf(x, assume_centered=centered)
            return sigma, rho
        return empirical_covariance(x, assume_centered=centered)[1], 0.0

    def fit(self, x, y) -> "ClassGaussians":
        x = _as_tensor(x)
        y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)).to(x.device).long()
        self.classes_ = torch.unique(y)
        self.means_ = torch.stack([x[y == c].mean(0) for c in self.classes_])
        if self.shared:
            resid = x - self.means_[torch.searchsorted(self.classes_, y)]
            sigma, rho = self._cov(resid, centered=True)
            prec = _precision(sigma)
            self.precisions_ = prec.expand(len(self.classes_), -1, -1)
            self.shrinkage_ = [rho]
        else:
            covs = [self._cov(x[y == c], centered=False) for c in self.classes_]
            self.precisions_ = torch.stack([_precision(s) for s, _ in covs])
            self.shrinkage_ = [rho for _, rho in covs]
        return self

    def mahalanobis(self, x) -> torch.Tensor:
        """``(N, K)`` distance of every sample to every class Gaussian (columns in ``classes_`` order)."""
        x = _as_tensor(x)
        return torch.stack([mahalanobis(x, m, p) for m, p in zip(self.means_, self.precisions_)], 1)

    def predict(self, x) -> torch.Tensor:
        """Class of the nearest Gaussian, ``(N,)``."""
        return self.classes_[self.mahalanobis(x).argmin(1)]

    def min_distance(self, x) -> torch.Tensor:
        """Distance to the nearest class Gaussian ``(N,)`` (an OOD score)."""
        return self.mahalanobis(x).min(1).values


class OnlineClassCov:
    r"""Running per-class means and covariances of streamed features (ISDA-style update).

    The estimator of implicit semantic data augmentation (ISDA, Wang et al. 2019) that
    SF(DA)^2 uses for its implicit feature augmentation. A batch with :math:`n_c` samples of
    class :math:`c`, batch mean :math:`\bar f_c` and biased batch covariance :math:`S_c` is merged
    into the running :math:`(N_c, \mu_c, \Sigma_c)` with :math:`w = n_c / (n_c + N_c)`:

    .. math:: \Sigma_c \leftarrow (1 - w)\Sigma_c + w S_c + w(1 - w)(\mu_c - \bar f_c)(\mu_c - \bar f_c)^\top,
              \quad \mu_c \leftarrow (1 - w)\mu_c + w \bar f_c, \quad N_c \leftarrow N_c + n_c,

    which is exactly the biased (``ddof=0``) covariance of all samples of class :math:`c`
    seen so far (a test checks this against the batch estimate). Classes absent from a batch
    are unchanged.

    `update` returns the new covariances **with** the autograd graph of the current batch
    (the old state enters detached), as in SF(DA)^2's ``update_CV``, so losses on the
    covariances (IFA, FD) back-propagate into the batch's features; the stored state is
    detached.

    Attributes: ``amount`` (C,), ``mean`` (C, D), ``cov`` (C, D, D).
    """

    def __init__(self, num_classes: int, dim: int, device=None, dtype=torch.float32) -> None:
        self.num_classes, self.dim = int(num_classes), int(dim)
        self.amount = torch.zeros(num_classes, device=device, dtype=dtype)
        self.mean = torch.zeros(num_classes, dim, device=device, dtype=dtype)
        self.cov = torch.zeros(num_classes, dim, dim, device=device, dtype=dtype)

    def update(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Merge a batch ``features`` (N, D) with integer ``labels`` (N,); returns ``cov`` (C, D, D)."""
        f = features.to(self.cov.dtype)
        onehot = torch.nn.functional.one_hot(labels.long(), self.num_classes).to(f)      # (N, C)
        n_c = onehot.sum(0)                                                               # (C,)
        denom = n_c.clamp_min(1.0)
        batch_mean = (onehot.t() @ f) / denom[:, None]                                    # (C, D)
        centred = (f[:, None, :] - batch_mean[None]) * onehot[:, :, None]                # (N, C, D)
        batch_cov = torch.einsum("ncd,nce->cde", centred, centred) / denom[:, None, None]
        total = n_c + self.amount
        w = torch.where(total > 0, n_c / total.clamp_min(1e-12), torch.zeros_like(n_c))  # (C,)
        diff = self.mean - batch_mean                                                     # (C, D)
        extra = (w * (1 - w))[:, None, None] * diff[:, :, None] * diff[:, None, :]
        cov = (1 - w)[:, None, None] * self.cov + w[:, None, None] * batch_cov + extra
        self.mean = ((1 - w)[:, None] * self.mean + w[:, None] * batch_mean).detach()
        self.amount = total.detach()
        self.cov = cov.detach()
        return cov


__all__ += ["OnlineClassCov"]

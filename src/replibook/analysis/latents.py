r"""What the latent variables of a Gaussian-posterior model (VAE) are doing.

A VAE encoder maps each input :math:`x` to :math:`q(z \mid x) = \mathcal N(\mu(x),
\operatorname{diag}\sigma^2(x))`. Bonheme & Grzes (2021, arXiv 2109.12679, Sec. 3)
sort its latent variables by how the posterior of each one behaves over a data set
(their "polarised regime" extended from one input to many):

- **active**: the variable carries information, :math:`\sigma_j^2(x) \ll 1` for
  (almost) every :math:`x`;
- **passive**: the variable has collapsed to the prior, :math:`\sigma_j^2(x) \approx 1`
  and :math:`\mu_j(x) \approx 0` for every :math:`x`;
- **mixed**: anything else, typically a variable active on a subset of the inputs only.

:func:`taxonomy` applies those definitions with explicit thresholds. The other helpers
look at latents directly: :func:`traversal` decodes a sweep of one latent,
:func:`traversal_grid` draws sweeps of several latents (images or 1-D series), and
:func:`embed2d` projects features to 2-D (PCA or t-SNE) for scatter plots.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

__all__ = ["Taxonomy", "taxonomy", "traversal", "traversal_grid", "embed2d"]


def _np(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=float)


@dataclass
class Taxonomy:
    """Per-latent labels and the statistics they were read from (all arrays of length D).

    Attributes:
        labels: "active", "passive" or "mixed" per latent.
        frac_low_var: fraction of inputs with :math:`\\sigma_j^2(x) <` ``var_threshold``.
        mean_var: :math:`E_x[\\sigma_j^2(x)]`.
        var_mu: :math:`\\operatorname{Var}_x[\\mu_j(x)]`.
        mean_abs_mu: :math:`E_x|\\mu_j(x)|`.
        thresholds: the thresholds used (for the ledger).
    """

    labels: list[str]
    frac_low_var: np.ndarray
    mean_var: np.ndarray
    var_mu: np.ndarray
    mean_abs_mu: np.ndarray
    thresholds: dict

    def mask(self, label: str) -> np.ndarray:
        """Boolean mask (D,) of the latents labelled ``label``."""
        if label not in ("active", "passive", "mixed"):
            raise ValueError(f"unknown label {label!r}")
        return np.array([lab == label for lab in self.labels])

    @property
    def active(self) -> np.ndarray:
        return self.mask("active")

    @property
    def passive(self) -> np.ndarray:
        return self.mask("passive")

    @property
    def mixed(self) -> np.ndarray:
        return self.mask("mixed")

    def counts(self) -> dict[str, int]:
        """``{"active": n, "passive": n, "mixed": n}``."""
        return {lab: int(self.mask(lab).sum()) for lab in ("active", "passive", "mixed")}

    def table(self) -> pd.DataFrame:
        """One row per latent: label and statistics."""
        return pd.DataFrame({"label": self.labels, "frac_sigma2_low": self.frac_low_var,
                             "E[sigma2]": self.mean_var, "Var[mu]": self.var_mu,
                             "E|mu|": self.mean_abs_mu}).rename_axis("latent")


def taxonomy(mu, logvar, var_threshold: float = 0.8, mean_var_threshold: float = 0.01,
             high: float = 0.95, low: float | None = None) -> Taxonomy:
    """Label each latent active, passive or mixed over a data set (Bonheme & Grzes 2021, Sec. 3).

    With :math:`f_j` the fraction of inputs whose :math:`\\sigma_j^2(x) <` ``var_threshold``:

    - **active** if :math:`f_j \\ge` ``high``: a narrow posterior for almost every x;
    - **passive** if not active, :math:`E_x[\\sigma_j^2] >` ``var_threshold`` and
      :math:`\\operatorname{Var}_x[\\mu_j] <` ``mean_var_threshold``: the posterior is the prior
      (wide, mean fixed at about 0) over the data set. With ``low`` set, a passive latent must
      also have :math:`f_j \\le` ``low`` (a strict per-input reading: wide for almost every x);
    - **mixed** otherwise: active on a subset of the inputs, or a wide posterior whose mean
      still moves with x.

    Args:
        mu, logvar: posterior means and log-variances (N, D) over N inputs.
        var_threshold: :math:`\\sigma^2` below this counts as "small" (0.8 in the book's chapters).
        mean_var_threshold: the largest :math:`\\operatorname{Var}_x[\\mu_j]` of a passive latent.
        high: the fraction of inputs with a small variance that makes a latent active.
        low: optional; see above (None: no per-input condition on passive latents).

    Returns:
        a :class:`Taxonomy`.
    """
    m, lv = _np(mu), _np(logvar)
    if m.ndim != 2 or m.shape != lv.shape:
        raise ValueError(f"mu and logvar must both be (N, D), got {m.shape} and {lv.shape}")
    if not 0 < high <= 1 or (low is not None and not 0 <= low < high):
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    var = np.exp(lv)
    frac = (var < var_threshold).mean(0)
    mean_var, var_mu = var.mean(0), m.var(0)
    labels = []
    for j in range(m.shape[1]):
        if frac[j] >= high:
            labels.append("active")
        elif (mean_var[j] > var_threshold and var_mu[j] < mean_var_threshold
              and (low is None or frac[j] <= low)):
            labels.append("passive")
        else:
            labels.append("mixed")
    return Taxonomy(labels, frac, mean_var, var_mu, np.abs(m).mean(0),
                    {"var_threshold": var_threshold, "mean_var_threshold": mean_var_threshold,
                     "high": high, "low": low})


@torch.no_grad()
def traversal(decode_fn: Callable[[torch.Tensor], torch.Tensor], z0, dim: int,
              values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Decode ``z0`` with latent ``dim`` set to each of ``values``.

    Args:
        decode_fn: maps latents (B, D) to outputs (B, ...) (e.g. ``lambda z: torch.sigmoid(vae.decode(z))``).
        z0: base latent (D,), or several bases (B, D).
        dim: the latent to sweep.
        values: V values for that latent.

    Returns:
        (V, ...) for one base, (B, V, ...) for several.
    """
    z = torch.as_tensor(z0, dtype=torch.float32)
    single = z.ndim == 1
    z = z.view(1, -1) if single else z
    if not 0 <= dim < z.shape[1]:
        raise ValueError(f"dim {dim} out of range for {z.shape[1]} latents")
    vals = torch.as_tensor(values, dtype=z.dtype, device=z.device).flatten()
    sweep = z[:, None, :].repeat(1, len(vals), 1)                   # (B, V, D)
    sweep[:, :, dim] = vals
    out = decode_fn(sweep.flatten(0, 1))
    out = out.reshape(z.shape[0], len(vals), *out.shape[1:])
    return out[0] if single else out


def _mosaic(rows: torch.Tensor, pad: int = 1) -> np.ndarray:
    """(R, V, C, H, W) images -> one (R*(H+pad), V*(W+pad), C) array (white padding)."""
    r, v, c, h, w = rows.shape
    canvas = torch.ones(r, h + pad, v, w + pad, c)
    canvas[:, :h, :, :w] = rows.permute(0, 3, 1, 4, 2)
    return canvas.reshape(r * (h + pad), v * (w + pad), c)[:-pad or None, :-pad or None].numpy()


def traversal_grid(ax_or_fig, decode_fn: Callable[[torch.Tensor], torch.Tensor], z0,
                   dims: Sequence[int], values: Sequence[float] | torch.Tensor,
                   labels: Sequence[str] | None = None, cmap: str = "gray",
                   highlight: Sequence[int] = ()) -> plt.Figure:
    """Draw latent traversals: one row per latent in ``dims``, one column per value.

    Images (decoded outputs (V, C, H, W), values in [0, 1]) are drawn as one mosaic on a
    single axis (an Axes, or a new one on a Figure). 1-D series (V, T) or (V, C, T) are
    drawn as curves coloured by the traversed value: on a Figure, one axis per latent;
    on a single Axes, the rows are stacked with vertical offsets.

    Args:
        ax_or_fig: a matplotlib Axes or Figure.
        decode_fn, z0, values: as in :func:`traversal` (``z0`` a single base (D,)).
        dims: the latents to sweep, in row order.
        labels: row labels (default ``z_j``).
        cmap: colormap for single-channel images.
        highlight: latents whose row label is drawn in red (e.g. the passive ones).

    Returns:
        the figure.
    """
    dims = list(dims)
    labels = list(labels) if labels is not None else [f"z{j}" for j in dims]
    vals = torch.as_tensor(values, dtype=torch.float32).flatten()
    rows = torch.stack([traversal(decode_fn, z0, j, vals).detach().float().cpu() for j in dims])
    is_fig = isinstance(ax_or_fig, plt.Figure)
    fig = ax_or_fig if is_fig else ax_or_fig.figure
    colour = lambda j: "#d1495b" if j in set(highlight) else "black"   # noqa: E731
    if rows.ndim == 5:                                              # images (R, V, C, H, W)
        ax = fig.add_subplot(1, 1, 1) if is_fig else ax_or_fig
        img = _mosaic(rows.clamp(0, 1))
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap=cmap, vmin=0, vmax=1,
                  interpolation="nearest")
        h = rows.shape[3] + 1
        ax.set_yticks([h * i + rows.shape[3] / 2 for i in range(len(dims))])
        ax.set_yticklabels(labels)
        for tick, j in zip(ax.get_yticklabels(), dims):
            tick.set_color(colour(j))
        w = rows.shape[4] + 1
        ax.set_xticks([w * i + rows.shape[4] / 2 for i in range(len(vals))])
        ax.set_xticklabels([f"{v:.1f}" for v in vals.tolist()])
        ax.grid(False)
        ax.set_xlabel("latent value")
        return fig
    if rows.ndim not in (3, 4):
        raise ValueError(f"decoded outputs must be images (C, H, W) or series (T,)/(C, T), got "
                         f"{tuple(rows.shape[2:])}")
    series = rows if rows.ndim == 4 else rows[:, :, None]           # (R, V, C, T)
    colours = plt.get_cmap("viridis")(np.linspace(0, 1, len(vals)))
    if is_fig:
        axes = fig.subplots(len(dims), 1, sharex=True, squeeze=False)[:, 0]
        offsets = [0.0] * len(dims)
    else:
        axes = [ax_or_fig] * len(dims)
        span = float((series.amax() - series.amin()).clamp(min=1e-6))
        offsets = [-1.2 * span * i for i in range(len(dims))]
    for i, (ax, j) in enumerate(zip(axes, dims)):
        for v in range(len(vals)):
            for c in range(series.shape[2]):
                ax.plot(series[i, v, c].numpy() + offsets[i], color=colours[v], lw=1,
                        ls="-" if c == 0 else "--")
        if is_fig:
            ax.set_ylabel(labels[i], color=colour(j))
        else:
            ax.text(0, offsets[i], labels[i], color=colour(j), ha="right", va="center")
    axes[-1].set_xlabel("t")
    return fig


def embed2d(features, method: str = "pca", seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D embedding (N, 2) of ``features`` (N, D): ``"pca"`` (on centred features) or ``"tsne"``."""
    f = _np(features)
    if f.ndim != 2:
        raise ValueError(f"features must be (N, D), got {f.shape}")
    if method == "pca":
        from sklearn.decomposition import PCA
        if f.shape[1] == 1:
            return np.concatenate([f - f.mean(0), np.zeros_like(f)], 1)
        return PCA(n_components=2, random_state=seed).fit_transform(f)
    if method == "tsne":
        from sklearn.manifold import TSNE
        perp = min(perplexity, max(1.0, (len(f) - 1) / 3))
        return TSNE(n_components=2, perplexity=perp, init="pca", random_state=seed).fit_transform(f)
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")

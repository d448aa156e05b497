"""Chapter `disentangle-time-series`: Li et al., *Towards Learning Disentangled Representations
for Time Series* (KDD 2022; arXiv:2105.08179 as "Learning Disentangled Representations for
Time Series"). No official code was located.

**Why.** An LSTM-VAE with a strong autoregressive decoder learns to ignore its latent code
(*KL vanishing*: q(z|x) collapses onto the prior, so I(x; z) is about 0). The classic
disentanglement penalties make this worse: the ELBO's KL term decomposes (Chen et al. 2018)
into

.. math::

    \\mathbb E_{p(x)} \\mathrm{KL}(q(z|x) \\,\\|\\, p(z)) = I_q(x; z) + \\mathrm{TC}(z)
        + \\textstyle\\sum_j \\mathrm{KL}(q(z_j) \\,\\|\\, p(z_j)),

and beta-VAE scales all three, the index-code mutual information included.

**DTS** (Disentangle Time Series) keeps the penalties on the total correlation and the
dimension-wise KL (heavier than the ELBO's), replaces the ELBO's ``-I_q`` by a mutual
information *maximisation* term, and adds a group-level total correlation between
segments of the latent vector (multi-level disentanglement: individual factors and group
"semantic segments"). The objective maximised here is

.. math::

    \\mathbb E_q \\log p(x|z) + \\alpha\\, I_q(x; z) - \\beta\\, \\mathrm{TC}(z)
        - \\gamma \\textstyle\\sum_j \\mathrm{KL}(q(z_j)\\|p(z_j))
        - \\lambda_g\\, \\mathrm{KL}\\big(q(z) \\,\\|\\, \\textstyle\\prod_g q(z_g)\\big)

with every term estimated by minibatch-weighted sampling (`losses.vae.tc_decomposition`).
The paper's exact weights could not be verified (only the abstract was reachable); the
defaults below are the book's (alpha=1, beta=6, gamma=2, lambda_g=2, two groups of d/2).
``DTS-noMI`` sets alpha=0 (the MI term is neither penalised nor rewarded).

This module holds the objective, the arms of the chapter's comparison, one training run,
and the representation metrics (held-out MWS mutual information, active units,
MIG / DCI against the generator's factors, a linear probe, decoded latent traversals).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from ..analysis import latents
from ..data.procedural import Bundle, mts_factors
from ..losses.vae import beta_tcvae_loss, elbo_loss, kl_normal, reconstruction_nll, tc_decomposition
from ..metrics import disentanglement as dis
from ..models.vae import SeqVAE, VAEOutput
from ..train import History, fit, probes

__all__ = ["dts_loss", "Arm", "ARMS", "two_groups", "loss_function", "train_arm", "encode",
           "heldout_mi", "reconstruction_mse", "evaluate", "standardised_decoder", "traversals",
           "traversal_effects", "factor_gallery", "curves_figure", "effects_table"]


def two_groups(latent_dim: int) -> list[list[int]]:
    """The default partition of z into two contiguous groups of d/2 dimensions."""
    if latent_dim < 2:
        raise ValueError("group TC needs latent_dim >= 2")
    half = latent_dim // 2
    return [list(range(half)), list(range(half, latent_dim))]


def dts_loss(output: VAEOutput, x: torch.Tensor, dataset_size: int, *, alpha: float = 1.0,
             beta: float = 6.0, gamma: float = 2.0, lambda_g: float = 2.0,
             groups: Sequence[Sequence[int]] | None = None,
             likelihood: str = "gaussian") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The DTS objective as a loss to minimise (batch means, MWS estimates):

    ``-log p(x|z) - alpha * I_q(x;z) + beta * TC(z) + gamma * sum_j KL(q(z_j)||p(z_j))
    + lambda_g * TC_groups(z)``

    Args:
        output: the model's forward pass on ``x`` (posterior sample, mu, logvar).
        dataset_size: N of the training set (for the MWS weights).
        groups: a partition of the latent indices; None = two halves. ``lambda_g = 0``
            skips the group term.
    Returns: (loss, detached parts: recon, mi, tc, dim_kl, group_tc, ...).
    """
    rec = reconstruction_nll(output.out, x, likelihood).mean()                 # E_q -log p(x|z)
    groups = two_groups(output.z.shape[1]) if groups is None else groups
    parts = tc_decomposition(output.z, output.mu, output.logvar, dataset_size,
                             groups=groups if lambda_g else None)
    loss = (rec
            - alpha * parts["mi"]                     # MI maximisation (ELBO has -1 * I_q here)
            + beta * parts["tc"]                      # heavier total-correlation penalty
            + gamma * parts["dim_kl"])                # heavier dimension-wise KL penalty
    if lambda_g:
        loss = loss + lambda_g * parts["group_tc"]    # TC between the latent groups
    logged = {k: v.detach() for k, v in parts.items()}
    logged["recon"] = rec.detach()
    return loss, logged


@dataclass(frozen=True)
class Arm:
    """One objective of the comparison. ``kind``: "elbo" (beta-VAE family), "tcvae"
    (Chen et al. 2018) or "dts"; ``weights`` are its keyword arguments."""

    name: str
    kind: str
    weights: Mapping[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        w = ", ".join(f"{k}={v:g}" for k, v in self.weights.items())
        return f"{self.name} ({self.kind}: {w})"


ARMS: dict[str, Arm] = {a.name: a for a in [
    Arm("LSTM-VAE", "elbo", {"beta": 1.0}),
    Arm("beta-VAE", "elbo", {"beta": 4.0}),
    Arm("beta-TCVAE", "tcvae", {"alpha": 1.0, "beta": 6.0, "gamma": 1.0}),
    Arm("DTS", "dts", {"alpha": 1.0, "beta": 6.0, "gamma": 2.0, "lambda_g": 2.0}),
    Arm("DTS-noMI", "dts", {"alpha": 0.0, "beta": 6.0, "gamma": 2.0, "lambda_g": 2.0}),
    Arm("DTS-noGroup", "dts", {"alpha": 1.0, "beta": 6.0, "gamma": 2.0, "lambda_g": 0.0}),
]}


def loss_function(arm: Arm, dataset_size: int,
                  likelihood: str = "gaussian") -> Callable[[SeqVAE, torch.Tensor], torch.Tensor]:
    """``loss_fn(model, x) -> scalar`` for `train.fit`."""
    if arm.kind == "elbo":
        return lambda model, x: elbo_loss(model(x), x, beta=arm.weights.get("beta", 1.0),
                                          likelihood=likelihood)
    if arm.kind == "tcvae":
        return lambda model, x: beta_tcvae_loss(model(x), x, dataset_size, likelihood=likelihood,
                                                **arm.weights)[0]
    if arm.kind == "dts":
        return lambda model, x: dts_loss(model(x), x, dataset_size, likelihood=likelihood,
                                         **arm.weights)[0]
    raise ValueError(f"unknown arm kind '{arm.kind}' (elbo, tcvae, dts)")


# ------------------------------------------------------------------ representation metrics

@torch.no_grad()
def encode(model: SeqVAE, x: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior means and log-variances of ``x`` (N, C, T): two (N, d) tensors."""
    model.eval()
    mus, logvars = [], []
    for i in range(0, len(x), batch):
        mu, logvar = model.encode(x[i:i + batch])
        mus.append(mu)
        logvars.append(logvar)
    return torch.cat(mus), torch.cat(logvars)


@torch.no_grad()
def heldout_mi(model: SeqVAE, x: torch.Tensor, n_batches: int = 10, batch: int = 128,
               seed: int = 0) -> dict[str, float]:
    """MWS estimates of I_q(x; z), TC, dimension-wise KL and the group TC on held-out series.

    ``n_batches`` random batches of ``batch`` series from ``x`` (N = len(x) for the MWS
    weights), one posterior sample each, fixed generator: averages over batches. The
    MWS estimate of I_q is at most log N (the posterior of x_i alone), so it is read
    comparatively across methods at equal N and batch size.
    """
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    batch = min(batch, n)
    acc: dict[str, float] = {}
    for _ in range(n_batches):
        idx = torch.randperm(n, generator=gen)[:batch].to(x.device)
        mu, logvar = model.encode(x[idx])
        eps = torch.randn(mu.shape, generator=gen).to(mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        parts = tc_decomposition(z, mu, logvar, n, groups=two_groups(z.shape[1]))
        for k in ("mi", "tc", "dim_kl", "group_tc"):
            acc[k] = acc.get(k, 0.0) + float(parts[k]) / n_batches
    return acc


@torch.no_grad()
def reconstruction_mse(model: SeqVAE, x: torch.Tensor, batch: int = 512) -> float:
    """Mean squared error of the decoded posterior *means* (no sampling), per value."""
    model.eval()
    err = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch]
        mu, _ = model.encode(xb)
        err += float(((model.decode(mu) - xb) ** 2).sum())
    return err / x.numel()


def evaluate(model: SeqVAE, train: Bundle, test: Bundle, *, mi_batches: int = 10,
             mi_batch: int = 128, probe_C: float = 1.0, seed: int = 0) -> dict[str, float]:
    """All representation metrics of one trained model.

    - ``mi``, ``tc``, ``group_tc``: MWS estimates on held-out batches (`heldout_mi`, test set);
    - ``kl``: the mean analytic KL(q(z|x) || N(0, I)) on the test set (nats per series);
    - ``au``: active units, Cov_x(E_q[z_j]) > 0.01 on the training set;
    - ``mig``, ``dci_d``: MIG and DCI disentanglement of the training-set means against the
      generator's six factors;
    - ``probe_acc``: a linear probe (logistic regression) on the means, trained on the
      training set, scored on the test set, for the 6-class label;
    - ``mse``: reconstruction error of the test set from the posterior means.
    """
    mu_tr, _ = encode(model, train.x)
    mu_te, logvar_te = encode(model, test.x)
    out = heldout_mi(model, test.x, mi_batches, mi_batch, seed)
    out.pop("dim_kl")
    out["kl"] = float(kl_normal(mu_te, logvar_te).mean())
    n_active, _ = dis.active_units(mu_tr.cpu().numpy())
    out["au"] = float(n_active)
    f_tr = train.factors.cpu().numpy()
    z_tr = mu_tr.cpu().numpy()
    out["mig"] = float(dis.mig(f_tr, z_tr))
    out["dci_d"] = float(dis.dci(f_tr, z_tr)["disentanglement"])
    out["probe_acc"] = float(probes.linear(mu_tr.cpu(), train.y.cpu(), mu_te.cpu(), test.y.cpu(),
                                           C=probe_C)["acc"])
    out["mse"] = reconstruction_mse(model, test.x)
    return out


# ------------------------------------------------------------------ training

def train_arm(arm: Arm | str, train_x: torch.Tensor, *, hidden: int, latent_dim: int, steps: int,
              batch_size: int, lr: float = 1e-3, clip: float | None = 5.0, seed: int = 0,
              heldout_x: torch.Tensor | None = None, eval_every: int | None = None,
              eval_batches: int = 2, device: Any = None, progress: bool = False) -> tuple[SeqVAE, History]:
    """Train a `SeqVAE` on ``train_x`` (N, C, T) with one arm's objective.

    With ``heldout_x`` and ``eval_every``, the history records every ``eval_every``
    updates the held-out MWS ``mi``, the analytic ``kl`` and the reconstruction ``mse``
    (curves of the chapter). The model's initialisation is seeded with ``seed``.
    """
    arm = ARMS[arm] if isinstance(arm, str) else arm
    torch.manual_seed(seed)
    _, channels, length = train_x.shape
    model = SeqVAE(channels, length, latent_dim, hidden=hidden, likelihood="gaussian")
    eval_fn = None
    if heldout_x is not None and eval_every:
        def eval_fn(m: SeqVAE) -> dict[str, float]:
            parts = heldout_mi(m, heldout_x, n_batches=eval_batches, batch=128, seed=seed)
            mu, logvar = encode(m, heldout_x)
            return {"mi": parts["mi"], "kl": float(kl_normal(mu, logvar).mean()),
                    "mse": reconstruction_mse(m, heldout_x)}
    hist = fit(model, (train_x,), steps=steps, batch_size=batch_size, lr=lr, clip=clip,
               loss_fn=loss_function(arm, len(train_x)), eval_fn=eval_fn, eval_every=eval_every,
               seed=seed, device=device, progress=progress, desc=arm.name)
    return model, hist


# ------------------------------------------------------------------ traversals

def standardised_decoder(model: SeqVAE, mu: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """``decode(u) = model.decode(center + u * scale)`` with the mean and std over the data of
    the posterior means ``mu`` (N, d): traversals in units of each latent's own spread, so a
    latent that carries information over a tiny range is swept as far as one spread over
    the prior's. An inactive latent (std ~ 0) is not moved at all."""
    center, scale = mu.mean(0), mu.std(0)
    return lambda u: model.decode(center + u * scale)


@torch.no_grad()
def traversals(decode_fn: Callable[[torch.Tensor], torch.Tensor], d: int, values: Sequence[float],
               dims: Sequence[int] | None = None) -> torch.Tensor:
    """Decode the origin with one latent at a time (each of ``dims``, default all ``d``) set to
    each of ``values`` (`analysis.latents.traversal`): (len(dims), V, C, T) decoded means."""
    dims = range(d) if dims is None else dims
    z0 = torch.zeros(d)
    return torch.stack([latents.traversal(decode_fn, z0, j, values) for j in dims])


def traversal_effects(decoded: torch.Tensor, min_amplitude: float = 0.1) -> dict[str, np.ndarray]:
    """How much each traversed latent moves each measured factor signature.

    ``decoded``: (d, V, C, T) from `traversals`. Applies `mts_factors.measure` to every
    decoded series and returns, per signature (frequency, amplitude, rise, lag), the range
    (max - min) over the V traversal values: a (d,) array each. Lags are compared on the
    circle (differences wrapped to (-pi, pi]). Frequency and lag are undefined for a series
    without an oscillation, so they are NaN for a latent whose sweep decodes, at any of its
    values, a fitted amplitude below ``min_amplitude``.
    """
    d, v = decoded.shape[:2]
    m = mts_factors.measure(decoded.reshape(d * v, *decoded.shape[2:]))
    flat = m["amplitude"].reshape(d, v).min(1) < min_amplitude
    out = {}
    for key in ("frequency", "amplitude", "rise", "lag"):
        vals = m[key].reshape(d, v)
        if key == "lag":
            diffs = np.angle(np.exp(1j * (vals - vals[:, :1])))     # wrapped to (-pi, pi]
            out[key] = diffs.max(1) - diffs.min(1)
        else:
            out[key] = vals.max(1) - vals.min(1)
        if key in ("frequency", "lag"):
            out[key] = np.where(flat, np.nan, out[key])
    return out


# ------------------------------------------------------------------ figures and tables

def factor_gallery(size: int = 32, base: Sequence[int] = (1, 2, 1, 0, 0, 0)):
    """One panel per factor of `mts_factors`: channel 0 of the clean series with that factor
    swept over its levels and the others held at ``base`` (noise shown as a band of +-std)."""
    import matplotlib.pyplot as plt

    names, levels = mts_factors.FACTOR_NAMES, mts_factors.LEVELS
    fig, axes = plt.subplots(2, 3, figsize=(10, 4.6), sharex=True, sharey=True)
    t = np.arange(size)
    for k, ax in enumerate(axes.flat):
        rows = np.repeat(np.asarray([base]), levels[k], axis=0)
        rows[:, k] = np.arange(levels[k])
        x = mts_factors.render(rows, size)
        vals = mts_factors.factor_values(rows)[:, k]
        colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, levels[k]))
        for i in range(levels[k]):
            if names[k] == "coupling":          # the group factor: show two channels
                ax.plot(t, x[i, 0], color=colours[i], lw=1.2, label=f"lag {vals[i]:.2f}: ch 0")
                ax.plot(t, x[i, 1], color=colours[i], lw=1.2, ls="--", label="ch 1")
            elif names[k] == "noise":
                ax.plot(t, x[i, 0], color="black", lw=1)
                ax.fill_between(t, x[i, 0] - vals[i], x[i, 0] + vals[i], color=colours[i], alpha=0.3,
                                label=f"std {vals[i]:.2f}")
            else:
                ax.plot(t, x[i, 0], color=colours[i], lw=1.2, label=f"{vals[i]:.2f}")
        ax.set_title(names[k] + (" (nuisance)" if names[k] == "phase" else
                                 " (group)" if names[k] == "coupling" else ""))
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    for ax in axes[-1]:
        ax.set_xlabel("t")
    fig.tight_layout()
    return fig


def curves_figure(histories: Mapping[str, Sequence[History]], metrics: Sequence[tuple[str, str]] = (
        ("mi", "held-out I_q(x; z) (nats, MWS)"), ("kl", "KL(q(z|x) || p(z)) (nats)"),
        ("mse", "reconstruction MSE"))):
    """Mean +- std curves over seeds, one panel per metric, one line per arm."""
    import matplotlib.pyplot as plt
    from .. import plots

    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4))
    for ax, (key, label) in zip(np.atleast_1d(axes), metrics):
        curves = {arm: (hs[0].steps, [h.metrics[key] for h in hs]) for arm, hs in histories.items()}
        plots.curves_panel(ax, curves, "updates", label)
    np.atleast_1d(axes)[0].legend()
    fig.tight_layout()
    return fig


def effects_table(effects: Mapping[str, Mapping[str, np.ndarray]], spread: Mapping[str, np.ndarray]):
    """Per arm and latent: its spread over the data (std of the posterior means) and how far a
    +-2 spread traversal moves each measured signature (`traversal_effects`)."""
    import pandas as pd

    rows = []
    for arm, eff in effects.items():
        for j in range(len(spread[arm])):
            rows.append({"arm": arm, "latent": f"z{j}", "std of mean": float(spread[arm][j]),
                         **{f"Δ {k}": float(v[j]) for k, v in eff.items()}})
    return pd.DataFrame(rows).set_index(["arm", "latent"]).round(2)

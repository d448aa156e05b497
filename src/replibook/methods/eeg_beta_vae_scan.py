r"""beta-VAE + SCAN on single EEG trials (Honke, Higgins et al., arXiv 2010.15274).

The paper's pipeline, in four pieces:

1. **beta-VAE on single trials.** A 1-D convolutional VAE with a Gaussian decoder learns
   :math:`q(z_x \mid x)` for one trial :math:`x` (channels x samples) by minimising
   :math:`\mathbb E_q[-\log p(x \mid z_x)] + \beta\,\mathrm{KL}(q(z_x \mid x) \,\|\, \mathcal N(0, I))`
   (Higgins et al. 2017). The shared `models.vae.VAE` / `AE` and `losses.vae.elbo_loss`
   do this; `train_autoencoder` only fixes the settings.
2. **Participant representation.** The mean :math:`\mu(x)` averaged over the ``k``
   trials available for a participant (`participant_average`), then an L2 logistic
   regression per clinical label (`train.probes.logreg_auroc`).
3. **The canonical baseline.** Average the participant's ``k`` raw trials into an ERP and
   read its mean amplitude in fixed windows per channel (`window_features`; averaging
   then windowing equals windowing then averaging, both are linear), then the same
   logistic regression.
4. **SCAN** (Higgins et al. 2018, "SCAN: Learning hierarchical compositional visual
   concepts", ICLR). A symbol encoder :math:`q(z_y \mid y)` and decoder
   :math:`p(y \mid z_y)` over k-hot label vectors :math:`y`, trained against the
   *frozen* beta-VAE posterior by maximising

   .. math::
      \mathbb E_{q(z_y|y)} \log p(y \mid z_y) - \beta_y\,\mathrm{KL}(q(z_y \mid y) \,\|\, p(z))
      - \lambda\, \mathrm{KL}(q(z_x \mid x) \,\|\, q(z_y \mid y)).

   The last KL has the *visual* posterior first (SCAN calls it the forward KL; it is
   mode-covering in :math:`z_y`): where the trials sharing a label disagree on a latent,
   :math:`q(z_y|y)` must stay broad to cover them all, so :math:`\sigma_y \approx 1`
   on latents the label does not determine and :math:`\sigma_y \ll 1` only on those it
   does. `scan_relevance` reads those :math:`\sigma_y` per symbol.

Shapes: trials ``x`` are (N, C, T); latents (N, D); label vectors (N, S).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import nn

from ..data.procedural import Bundle, eeg_erp

from ..losses.vae import elbo_loss, kl_normal
from ..metrics.anomaly import auroc
from ..models.vae import AE, VAE
from ..train import fit
from ..train.probes import logreg_auroc

__all__ = [
    "ERP_WINDOWS", "window_features", "window_feature_names", "split_participants", "channel_stats",
    "standardize", "draw_trials", "participant_average", "build_autoencoder", "train_autoencoder",
    "encode", "reconstruct", "trial_correlation", "pca_fit", "pca_transform", "SCAN", "scan_loss",
    "symbol_names", "symbol_vectors", "train_scan", "scan_relevance", "relevant_dims",
    "window_change", "bootstrap_auroc_diff", "Cohort", "prepare_cohort", "probe_auroc",
]

#: Canonical ERP windows (ms after stimulus onset) read by the baseline.
ERP_WINDOWS: dict[str, tuple[float, float]] = {"P1": (80.0, 130.0), "P300": (300.0, 500.0),
                                                "LPP": (400.0, 800.0)}


# ----------------------------------------------------------------------------- ERP baseline
def window_features(x: torch.Tensor | np.ndarray, t_ms: np.ndarray,
                    windows: Mapping[str, tuple[float, float]] = ERP_WINDOWS) -> np.ndarray:
    """Mean amplitude of every channel in every window: (N, C, T) -> (N, W * C), window-major."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    t_ms = np.asarray(t_ms)
    cols = []
    for name, (lo, hi) in windows.items():
        sel = (t_ms >= lo) & (t_ms <= hi)
        if not sel.any():
            raise ValueError(f"window {name} ({lo}-{hi} ms) holds no sample")
        cols.append(arr[..., sel].mean(-1))
    return np.concatenate(cols, axis=1).astype(np.float64)


def window_feature_names(channels: Sequence[str],
                         windows: Mapping[str, tuple[float, float]] = ERP_WINDOWS) -> list[str]:
    """Names of the columns of `window_features`, e.g. ``"LPP emotional-Pz"``."""
    return [f"{w} {c}" for w in windows for c in channels]


# ----------------------------------------------------------------------------- participants
def split_participants(n: int, seed: int, fractions: Sequence[float] = (0.6, 0.2, 0.2)
                       ) -> tuple[np.ndarray, ...]:
    """A random partition of participant ids ``0..n-1`` into parts of the given fractions."""
    fr = np.asarray(fractions, dtype=float)
    if (fr <= 0).any() or abs(fr.sum() - 1) > 1e-9:
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.round(np.cumsum(fr)[:-1] * n).astype(int)
    return tuple(np.sort(part) for part in np.split(order, cuts))


def draw_trials(rows: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` distinct trials per participant, at random: rows (P, T) -> (P, k) row indices."""
    p, t = rows.shape
    if not 1 <= k <= t:
        raise ValueError(f"k={k} must lie in 1..{t}")
    pick = np.argsort(rng.random((p, t)), axis=1)[:, :k]
    return np.take_along_axis(rows, pick, axis=1)


def participant_average(features: torch.Tensor | np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Average of per-trial features over each participant's chosen trials: (N, D), (P, k) -> (P, D)."""
    f = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    return f[rows].mean(axis=1).astype(np.float64)


@dataclass
class Cohort:
    """One synthetic cohort ready for the experiment.

    Attributes:
        bundle: the trials (raw, µV) and their factors (`data.procedural.eeg_erp.make`).
        t_ms: sample times (T,).
        rows: (P, trials) row indices of each participant's trials.
        labels: per-participant binary labels, ``{"depression": (P,), "old": (P,)}``.
        train, heldout: participant ids; the representation models, the probes and SCAN
            see only ``train``; every reported number is computed on ``heldout``.
        stats: per-channel (mean, std) of the training trials.
        x: the standardised trials (N, C, T) that the models read.
    """

    bundle: Bundle
    t_ms: np.ndarray
    rows: np.ndarray
    labels: dict[str, np.ndarray]
    train: np.ndarray
    heldout: np.ndarray
    stats: tuple[torch.Tensor, torch.Tensor]
    x: torch.Tensor

    @property
    def train_trials(self) -> np.ndarray:
        """Row indices of every trial of the training participants (flat)."""
        return self.rows[self.train].ravel()

    @property
    def heldout_trials(self) -> np.ndarray:
        return self.rows[self.heldout].ravel()


def prepare_cohort(participants: int, seed: int, size: int, trials: int, snr_db: float | None = None,
                   split: Sequence[float] = (0.6, 0.2, 0.2), device: torch.device | str | None = None
                   ) -> Cohort:
    """Generate a cohort, split its participants (train / validation / test) and standardise.

    No setting is selected on the validation part (the probes choose their ``C`` by
    cross-validation inside the training part), so validation and test participants are
    pooled into one held-out set.
    """
    bundle = eeg_erp.make(participants, seed=seed, size=size, trials=trials, snr_db=snr_db, device=device)
    table = eeg_erp.participant_table(bundle)
    rows = eeg_erp.trials_by_participant(bundle)
    train, val, test = split_participants(participants, seed, split)
    heldout = np.sort(np.concatenate([val, test]))
    stats = channel_stats(bundle.x[torch.as_tensor(rows[train].ravel(), device=bundle.x.device)])
    return Cohort(bundle, eeg_erp.time_ms(size), rows, {"depression": table["depression"], "old": table["old"]},
                  train, heldout, stats, standardize(bundle.x, stats))


def probe_auroc(features: torch.Tensor | np.ndarray, cohort: Cohort, label: str, k: int, draws: int = 3,
                seed: int = 0, Cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0)) -> dict[str, object]:
    """Held-out AUROC of a logistic-regression probe on participant averages of ``k`` trials.

    For each of ``draws`` random choices of ``k`` trials per participant: average the
    per-trial ``features`` (N, D) per participant, fit `train.probes.logreg_auroc` on the
    training participants and score the held-out ones. The first draw chooses ``C`` among
    ``Cs`` by 5-fold CV inside the training participants; later draws refit with that ``C``
    (the choice never sees held-out participants). One draw only when ``k`` is every trial.
    Returns the mean AUROC over draws, the per-draw AUROCs, the chosen ``C``, and the first
    draw's held-out scores and labels (for a participant bootstrap). The fits run on one
    BLAS thread: problems this small only lose time to thread start-up.
    """
    rng = np.random.default_rng(seed)
    y = cohort.labels[label]
    aucs, first, chosen = [], None, None
    p, t = cohort.rows.shape
    with threadpool_limits(limits=1):
        for _ in range(draws if k < t else 1):          # k = all trials: every draw is the same
            f = participant_average(features, draw_trials(cohort.rows, k, rng))
            grid = dict(Cs=Cs, cv=5) if chosen is None else dict(Cs=(chosen,), cv=1)
            res = logreg_auroc(f[cohort.train], y[cohort.train], f[cohort.heldout], y[cohort.heldout],
                               seed=seed, **grid)
            aucs.append(res["auroc"])
            if first is None:
                first, chosen = res["scores"], res["C"]
    return {"auroc": float(np.mean(aucs)), "per_draw": aucs, "C": chosen, "scores": first,
            "y": y[cohort.heldout]}


# ----------------------------------------------------------------------------- models
def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std over trials and time, each (1, C, 1) (the training split's)."""
    mean = x.mean(dim=(0, 2), keepdim=True)
    std = x.std(dim=(0, 2), keepdim=True).clamp_min(1e-8)
    return mean, std


def standardize(x: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """z-score every channel with given (mean, std)."""
    mean, std = stats
    return (x - mean.to(x.device)) / std.to(x.device)


def build_autoencoder(beta: float, channels: int, size: int, latent_dim: int,
                      widths: Sequence[int] = (16, 32, 32, 64), fc: int = 64) -> nn.Module:
    """A 1-D conv `VAE` with a Gaussian decoder, or a plain `AE` when ``beta == 0``."""
    cls = AE if beta == 0 else VAE
    return cls(channels, size, latent_dim, widths=tuple(widths), fc=fc, dim=1, likelihood="gaussian")


def train_autoencoder(x: torch.Tensor, beta: float, latent_dim: int, *, steps: int, batch_size: int,
                      lr: float = 1e-3, widths: Sequence[int] = (16, 32, 32, 64), fc: int = 64,
                      seed: int = 0, progress: bool = True, desc: str | None = None) -> nn.Module:
    """Train a beta-VAE (beta > 0) or an AE (beta = 0) on standardised trials ``x`` (N, C, T).

    Loss per trial: ``0.5 ||x - dec(z)||^2 + beta * KL(q(z|x) || N(0, I))`` (unit-variance
    Gaussian decoder, sums over channels, samples and latents; `losses.vae.elbo_loss`).
    """
    torch.manual_seed(seed)
    model = build_autoencoder(beta, x.shape[1], x.shape[2], latent_dim, widths, fc)

    def loss_fn(m: nn.Module, xb: torch.Tensor) -> torch.Tensor:
        return elbo_loss(m(xb), xb, beta=beta, likelihood="gaussian")

    fit(model, (x,), steps=steps, batch_size=batch_size, lr=lr, loss_fn=loss_fn, seed=seed,
        device=x.device, progress=progress, desc=desc)
    return model.eval()


@torch.no_grad()
def encode(model: nn.Module, x: torch.Tensor, batch_size: int = 4096
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Posterior means and log-variances (N, D) of a VAE; an AE's codes and None."""
    model.eval()
    mus, logvars = [], []
    for i in range(0, len(x), batch_size):
        out = model.encode(x[i:i + batch_size])
        if isinstance(out, tuple):
            mus.append(out[0])
            logvars.append(out[1])
        else:
            mus.append(out)
    return torch.cat(mus), (torch.cat(logvars) if logvars else None)


@torch.no_grad()
def reconstruct(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Decoder output at the posterior mean (a VAE) or the code (an AE): (N, C, T)."""
    mu, _ = encode(model, x, batch_size)
    return torch.cat([model.decode(mu[i:i + batch_size]) for i in range(0, len(mu), batch_size)])


def trial_correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each pair of trials over all channels and samples: (N, ...) -> (N,)."""
    a = a.flatten(1).double()
    b = b.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


def pca_fit(x: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PCA of flattened trials (N, ...): returns (mean (F,), components (F, d)).

    Eigenvectors of the F x F covariance (cheaper than an SVD of the N x F data when N >> F),
    by decreasing eigenvalue.
    """
    flat = x.flatten(1).double()
    mean = flat.mean(0)
    centred = flat - mean
    evals, evecs = torch.linalg.eigh(centred.T @ centred)
    order = torch.argsort(evals, descending=True)[:d]
    return mean.float(), evecs[:, order].float().contiguous()


def pca_transform(x: torch.Tensor, pca: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Project flattened trials on the principal components: (N, ...) -> (N, d)."""
    mean, comps = pca
    return (x.flatten(1) - mean) @ comps


# ----------------------------------------------------------------------------- SCAN
def symbol_names(labels: Sequence[str], values: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """The symbols of a k-hot vocabulary: two per binary label (``"<label>=0"``, ``"<label>=1"``)."""
    values = values or {}
    names = []
    for lab in labels:
        neg, pos = values.get(lab, (f"{lab}=0", f"{lab}=1"))
        names += [neg, pos]
    return names


def symbol_vectors(labels: np.ndarray, keep_prob: float = 0.5, rng: np.random.Generator | None = None
                   ) -> np.ndarray:
    """k-hot symbol vectors for binary labels (N, L) -> (N, 2L).

    Label ``l`` with value ``v`` switches on symbol ``2l + v``. With ``rng`` each label is
    kept with probability ``keep_prob`` (at least one per row), so SCAN also sees
    partial descriptions ("depressed", without an age) and must learn what one symbol
    alone implies; without ``rng`` every label is on.
    """
    labels = np.asarray(labels).astype(np.int64)
    n, n_lab = labels.shape
    keep = np.ones((n, n_lab), dtype=bool)
    if rng is not None:
        keep = rng.random((n, n_lab)) < keep_prob
        none = ~keep.any(1)
        keep[np.flatnonzero(none), rng.integers(0, n_lab, none.sum())] = True
    y = np.zeros((n, 2 * n_lab), dtype=np.float32)
    rows = np.arange(n)
    for l in range(n_lab):
        on = keep[:, l]
        y[rows[on], 2 * l + labels[on, l]] = 1.0
    return y


class SCAN(nn.Module):
    """SCAN's symbol VAE: ``q(z_y | y)`` and ``p(y | z_y)``, small MLPs over k-hot ``y`` (B, S)."""

    def __init__(self, n_symbols: int, latent_dim: int, hidden: int = 64):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(n_symbols, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, n_symbols))

    def encode(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_y, logvar_y)`` of q(z_y | y), each (B, D)."""
        mu, logvar = self.encoder(y).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p(y | z_y) (independent Bernoulli per symbol): (B, S)."""
        return self.decoder(z)


def scan_loss(scan: SCAN, y: torch.Tensor, mu_x: torch.Tensor, logvar_x: torch.Tensor,
              beta_y: float = 1.0, lam: float = 10.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Negative SCAN objective, batch mean, and its three terms.

    ``y`` (B, S) k-hot symbols; ``mu_x, logvar_x`` (B, D) the frozen beta-VAE posterior of
    the paired trials (no gradient flows into them).
    """
    mu_y, logvar_y = scan.encode(y)
    z_y = mu_y + torch.exp(0.5 * logvar_y) * torch.randn_like(mu_y)        # reparameterised
    # -E_q(z_y|y) log p(y|z_y): Bernoulli symbols
    rec = nn.functional.binary_cross_entropy_with_logits(scan.decode(z_y), y, reduction="none").sum(1)
    # KL(q(z_y|y) || N(0, I))
    prior = kl_normal(mu_y, logvar_y)
    # KL(q(z_x|x) || q(z_y|y)): visual posterior first (SCAN's forward KL)
    cross = kl_normal(mu_x.detach(), logvar_x.detach(), mu_y, logvar_y)
    loss = (rec + beta_y * prior + lam * cross).mean()
    return loss, {"rec": rec.mean(), "kl_prior": prior.mean(), "kl_x_y": cross.mean()}


def train_scan(y: torch.Tensor | np.ndarray | None, mu_x: torch.Tensor, logvar_x: torch.Tensor, *,
               labels: np.ndarray | None = None, keep_prob: float = 0.5, steps: int = 300,
               batch_size: int = 64, lr: float = 1e-3, beta_y: float = 1.0, lam: float = 10.0,
               hidden: int = 64, seed: int = 0) -> SCAN:
    """Train SCAN on (symbols, frozen posterior) pairs.

    Pass either fixed symbol vectors ``y`` (N, S), or binary ``labels`` (N, L): then every
    minibatch draws fresh partial descriptions with `symbol_vectors` (``keep_prob``).
    """
    if (y is None) == (labels is None):
        raise ValueError("pass exactly one of y (symbol vectors) or labels")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_sym = 2 * labels.shape[1] if labels is not None else y.shape[1]
    scan = SCAN(n_sym, mu_x.shape[1], hidden).to(mu_x.device)
    opt = torch.optim.Adam(scan.parameters(), lr=lr)
    fixed = None if y is None else torch.as_tensor(y, dtype=torch.float32, device=mu_x.device)
    n = len(mu_x)
    scan.train()
    for _ in range(steps):
        idx = rng.integers(0, n, batch_size)
        if fixed is not None:
            yb = fixed[idx]
        else:
            yb = torch.as_tensor(symbol_vectors(labels[idx], keep_prob, rng), device=mu_x.device)
        tidx = torch.as_tensor(idx, device=mu_x.device)
        loss, _ = scan_loss(scan, yb, mu_x[tidx], logvar_x[tidx], beta_y, lam)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return scan.eval()


@torch.no_grad()
def scan_relevance(scan: SCAN, n_symbols: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(mu_y, sigma_y)`` of q(z_y | one symbol) for every single symbol: each (S, D)."""
    s = n_symbols or scan.encoder[0].in_features
    mu, logvar = scan.encode(torch.eye(s, device=next(scan.parameters()).device))
    return mu.cpu().numpy(), torch.exp(0.5 * logvar).cpu().numpy()


def relevant_dims(sigma: np.ndarray, threshold: float = 0.5) -> list[int]:
    """Latents with ``sigma_y < threshold`` for one symbol (sigma: (D,))."""
    return [int(j) for j in np.flatnonzero(np.asarray(sigma) < threshold)]


# ----------------------------------------------------------------------------- traversals
@torch.no_grad()
def window_change(model: nn.Module, z0: torch.Tensor, dim: int, values: Sequence[float],
                  stats: tuple[torch.Tensor, torch.Tensor], t_ms: np.ndarray,
                  channels: Sequence[int], window: tuple[float, float] = ERP_WINDOWS["LPP"]
                  ) -> tuple[float, np.ndarray]:
    """How much sweeping latent ``dim`` moves a window's mean amplitude in the decoded trial.

    Decodes ``z0`` (D,) with latent ``dim`` set to each of ``values``, undoes the channel
    standardisation (back to µV), averages the window over ``channels`` and returns
    ``(relative change, amplitudes)``: ``(max - min) / |amplitude at z0|``.
    """
    mean, std = stats
    z = z0.detach().reshape(1, -1).repeat(len(values) + 1, 1)
    z[1:, dim] = torch.as_tensor(list(values), dtype=z.dtype, device=z.device)
    out = model.decode(z) * std.to(z.device) + mean.to(z.device)           # (V + 1, C, T) in µV
    amps = window_features(out[:, list(channels)], t_ms, {"w": window}).mean(1)
    base = abs(amps[0])
    change = float((amps[1:].max() - amps[1:].min()) / max(base, 1e-12))
    return change, amps[1:]


# ----------------------------------------------------------------------------- uncertainty
def bootstrap_auroc_diff(scores_a: np.ndarray, scores_b: np.ndarray, y: np.ndarray,
                         n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Participant-level bootstrap of ``AUROC(a) - AUROC(b)`` on the same test participants.

    Resamples participants with replacement (both classes kept in every resample) and
    returns the difference, its bootstrap standard error and a 95% percentile interval
    (all NaN when the test set holds a single class).
    """
    a, b, y = np.asarray(scores_a), np.asarray(scores_b), np.asarray(y).astype(int)
    if y.min() == y.max():
        nan = float("nan")
        return {"diff": nan, "se": nan, "lo": nan, "hi": nan}
    rng = np.random.default_rng(seed)
    diffs = []
    while len(diffs) < n_boot:
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        diffs.append(auroc(a[idx], y[idx]) - auroc(b[idx], y[idx]))
    diffs = np.asarray(diffs)
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return {"diff": auroc(a, y) - auroc(b, y), "se": float(diffs.std(ddof=1)), "lo": float(lo), "hi": float(hi)}

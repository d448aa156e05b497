r"""Chapter `mean-vs-sampled-vae`: Bonheme & Grzes (2021, v4 2023), *Be More Active!
Understanding the Differences between Mean and Sampled Representations of Variational
Autoencoders*, arXiv:2109.12679.

A VAE encoder gives, for each input :math:`x`, a Gaussian posterior
:math:`\mathcal N(\mu(x), \operatorname{diag}\sigma^2(x))`. Two representations come out of it:

.. math::  R_m(x) = \mu(x) \quad\text{(mean)}, \qquad
           R_s(x) = \mu(x) + \sigma(x) \odot \varepsilon,\ \varepsilon \sim \mathcal N(0, I)
           \quad\text{(sampled)}.

Disentanglement is usually measured on the sampled one and downstream tasks use the mean
one, which Locatello et al. (2019) found to be more correlated. The paper traces the gap to
*passive* variables (posterior = prior for every x, `analysis.latents.taxonomy`): in
:math:`R_s` their noise (:math:`\sigma \approx 1`) swamps a tiny, input-dependent residual
mean, so they look independent; in :math:`R_m` only that residual is left, and it co-varies
with the active variables.

Correlation is measured by the Gaussian total correlation of a representation :math:`R`
with sample covariance :math:`\Sigma` (`metrics.disentanglement.gaussian_tc`),

.. math::  \mathrm{TC}(R) = \tfrac12\Big(\sum_j \log\Sigma_{jj} - \log\det\Sigma\Big),

and by mean absolute off-diagonal Pearson correlations. This module holds the chapter's
glue: the models and losses by name, training, the mean/sampled analysis of one model,
the claim predicates that are only assessable under a condition, the figures, and a
loader for the real dSprites file (full size).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .. import plots, runtime
from ..analysis import latents
from ..claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED, M, Outcome, Predicate
from ..data.procedural import Bundle, dsprites
from ..errors import DatasetMissing
from ..losses.vae import kl_normal, reconstruction_nll, tc_decomposition
from ..metrics import disentanglement as dis
from ..models.vae import VAE
from ..train import History, fit
from ..train import probes

__all__ = ["METHODS", "build_vae", "vae_loss", "warmup_factor", "train_vae", "encode", "sampled_representation",
           "abs_correlation", "pair_mean", "subset_tc", "analyse", "Given", "WhereApplicable",
           "plot_tc_bars", "plot_correlation_heatmaps", "taxonomy_sweep", "load_data",
           "load_dsprites_npz", "arm_table", "c2_margin", "reconstruction_nll_of", "Analysis", "DSPRITES_FILE"]

METHODS = ("beta-VAE", "beta-TCVAE")
DSPRITES_FILE = "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"


# ----------------------------------------------------------------------------- models and training

def build_vae(size: int, latent_dim: int = 10, widths: Sequence[int] = (32, 32, 64, 64),
              fc: int = 128) -> VAE:
    """The paper's (disentanglement_lib's) conv VAE shape: 4 stride-2 convs, FC head, Bernoulli."""
    return VAE(1, size, latent_dim, widths=tuple(widths), fc=fc, likelihood="bernoulli")


def warmup_factor(step: int, warmup: int) -> float:
    """Weight of the regulariser at update ``step`` (1-based): 0 for the first ``warmup / 2``
    updates, then linear up to 1 at ``warmup``; always 1 when ``warmup <= 0``."""
    if warmup <= 0:
        return 1.0
    return min(1.0, max(0.0, 2.0 * step / warmup - 1.0))


def vae_loss(method: str, beta: float, dataset_size: int, recon_weight: float = 1.0,
             warmup: int = 0) -> Callable[[VAE, torch.Tensor], torch.Tensor]:
    r"""Loss ``(model, x) -> scalar`` of a method by name (batch means of per-image sums).

    ``"beta-VAE"`` (Higgins et al. 2017): :math:`w\,E[-\log p(x|z)] + \lambda_t\,\beta\,KL(q(z|x)\|p(z))`.
    ``"beta-TCVAE"`` (Chen et al. 2018): :math:`w\,E[-\log p(x|z)] + \lambda_t\,[I_q(x;z) + \beta\,TC(z)
    + \sum_j KL(q(z_j)\|p(z_j))]`, minibatch-weighted-sampling estimates of the three terms.

    :math:`w` = ``recon_weight`` (1 in both papers). :math:`w = 4` makes a 32x32 image count as
    its 2x-upsampled 64x64 version would (4 times the Bernoulli NLL), so that beta keeps the
    strength it has on the paper's 64x64 dSprites. :math:`\lambda_t = \mathrm{clip}(2t/\text{warmup} - 1, 0, 1)`
    switches the regulariser off for the first ``warmup / 2`` calls (one call per update) and
    ramps it in linearly until ``warmup`` (0: no warm-up), so that a short run leaves the early
    all-collapsed plateau; after it the objective is the method's.
    """
    calls = [0]

    def ramp() -> float:
        calls[0] += 1
        return warmup_factor(calls[0], warmup)

    if method == "beta-VAE":
        def loss(model, x):
            out = model(x)
            rec = reconstruction_nll(out.out, x, "bernoulli")
            return (recon_weight * rec + ramp() * beta * kl_normal(out.mu, out.logvar)).mean()
        return loss
    if method == "beta-TCVAE":
        def loss(model, x):
            out = model(x)
            rec = reconstruction_nll(out.out, x, "bernoulli").mean()
            parts = tc_decomposition(out.z, out.mu, out.logvar, dataset_size)
            return recon_weight * rec + ramp() * (parts["mi"] + beta * parts["tc"] + parts["dim_kl"])
        return loss
    raise ValueError(f"unknown method {method!r} ({', '.join(METHODS)})")


def train_vae(x_train: torch.Tensor, method: str, beta: float, *, steps: int, batch_size: int,
              lr: float = 1e-3, latent_dim: int = 10, widths: Sequence[int] = (32, 32, 64, 64),
              fc: int = 128, recon_weight: float = 1.0, warmup: int = 0,
              logvar_init: float | None = None, seed: int = 0,
              device: torch.device | str | None = None, progress: bool = False) -> tuple[VAE, History]:
    """Train one VAE on images ``x_train`` (N, 1, S, S) in [0, 1] for ``steps`` Adam updates.

    ``recon_weight`` and ``warmup``: see `vae_loss`. ``logvar_init``: if given, the bias of the
    encoder's log-variance outputs starts at this value (posterior std ``exp(logvar_init / 2)``
    instead of about 1), so that the decoder can read the codes from the first updates.
    """
    runtime.seed_everything(seed)                      # init and the reparameterisation noise
    model = build_vae(x_train.shape[-1], latent_dim, widths=widths, fc=fc)
    if logvar_init is not None:
        with torch.no_grad():
            model.encoder.head[-1].bias[latent_dim:] = logvar_init
    hist = fit(model, (x_train,), steps=steps, batch_size=batch_size, lr=lr,
               loss_fn=vae_loss(method, beta, len(x_train), recon_weight, warmup), seed=seed, device=device,
               progress=progress, desc=f"{method} beta={beta:g} seed {seed}")
    return model.eval(), hist


@torch.no_grad()
def encode(model: VAE, x: torch.Tensor, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior parameters ``(mu, logvar)``, each (N, D), on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    mus, lvs = [], []
    for i in range(0, len(x), batch):
        mu, lv = model.encode(x[i:i + batch].to(dev))
        mus.append(mu.cpu())
        lvs.append(lv.cpu())
    return torch.cat(mus), torch.cat(lvs)


def sampled_representation(mu: torch.Tensor, logvar: torch.Tensor, seed: int = 0) -> torch.Tensor:
    r""":math:`R_s = \mu + \sigma \odot \varepsilon` with a seeded :math:`\varepsilon \sim \mathcal N(0, I)`."""
    gen = torch.Generator().manual_seed(seed)
    eps = torch.randn(mu.shape, generator=gen, dtype=mu.dtype)
    return mu + (0.5 * logvar).exp() * eps


@torch.no_grad()
def reconstruction_nll_of(model: VAE, x: torch.Tensor, batch: int = 1024, seed: int = 0) -> float:
    """Mean Bernoulli NLL (nats per image) of reconstructions from one posterior sample."""
    model.eval()
    dev = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for i in range(0, len(x), batch):
        xb = x[i:i + batch].to(dev)
        mu, logvar = model.encode(xb)
        z = sampled_representation(mu.cpu(), logvar.cpu(), int(torch.randint(0, 2**31, (1,), generator=gen)))
        total += float(reconstruction_nll(model.decode(z.to(dev)), xb, "bernoulli").sum())
    return total / len(x)


def c2_margin(metrics: Mapping[str, float], fraction: float = 0.25) -> float:
    """C2's per-model margin ``fraction * gap_all - |gap_active|`` (positive: the active-only gap
    is below ``fraction`` of the all-variable gap)."""
    return fraction * metrics["tc_gap_all"] - abs(metrics["tc_gap_active"])


# ----------------------------------------------------------------------------- correlation measures

def abs_correlation(r: Any) -> np.ndarray:
    """|Pearson correlation| matrix (D, D) of the columns of ``r`` (N, D); a constant column
    correlates 0 with everything."""
    r = probes.as_numpy(r).astype(np.float64)
    r = r - r.mean(0)
    std = r.std(0)
    safe = np.where(std > 0, std, 1.0)
    z = r / safe
    c = np.abs(z.T @ z / len(r))
    c[:, std == 0] = 0.0
    c[std == 0, :] = 0.0
    return c


def pair_mean(absr: np.ndarray, involving: np.ndarray | None = None) -> float:
    """Mean of the off-diagonal entries of ``absr``; with a mask, over the pairs that involve
    at least one variable of ``involving``. NaN when there is no such pair."""
    d = absr.shape[0]
    off = ~np.eye(d, dtype=bool)
    if involving is not None:
        inv = np.asarray(involving, dtype=bool)
        off &= inv[:, None] | inv[None, :]
    return float(absr[off].mean()) if off.any() else float("nan")


def subset_tc(r: Any, mask: np.ndarray | None = None) -> float:
    """Gaussian TC of the columns ``mask`` of ``r`` (0 for fewer than two columns)."""
    r = probes.as_numpy(r).astype(np.float64)
    if mask is not None:
        r = r[:, np.asarray(mask, dtype=bool)]
    return 0.0 if r.shape[1] < 2 else dis.gaussian_tc(r)


# ----------------------------------------------------------------------------- one model, analysed

@dataclass
class Analysis:
    """The mean/sampled analysis of one trained model (see `analyse`)."""

    metrics: dict[str, float]
    taxonomy: latents.Taxonomy
    mu: torch.Tensor
    logvar: torch.Tensor
    absr_mean: np.ndarray
    absr_sampled: np.ndarray
    extra: dict[str, Any] = field(default_factory=dict)


def _mean_probe(f_tr: np.ndarray, y_tr: np.ndarray, f_te: np.ndarray, y_te: np.ndarray) -> float:
    """Mean over factors of the linear-probe test accuracy (factors with one level skipped)."""
    accs = []
    for k in range(y_tr.shape[1]):
        if len(np.unique(y_tr[:, k])) < 2:
            continue
        if f_tr.shape[1] == 0:                   # no feature left: predict the majority class
            accs.append(float(np.mean(y_te[:, k] == np.bincount(y_tr[:, k]).argmax())))
        else:
            accs.append(probes.linear(f_tr, y_tr[:, k], f_te, y_te[:, k])["acc"])
    return float(np.mean(accs))


def analyse(model: VAE, test: Bundle, probe_train: Bundle, *, seed: int = 0,
            var_threshold: float = 0.8, mean_var_threshold: float = 0.01,
            dci_samples: int = 1000, probe: bool = True) -> Analysis:
    """Everything the chapter measures on one model.

    On the test images: the taxonomy (`analysis.latents.taxonomy`); the mean and sampled
    representations; their Gaussian TC over all variables and over the active ones; mean
    |Pearson| over all pairs and over the pairs involving a passive variable; MIG and DCI
    disentanglement of both, all variables and active only (MIG needs >= 2 latents, DCI
    >= 1; DCI on the first ``dci_samples`` test images). Linear probes (one per factor,
    trained on ``probe_train``'s mean representation, tested on ``test``'s) on all
    variables, on the non-passive ones (passive removed) and on the active ones.

    Returns an `Analysis` whose ``metrics`` hold only the numbers that are defined for this
    model (e.g. no passive-pair correlation when there is no passive variable).
    """
    mu, logvar = encode(model, test.x)
    tax = latents.taxonomy(mu, logvar, var_threshold=var_threshold,
                           mean_var_threshold=mean_var_threshold)
    active, passive = tax.active, tax.passive
    r_m, r_s = mu, sampled_representation(mu, logvar, seed)
    fac = test.factors.cpu().numpy()
    absr_m, absr_s = abs_correlation(r_m), abs_correlation(r_s)
    out: dict[str, float] = {"n_active": active.sum(), "n_passive": passive.sum(),
                             "n_mixed": tax.mixed.sum()}
    for name, r in (("mean", r_m), ("sampled", r_s)):
        out[f"tc_{name}_all"] = subset_tc(r)
        out[f"tc_{name}_active"] = subset_tc(r, active)
    out["tc_gap_all"] = out["tc_mean_all"] - out["tc_sampled_all"]
    out["tc_gap_active"] = out["tc_mean_active"] - out["tc_sampled_active"]
    out["corr_mean_all"], out["corr_sampled_all"] = pair_mean(absr_m), pair_mean(absr_s)
    if passive.any():
        out["corr_mean_passive"] = pair_mean(absr_m, passive)
        out["corr_sampled_passive"] = pair_mean(absr_s, passive)
    if active.sum() >= 2:
        out["corr_mean_active"] = pair_mean(absr_m[np.ix_(active, active)])
        out["corr_sampled_active"] = pair_mean(absr_s[np.ix_(active, active)])
    n_dci = min(dci_samples, len(fac))
    everything_active = bool(active.all())         # then "active only" = "all": reuse the scores
    for name, r in (("mean", r_m.numpy()), ("sampled", r_s.numpy())):
        out[f"mig_{name}_all"] = dis.mig(fac, r)
        out[f"dci_{name}_all"] = dis.dci(fac[:n_dci], r[:n_dci], seed=seed)["disentanglement"]
        if everything_active:
            out[f"mig_{name}_active"] = out[f"mig_{name}_all"]
            out[f"dci_{name}_active"] = out[f"dci_{name}_all"]
            continue
        if active.sum() >= 2:
            out[f"mig_{name}_active"] = dis.mig(fac, r[:, active])
        if active.any():
            out[f"dci_{name}_active"] = dis.dci(fac[:n_dci], r[:n_dci][:, active],
                                                seed=seed)["disentanglement"]
    if probe:
        mu_tr, _ = encode(model, probe_train.x)
        f_tr, f_te = mu_tr.numpy(), mu.numpy()
        y_tr = probe_train.factors.cpu().numpy()
        out["probe_all"] = _mean_probe(f_tr, y_tr, f_te, fac)
        keep = ~passive
        out["probe_nonpassive"] = (out["probe_all"] if keep.all()
                                   else _mean_probe(f_tr[:, keep], y_tr, f_te[:, keep], fac))
        if everything_active:
            out["probe_active"] = out["probe_all"]
        elif active.any():
            out["probe_active"] = _mean_probe(f_tr[:, active], y_tr, f_te[:, active], fac)
    metrics = {k: float(v) for k, v in out.items()}
    return Analysis(metrics, tax, mu, logvar, absr_m, absr_s)


def taxonomy_sweep(mu: torch.Tensor, logvar: torch.Tensor,
                   thresholds: Sequence[float] = (0.5, 0.6, 0.7, 0.8, 0.9), **kw) -> pd.DataFrame:
    """Counts of active/passive/mixed latents for several variance thresholds."""
    rows = {f"{t:g}": latents.taxonomy(mu, logvar, var_threshold=t, **kw).counts() for t in thresholds}
    return pd.DataFrame(rows).T.rename_axis("var_threshold")


# ----------------------------------------------------------------------------- conditional predicates

@dataclass
class Given(Predicate):
    """``part``, assessed only when every condition holds (each condition's verdict is
    ``reproduced``); otherwise ``inconclusive`` (the part is then not evaluated, so its
    metrics need not exist). ``applicable`` in the numbers says which case occurred."""

    part: Predicate
    conditions: Sequence[Predicate]
    why: str = ""

    def _conditions(self, resolve) -> tuple[bool, list[dict]]:
        outs = []
        for c in self.conditions:
            try:
                o = c.evaluate(resolve)
            except Exception as err:             # a metric the condition needs was never logged
                o = Outcome(INCONCLUSIVE, {"error": str(err)})
            outs.append({"verdict": o.verdict, **o.numbers})
        return all(o["verdict"] == REPRODUCED for o in outs), outs

    def evaluate(self, resolve) -> Outcome:
        ok, outs = self._conditions(resolve)
        if not ok:
            return Outcome(INCONCLUSIVE, {"applicable": False, "conditions": outs})
        o = self.part.evaluate(resolve)
        return Outcome(o.verdict, {"applicable": True, "conditions": outs, **o.numbers})

    def describe(self) -> str:
        cond = " AND ".join(c.describe() for c in self.conditions)
        return f"{self.part.describe()}, assessed only if {cond}" + (f" ({self.why})" if self.why else "")

    def refs(self) -> list[M]:
        return self.part.refs()


@dataclass
class WhereApplicable(Predicate):
    """Several `Given` parts (e.g. one per beta): reproduced if at least one is applicable and
    every applicable one is reproduced; not reproduced if any applicable one is not
    reproduced; inconclusive otherwise (including when none is applicable)."""

    parts: Sequence[Given]

    def evaluate(self, resolve) -> Outcome:
        outs = [p.evaluate(resolve) for p in self.parts]
        applicable = [o for o in outs if o.numbers.get("applicable")]
        verdicts = [o.verdict for o in applicable]
        if applicable and all(v == REPRODUCED for v in verdicts):
            verdict = REPRODUCED
        elif any(v == NOT_REPRODUCED for v in verdicts):
            verdict = NOT_REPRODUCED
        else:
            verdict = INCONCLUSIVE
        return Outcome(verdict, {"parts": [{"verdict": o.verdict, **o.numbers} for o in outs],
                                 "n_applicable": len(applicable)})

    def describe(self) -> str:
        return " ; ".join(f"[{p.describe()}]" for p in self.parts) + " (over the applicable parts)"

    def refs(self) -> list[M]:
        return [r for p in self.parts for r in p.refs()]


# ----------------------------------------------------------------------------- figures

def plot_tc_bars(values: Callable[[str, str, str], np.ndarray], arms: Sequence[tuple[str, str]],
                 labels: Sequence[str] | None = None) -> plt.Figure:
    """Two panels (all variables, active only): Gaussian TC of the mean and sampled
    representations per arm, mean ± std over seeds with each seed as a dot.

    ``values(metric, method, setting)`` returns per-seed values (e.g. ``ch.values``).
    """
    labels = list(labels) if labels is not None else [f"{m}\n{s}" for m, s in arms]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=False)
    width = 0.38
    for ax, subset in zip(axes, ("all", "active")):
        for i, (method, setting) in enumerate(arms):
            for k, (rep, colour) in enumerate((("mean", plots.PALETTE[0]), ("sampled", plots.PALETTE[1]))):
                v = values(f"tc_{rep}_{subset}", method, setting)
                x = i + (k - 0.5) * width
                ax.bar(x, v.mean(), width, yerr=v.std(ddof=1) if v.size > 1 else 0, color=colour,
                       alpha=0.8, capsize=3, label=rep if i == 0 else None)
                ax.scatter(np.full(v.size, x), v, color="k", s=8, zorder=3)
        ax.set_xticks(range(len(arms)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_title(f"{subset} variables")
        ax.set_ylabel("Gaussian TC (nats)")
        ax.legend()
    fig.tight_layout()
    return fig


def plot_correlation_heatmaps(pairs: Sequence[tuple[str, np.ndarray, np.ndarray, latents.Taxonomy]]
                              ) -> plt.Figure:
    """|Pearson| heat-maps, mean (top) vs sampled (bottom), one column per model;
    passive latents' labels in red, mixed ones in orange."""
    fig, axes = plt.subplots(2, len(pairs), figsize=(3.1 * len(pairs), 6), squeeze=False)
    for col, (title, absr_m, absr_s, tax) in enumerate(pairs):
        for row, (name, absr) in enumerate((("mean", absr_m), ("sampled", absr_s))):
            ax = axes[row, col]
            im = ax.imshow(absr, vmin=0, vmax=1, cmap="viridis")
            d = absr.shape[0]
            ax.set_xticks(range(d))
            ax.set_yticks(range(d))
            ax.set_xticklabels(range(d), fontsize=7)
            ax.set_yticklabels(range(d), fontsize=7)
            colours = {"passive": "#d1495b", "mixed": "#edae49", "active": "black"}
            for ticks in (ax.get_xticklabels(), ax.get_yticklabels()):
                for t, lab in zip(ticks, tax.labels):
                    t.set_color(colours[lab])
                    if lab != "active":
                        t.set_fontweight("bold")
            ax.grid(False)
            ax.set_title(f"{title}\n{name}" if row == 0 else name, fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.6, label="|Pearson r|")
    return fig


# ----------------------------------------------------------------------------- data

def load_dsprites_npz(root: str | Path | None = None, n: int | None = None, seed: int = 0,
                      device: torch.device | str | None = None) -> Bundle:
    """The real dSprites file (Matthey et al. 2017) as a `Bundle` (full size only).

    Reads ``$REPLIBOOK_DATA/dsprites/dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (keys
    ``imgs`` (737280, 64, 64) uint8 and ``latents_classes`` (737280, 6) with columns colour,
    shape, scale, orientation, x, y). ``n`` images are drawn at random without replacement
    (all of them, shuffled, when None). The constant colour column is dropped.
    """
    base = Path(root).expanduser() if root is not None else runtime.data_dir()
    if base is None:
        raise DatasetMissing("dSprites not found: REPLIBOOK_DATA is not set; download "
                             f"{DSPRITES_FILE} from github.com/deepmind/dsprites-dataset into "
                             "$REPLIBOOK_DATA/dsprites/")
    path = base / "dsprites" / DSPRITES_FILE
    if not path.exists():
        raise DatasetMissing(f"dSprites not found at {path}; download {DSPRITES_FILE} from "
                             "github.com/deepmind/dsprites-dataset")
    with np.load(path, allow_pickle=False) as z:
        imgs, classes = z["imgs"], z["latents_classes"]
    order = np.random.default_rng(seed).permutation(len(imgs))[: n or len(imgs)]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    x = torch.from_numpy(imgs[order].astype(np.float32)).unsqueeze(1).to(dev)
    fac = torch.from_numpy(classes[order][:, 1:].astype(np.int64)).to(dev)
    return Bundle(x=x, factors=fac, factor_names=list(dsprites.FACTOR_NAMES), levels=[3, 6, 40, 32, 32],
                  name="dsprites-real", info={"file": DSPRITES_FILE, "n": len(order), "seed": seed})


def load_data(kind: str, n: int, seed: int = 0, size: int = 32,
              levels: Sequence[int] = dsprites.DEFAULT_LEVELS,
              device: torch.device | str | None = None) -> Bundle:
    """``"procedural"``: `data.procedural.dsprites` (offline); ``"dsprites_npz"``: the real file."""
    if kind == "procedural":
        return dsprites.make(n, seed=seed, size=size, levels=levels, device=device)
    if kind == "dsprites_npz":
        return load_dsprites_npz(n=n, seed=seed, device=device)
    raise ValueError(f"unknown data kind {kind!r} (procedural, dsprites_npz)")


def arm_table(values: Callable[[str, str, str], np.ndarray], arms: Sequence[tuple[str, str]],
              metrics: Mapping[str, str], digits: int = 3, n_seeds: int | None = None) -> pd.DataFrame:
    """Mean ± std over seeds of ``metrics`` ({metric: column label}) per arm; '-' where a
    metric was not defined for an arm (e.g. no passive variable), and ``(n=k)`` where it was
    defined for only k of the ``n_seeds`` seeds."""
    rows = {}
    for method, setting in arms:
        row = {}
        for metric, label in metrics.items():
            try:
                v = values(metric, method, setting)
            except Exception:
                row[label] = "-"
                continue
            text = (f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if v.size > 1
                    else f"{v.mean():.{digits}f}")
            row[label] = text + ("" if n_seeds is None or v.size >= n_seeds else f" (n={v.size})")
        rows[f"{method} {setting}"] = row
    return pd.DataFrame(rows).T

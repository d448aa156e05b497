r"""Chapter `mrdd-distilled-disentangling`: Ke, Wang, Wang & He (2024), *Rethinking Multi-view
Representation Learning via Distilled Disentangling* (MRDD), CVPR 2024, arXiv:2403.10897.

MRDD learns a multi-view representation in two stages.

**Stage 1, masked cross-view prediction (MCP).** Every view :math:`x_i` (i = 1..V) is
masked independently (random ``patch`` x ``patch`` squares, ratio :math:`r`); one shared
conv encoder :math:`E_c` reads each masked view, the flattened features of all views are
concatenated and a linear layer outputs a diagonal Gaussian :math:`q(c \mid \tilde x_{1..V})`.
One decoder per view reconstructs the *full* view from :math:`c`:

.. math::
    \mathcal L_{\mathrm{MCP}} = \sum_i \lVert x_i - D_i(c) \rVert^2
        + \mathrm{KL}\big(q(c \mid \tilde x_{1..V}) \,\|\, \mathcal N(0, I)\big).

Each view's missing patches can often only be filled from the *other* views, so the code
is pushed towards what the views share (the consistent representation).

**Stage 2, distilled disentangling (DD).** :math:`E_c` is frozen; :math:`c` is its posterior
mean on the unmasked views. Each view gets a VAE encoder :math:`E_i \to v_i` whose decoder
sees :math:`[c, v_i]`, and a CLUB estimator (``metrics.mi.CLUB``, a Gaussian :math:`q(c \mid v_i)`)
whose upper bound on :math:`I(c; v_i)` the encoder minimises:

.. math::
    \mathcal L_{\mathrm{DD}} = \sum_i \lVert x_i - D'_i([c, v_i]) \rVert^2
        + \beta_v\,\mathrm{KL}\big(q(v_i \mid x_i) \,\|\, \mathcal N(0, I)\big)
        + \alpha\, \hat I_{\mathrm{CLUB}}(c; v_i),

while each CLUB net maximises its log-likelihood :math:`\log q(c \mid v_i)`. Since :math:`c`
already reaches the decoder, information about :math:`c` in :math:`v_i` is redundant, and the
bound distils it out: :math:`v_i` keeps what only view i has.

Official code (``Guanzhou-Ke/MRDD``, read, not copied): ``ConsistencyAE`` (stage 1),
``ViewSpecificAE``, ``CLUBSample``; EdgeMNIST configs: mask ratio 0.7, patch 2, KL weight 1
(stage 1), :math:`\beta_v = 0.5`, :math:`\alpha = 0.05`, CLUB hidden size 100 (two halves of 50).
That code sums the squared error over the batch but averages the KL, so its per-sample KL weights
are the configured ones divided by the batch size (1/512 and 0.5/1024); the chapter passes those
per-sample weights as ``kld_weight``. The released stage-2 loss differs from the paper (see the
chapter); this module follows the paper.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from threadpoolctl import threadpool_limits
from torch.func import functional_call

from .. import runtime
from ..data.augment import patch_mask
from ..losses.vae import kl_normal
from ..metrics import clustering
from ..metrics.mi import CLUB, club_estimate
from ..models.vae import ConvDecoder, ConvEncoder, reparameterize
from ..train import fit, probes

__all__ = ["ConsistencyAE", "ViewSpecificVAE", "ViewSpecificModel", "sse", "mcp_loss", "dd_loss",
           "frozen_club_bound", "make_optimizer", "train_consistency", "train_disentangling",
           "consistent_code", "specific_codes", "evaluate_features", "redundancy", "nuisance_r2",
           "VIEW_NUISANCES", "stage2_metrics", "plot_mask_ratio", "plot_embeddings"]


def sse(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Summed squared error per sample, ``||x - out||^2``: (B,)."""
    return ((out - x) ** 2).flatten(1).sum(1)


def _mirror(widths: Sequence[int]) -> tuple[int, ...]:
    return tuple(reversed(tuple(widths)))


class ConsistencyAE(nn.Module):
    """Stage 1: the shared encoder :math:`E_c` and one decoder per view.

    Args:
        n_views: V.
        in_ch, size: channels and side of every view (all views share one shape).
        c_dim: dimension of the consistent code c.
        widths: channels of the stride-2 convs of :math:`E_c` (mirrored by the decoders).
        fc: hidden width of the decoders' MLP head.
    """

    def __init__(self, n_views: int, in_ch: int, size: int, c_dim: int,
                 widths: Sequence[int] = (16, 32, 64), fc: int = 128) -> None:
        super().__init__()
        self.n_views, self.c_dim = n_views, c_dim
        conv = ConvEncoder(in_ch, size, 1, widths, fc)
        self.features = conv.features            # the conv stack only (its MLP head is dropped)
        self.to_c = nn.Linear(n_views * conv.flat_dim, 2 * c_dim)
        self.decoders = nn.ModuleList([ConvDecoder(in_ch, size, c_dim, _mirror(widths), fc)
                                       for _ in range(n_views)])

    def encode(self, views: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(c | x_1..x_V), each (B, c_dim)."""
        # one shared E_c per view (run once on the views stacked along the batch),
        # flattened features concatenated view by view, one linear layer
        b = views[0].shape[0]
        feats = self.features(torch.cat(list(views), 0)).flatten(1)        # (V*B, F)
        h = torch.cat(feats.split(b, 0), dim=1)                            # (B, V*F)
        mu, logvar = self.to_c(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, c: torch.Tensor) -> list[torch.Tensor]:
        """One reconstruction per view from the same code, each (B, C, H, W)."""
        return [dec(c) for dec in self.decoders]


def mcp_loss(model: ConsistencyAE, views: Sequence[torch.Tensor], ratio: float, patch: int = 2,
             kld_weight: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Masked cross-view prediction: :math:`\sum_i \lVert x_i - D_i(c)\rVert^2 + w\,\mathrm{KL}`,
    with :math:`c \sim q(c \mid \tilde x_{1..V})` from views masked independently (batch mean)."""
    masked = [patch_mask(x, ratio, patch, generator=generator)[0] for x in views]   # x~_i
    mu, logvar = model.encode(masked)
    c = reparameterize(mu, logvar)
    recon = sum(sse(out, x) for out, x in zip(model.decode(c), views))   # full views as targets
    return (recon + kld_weight * kl_normal(mu, logvar)).mean()


class ViewSpecificVAE(nn.Module):
    r"""Stage 2, one view: encoder :math:`x_i \to (\mu, \log\sigma^2)` of :math:`v_i`, decoder
    :math:`D'_i([c, v_i])`. The encoder never sees c; only the decoder does."""

    def __init__(self, in_ch: int, size: int, v_dim: int, c_dim: int,
                 widths: Sequence[int] = (16, 32, 64), fc: int = 128) -> None:
        super().__init__()
        self.v_dim, self.c_dim = v_dim, c_dim
        self.encoder = ConvEncoder(in_ch, size, 2 * v_dim, widths, fc)
        self.decoder = ConvDecoder(in_ch, size, c_dim + v_dim, _mirror(widths), fc)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([c, v], dim=1))


class ViewSpecificModel(nn.Module):
    """Stage 2 for all views: one `ViewSpecificVAE` and one `CLUB` q(c | v_i) per view."""

    def __init__(self, n_views: int, in_ch: int, size: int, v_dim: int, c_dim: int,
                 widths: Sequence[int] = (16, 32, 64), fc: int = 128, club_hidden: int = 50) -> None:
        super().__init__()
        self.vaes = nn.ModuleList([ViewSpecificVAE(in_ch, size, v_dim, c_dim, widths, fc)
                                   for _ in range(n_views)])
        self.clubs = nn.ModuleList([CLUB(v_dim, c_dim, hidden=club_hidden) for _ in range(n_views)])


def frozen_club_bound(club: CLUB, v: torch.Tensor, c: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """The CLUB-S bound on I(c; v) evaluated with the CLUB's parameters detached, so that
    its gradient reaches v (the encoder) and never the CLUB net."""
    params = {k: p.detach() for k, p in club.named_parameters()}
    return functional_call(club, params, (v, c), {"generator": generator})


def dd_loss(model: ViewSpecificModel, views: Sequence[torch.Tensor], c: torch.Tensor,
            alpha: float = 0.05, kld_weight: float = 0.5,
            generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Distilled disentangling, both objectives in one scalar with separated gradients.

    For each view: :math:`\lVert x_i - D'_i([c, v_i])\rVert^2 + \beta_v \mathrm{KL} + \alpha\,\hat I_{\mathrm{CLUB}}(c; v_i)`
    reaches the VAE's parameters (the CLUB net enters with detached parameters), and
    :math:`-\log q(c \mid v_i)` on a detached :math:`v_i` reaches only the CLUB net. One optimiser
    step thus moves each module along its own objective (simultaneous, not sequential,
    alternation). ``alpha = 0`` is MRDD without DD (the CLUB net still trains, as a probe).
    """
    total = torch.zeros((), device=c.device)
    for x, vae, club in zip(views, model.vaes, model.clubs):
        mu, logvar = vae.encode(x)
        v = reparameterize(mu, logvar)                                   # v_i ~ q(v_i | x_i)
        recon = sse(vae.decode(c, v), x)                                 # ||x_i - D'_i([c, v_i])||^2
        vae_loss = (recon + kld_weight * kl_normal(mu, logvar)).mean()
        if alpha:
            vae_loss = vae_loss + alpha * frozen_club_bound(club, v, c, generator)   # + alpha I_CLUB
        total = total + vae_loss + club.learning_loss(v.detach(), c)     # CLUB: max log q(c|v_i)
    return total


def make_optimizer(model: nn.Module, opt: str, lr: float) -> torch.optim.Optimizer:
    """Adam or AdamW (no weight decay) with the multi-tensor ``foreach`` update: these models
    have many small parameter tensors, and the per-tensor loop costs ~18% of a CPU step."""
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if opt not in kinds:
        raise ValueError(f"unknown optimizer {opt!r} (adam, adamw)")
    return kinds[opt](model.parameters(), lr=lr, foreach=True)


def train_consistency(views: Sequence[torch.Tensor], *, c_dim: int, ratio: float, steps: int,
                      batch_size: int = 128, lr: float = 2e-3, patch: int = 2,
                      kld_weight: float = 1.0, widths: Sequence[int] = (16, 32, 64), fc: int = 128,
                      opt: str = "adam", schedule: str | None = None, seed: int = 0, device=None,
                      progress: bool = False) -> ConsistencyAE:
    """Stage 1 on the training views (each (N, C, H, W)); returns the trained `ConsistencyAE`.

    ``ratio = 0`` is a plain joint multi-view VAE (no masking); with ``c_dim = d_c + V d_v``
    it is the chapter's joint-VAE baseline.
    """
    torch.manual_seed(seed)
    model = ConsistencyAE(len(views), views[0].shape[1], views[0].shape[-1], c_dim, widths, fc)
    model.to(runtime.device(device))             # before the optimiser takes its parameters
    gen = torch.Generator().manual_seed(10_000 + seed)
    fit(model, list(views), steps=steps, batch_size=batch_size, lr=lr,
        opt=make_optimizer(model, opt, lr), schedule=schedule,
        seed=seed, device=device, progress=progress, desc=f"MCP r={ratio:g}",
        loss_fn=lambda m, *vs: mcp_loss(m, vs, ratio, patch, kld_weight, generator=gen))
    return model.eval()


def train_disentangling(views: Sequence[torch.Tensor], c: torch.Tensor, *, v_dim: int,
                        alpha: float, steps: int, batch_size: int = 128, lr: float = 2e-3,
                        kld_weight: float = 0.5, widths: Sequence[int] = (16, 32, 64),
                        fc: int = 128, club_hidden: int = 50, opt: str = "adam",
                        schedule: str | None = None, seed: int = 0, device=None,
                        progress: bool = False) -> ViewSpecificModel:
    """Stage 2 given the frozen consistent codes ``c`` (N, d_c) of the training views."""
    torch.manual_seed(seed)
    model = ViewSpecificModel(len(views), views[0].shape[1], views[0].shape[-1], v_dim,
                              c.shape[1], widths, fc, club_hidden)
    model.to(runtime.device(device))
    gen = torch.Generator().manual_seed(20_000 + seed)
    fit(model, [*views, c.detach()], steps=steps, batch_size=batch_size, lr=lr,
        opt=make_optimizer(model, opt, lr),
        schedule=schedule, seed=seed, device=device, progress=progress, desc=f"DD alpha={alpha:g}",
        loss_fn=lambda m, *batch: dd_loss(m, batch[:-1], batch[-1], alpha, kld_weight, gen))
    return model.eval()


@torch.no_grad()
def consistent_code(model: ConsistencyAE, views: Sequence[torch.Tensor],
                    batch_size: int = 1024) -> torch.Tensor:
    """Posterior mean of c on the unmasked views: (N, c_dim)."""
    model.eval()
    n = len(views[0])
    return torch.cat([model.encode([v[i:i + batch_size] for v in views])[0]
                      for i in range(0, n, batch_size)])


@torch.no_grad()
def specific_codes(model: ViewSpecificModel, views: Sequence[torch.Tensor],
                   batch_size: int = 1024) -> list[torch.Tensor]:
    """Posterior means of v_1..v_V: a list of (N, v_dim)."""
    model.eval()
    return [torch.cat([vae.encode(x[i:i + batch_size])[0] for i in range(0, len(x), batch_size)])
            for vae, x in zip(model.vaes, views)]


def evaluate_features(f_tr: torch.Tensor, y_tr: torch.Tensor, f_te: torch.Tensor,
                      y_te: torch.Tensor, seed: int = 0, cluster: bool = True) -> dict[str, float]:
    """Linear-probe accuracy (train -> test) and k-means ACC/NMI on the test features.

    BLAS runs on one thread here: on problems this small, extra threads only add
    synchronisation (a 30x slowdown measured on a loaded two-core machine).

    k-means runs on standardised features (so that codes of different scales weigh
    alike when concatenated), k = number of classes, 10 restarts.
    """
    with threadpool_limits(1):      # tiny problems: BLAS threads only contend
        out = {"probe_acc": probes.linear(f_tr, y_tr, f_te, y_te, max_iter=2000)["acc"]}
        if cluster:
            km = clustering.kmeans_acc_nmi(f_te, y_te, seed=seed, standardize=True)
            out.update(cluster_acc=km["acc"], nmi=km["nmi"])
    return out


def redundancy(v_tr: torch.Tensor, c_tr: torch.Tensor, v_te: torch.Tensor, c_te: torch.Tensor,
               steps: int = 300, seed: int = 0) -> float:
    """CLUB estimate of I(c; v) (nats) from a fresh q(c | v) fitted on the train codes and
    scored on the test codes (standardised with the train statistics)."""
    def z(a, ref):
        return (a - ref.mean(0)) / ref.std(0).clamp_min(1e-6)
    return club_estimate(z(v_tr, v_tr), z(c_tr, c_tr), z(v_te, v_tr), z(c_te, c_tr),
                         steps=steps, seed=seed)["club"]


def nuisance_r2(f_tr: torch.Tensor, n_tr: dict[str, torch.Tensor], f_te: torch.Tensor,
                n_te: dict[str, torch.Tensor], names: Sequence[str]) -> float:
    """Mean ridge-probe test R^2 of the named nuisance values from the features."""
    t_tr = torch.stack([n_tr[k] for k in names], 1)
    t_te = torch.stack([n_te[k] for k in names], 1)
    with threadpool_limits(1):
        return probes.ridge(f_tr, t_tr, f_te, t_te)["r2"]


VIEW_NUISANCES = (("intensity", "background", "shift_x", "shift_y"), ("dilation",))
"""The nuisances of `data.shifts.multiview` that belong to view 1 and to view 2."""


def stage2_metrics(c_tr: torch.Tensor, c_te: torch.Tensor, v_tr: Sequence[torch.Tensor],
                   v_te: Sequence[torch.Tensor], y_tr: torch.Tensor, y_te: torch.Tensor,
                   nuis_tr: dict[str, torch.Tensor] | None, nuis_te: dict[str, torch.Tensor] | None,
                   seed: int = 0, club_steps: int = 300,
                   view_nuisances: Sequence[Sequence[str]] = VIEW_NUISANCES) -> dict[str, float]:
    """Every number the chapter logs for one stage-2 run (test split; probes fit on train).

    - ``cvv_*`` / ``cv1_*``: probe accuracy, k-means ACC and NMI of [c, v_1, .., v_V] (the
      paper's combined representation) and of [c, v_1] (what the official evaluation uses);
    - ``v{i}_probe_acc``, ``v_probe_acc`` (mean over views): digit information left in v_i;
    - ``club_v{i}``, ``club`` (mean): CLUB estimate of I(c; v_i) by a fresh estimator;
    - ``nuis_r2_v{i}``, ``nuisance_r2`` (mean): ridge R^2 of view i's own nuisances from v_i.
    """
    out: dict[str, float] = {}
    for name, parts in (("cvv", [c_tr, *v_tr]), ("cv1", [c_tr, v_tr[0]])):
        parts_te = [c_te, *v_te] if name == "cvv" else [c_te, v_te[0]]
        ev = evaluate_features(torch.cat(parts, 1), y_tr, torch.cat(parts_te, 1), y_te, seed=seed)
        out.update({f"{name}_{k}": v for k, v in ev.items()})
    for i, (a, b) in enumerate(zip(v_tr, v_te), start=1):
        out[f"v{i}_probe_acc"] = evaluate_features(a, y_tr, b, y_te, cluster=False)["probe_acc"]
        out[f"club_v{i}"] = redundancy(a, c_tr, b, c_te, steps=club_steps, seed=seed)
        if nuis_tr is not None and i <= len(view_nuisances):
            out[f"nuis_r2_v{i}"] = nuisance_r2(a, nuis_tr, b, nuis_te, view_nuisances[i - 1])
    views = range(1, len(v_tr) + 1)
    out["v_probe_acc"] = float(np.mean([out[f"v{i}_probe_acc"] for i in views]))
    out["club"] = float(np.mean([out[f"club_v{i}"] for i in views]))
    if nuis_tr is not None:
        out["nuisance_r2"] = float(np.mean([out[f"nuis_r2_v{i}"] for i in views
                                            if f"nuis_r2_v{i}" in out]))
    return out


def plot_mask_ratio(ax, ratios: Sequence[float], values: Sequence[np.ndarray], label: str,
                    paper_default: float = 0.7) -> None:
    """Probe accuracy of c against the mask ratio: mean ± std over seeds plus each seed."""
    means = np.array([np.mean(v) for v in values])
    stds = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    ax.errorbar(ratios, means, yerr=stds, marker="o", capsize=3, label=label)
    for r, v in zip(ratios, values):
        ax.scatter([r] * len(v), v, s=10, color="grey", alpha=0.6, zorder=3)
    ax.axvline(paper_default, ls=":", color="grey", lw=1)
    ax.set_xlabel("mask ratio r (MCP)")
    ax.set_ylabel("linear-probe accuracy of c")


def plot_embeddings(axes, codes: dict[str, np.ndarray], y: np.ndarray, seed: int = 0,
                    method: str = "tsne"):
    """2-D embedding (`analysis.latents.embed2d`) of each standardised code, coloured by
    digit, one panel per code. Returns the last scatter (for a colour bar)."""
    from ..analysis.latents import embed2d
    sc = None
    for ax, (name, f) in zip(axes, codes.items()):
        f = np.asarray(f, dtype=np.float64)
        f = (f - f.mean(0)) / np.maximum(f.std(0), 1e-6)
        emb = embed2d(f, method=method, seed=seed)
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap="tab10", s=4, vmin=-0.5, vmax=9.5)
        ax.set_title(name)
        ax.set_xticks([])
        ax.set_yticks([])
    return sc

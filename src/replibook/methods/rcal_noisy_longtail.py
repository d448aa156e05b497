r"""RCAL: representation calibration for noisy labels on long-tailed data (Zhang et al., ICCV 2023).

Paper: *When Noisy Labels Meet Long Tail Dilemmas: A Representation Calibration Method*,
arXiv:2211.10955. No official code was found; the steps below follow the paper's Sec. 3 as
described in its text (the equations are not available to this book as text, so the exact
forms of the tail calibration and of the regulariser are our reading, flagged in the chapter).

RCAL works on the representations :math:`z = f_0(x)` of an encoder trained by **unsupervised**
contrastive learning (labels are never used there, so label noise cannot hurt it):

1. **Robust class Gaussians.** For every class :math:`c` (by its possibly noisy label), drop
   the samples that the Local Outlier Factor flags among the representations labelled
   :math:`c` (mislabelled samples sit in another class's cluster), then estimate
   :math:`\hat\mu_c, \hat\Sigma_c` (Ledoit-Wolf) from the rest (`lof_keep`, `class_stats`).
2. **Tail calibration.** A tail class :math:`t` borrows from its :math:`q` head classes with
   the nearest means :math:`N_q(t)`:

   .. math:: \mu'_t = \frac{\hat\mu_t + \sum_{h \in N_q(t)} \hat\mu_h}{q + 1}, \qquad
             \Sigma'_t = \frac{\hat\Sigma_t + \sum_{h \in N_q(t)} \hat\Sigma_h}{q + 1} + \alpha I

   (`calibrate`).
3. **Sampling.** Draw :math:`z \sim \mathcal N(\mu'_c, \Sigma'_c)` until every class has as
   many (kept + sampled) points as the largest class (`sample_balanced`).
4. **Training with individual calibration.** Fine-tune a copy :math:`f` of the encoder with a
   linear classifier :math:`g` on the kept samples plus the sampled representations,

   .. math:: L = \mathrm{CE}(g(f(x)), \tilde y) + \mathrm{CE}(g(z_s), y_s)
                 + \beta\, \lVert f(x) - f_0(x) \rVert^2

   (`rcal_fit`); the paper adds mixup, which this module leaves out.

Baselines: CE from scratch, linear probe on :math:`f_0`, logit-adjusted probe, and a light
Co-teaching (`coteaching_fit`, Han et al. 2018: two networks, each trained on the samples the
other finds small-loss). The class-prior-proportional label noise of the paper's analysis
(its Assumption 3.1(3)) is `prior_noise`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data.shifts import LongtailNoisy, longtail_noisy
from ..metrics.classification import predict
from ..models.gaussian import ledoit_wolf
from ..models.mlp import MLP, ProjectionHead
from ..train.fit import fit

__all__ = ["prior_noise", "make_noisy_longtail", "digit_augment", "Classifier", "make_encoder",
           "encode", "lof_keep", "lof_quality", "class_stats", "tail_mask", "calibrate",
           "sample_balanced", "rcal_fit", "ce_fit", "probe_fit", "coteaching_fit", "pretrain"]


# ---------------------------------------------------------------------------- data
def prior_noise(labels, noise: float, num_classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    r"""Flip exactly ``round(noise * M)`` labels to another class drawn with probability
    proportional to its size: :math:`P(\tilde y = j \mid y = k) \propto n_j` for :math:`j \ne k`.

    This is the noise of the paper's Assumption 3.1(3) (:math:`\eta\, n_j / n`): tail classes
    receive few wrong labels, unlike uniform symmetric noise, which can make a small class
    mostly mislabelled. Returns ``(noisy_labels, flipped_positions)``.
    """
    labels = np.asarray(labels).astype(np.int64).ravel()
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"prior_noise: noise must be in [0, 1], got {noise}")
    rng = np.random.default_rng([int(seed), 58])
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    out = labels.copy()
    flip = np.sort(rng.choice(len(labels), size=int(round(noise * len(labels))), replace=False))
    for i in flip:
        p = counts.copy()
        p[labels[i]] = 0.0
        out[i] = rng.choice(num_classes, p=p / p.sum())
    return out, flip.astype(np.int64)


def make_noisy_longtail(y, imbalance: float, noise: float, kind: str = "prior", seed: int = 0,
                        num_classes: int | None = None, n_max: int | None = None) -> LongtailNoisy:
    """Long-tailed subset (`data.shifts.longtail_noisy`'s profile) with ``"sym"`` / ``"asym"``
    noise from the shared helper, or ``"prior"`` noise from `prior_noise`. The kept subset
    depends on ``seed`` only (not on ``noise``), so noise levels share one training set."""
    if kind in ("sym", "asym"):
        return longtail_noisy(y, imbalance, noise, kind=kind, seed=seed, num_classes=num_classes, n_max=n_max)
    if kind != "prior":
        raise ValueError(f"make_noisy_longtail: kind must be 'prior', 'sym' or 'asym', got {kind!r}")
    base = longtail_noisy(y, imbalance, 0.0, seed=seed, num_classes=num_classes, n_max=n_max)
    c = int(num_classes or (np.asarray(y).max() + 1))
    labels, noisy = prior_noise(base.labels, noise, c, seed=seed)
    clean = np.setdiff1d(np.arange(len(labels)), noisy).astype(np.int64)
    return LongtailNoisy(base.kept, labels, clean, noisy)


def digit_augment(x: torch.Tensor, generator: torch.Generator | None = None, max_shift: int = 2,
                  noise: float = 0.1, erase: int = 3) -> torch.Tensor:
    """Views for contrastive learning on small grey digits ``(N, 1, H, W)`` in [0, 1]: a random
    integer shift of up to ``max_shift`` px (zero fill), Gaussian pixel noise of std ``noise``
    and one ``erase`` x ``erase`` square set to 0 at a random place."""
    n, _, h, w = x.shape
    dev = x.device
    g = generator

    def rint(lo, hi):
        return torch.randint(lo, hi, (n,), generator=g, device="cpu").to(dev)

    dy, dx = rint(-max_shift, max_shift + 1), rint(-max_shift, max_shift + 1)
    rows = torch.arange(h, device=dev).view(1, h, 1) - dy.view(n, 1, 1)       # source row
    cols = torch.arange(w, device=dev).view(1, 1, w) - dx.view(n, 1, 1)
    valid = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
    idx = rows.clamp(0, h - 1) * w + cols.clamp(0, w - 1)                   # (n, h, w)
    flat = x.reshape(n, x.shape[1], h * w)
    out = torch.gather(flat, 2, idx.reshape(n, 1, h * w).expand(-1, x.shape[1], -1)).reshape_as(x)
    out = out * valid.unsqueeze(1)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=g, device="cpu").to(dev)
    if erase > 0:
        ey, ex = rint(0, h - erase + 1), rint(0, w - erase + 1)
        r = torch.arange(h, device=dev).view(1, h, 1)
        c = torch.arange(w, device=dev).view(1, 1, w)
        box = ((r >= ey.view(n, 1, 1)) & (r < (ey + erase).view(n, 1, 1))
               & (c >= ex.view(n, 1, 1)) & (c < (ex + erase).view(n, 1, 1)))
        out = out.masked_fill(box.unsqueeze(1), 0.0)
    return out.clamp(0, 1)


# ---------------------------------------------------------------------------- models
class Classifier(nn.Module):
    """Encoder ``f`` followed by a linear classifier ``g``; ``forward(x) = g(f(x))``."""

    def __init__(self, encoder: nn.Module, dim: int, num_classes: int) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def make_encoder(in_dim: int, hidden: int = 256, dim: int = 64) -> MLP:
    """The small-tier encoder: MLP ``in -> hidden -> dim`` (BN, ReLU), inputs flattened."""
    return MLP([in_dim, hidden, dim], norm="batch", act="relu")


def _out_dim(enc: nn.Module, x: torch.Tensor) -> int:
    dev = next(enc.parameters()).device
    return int(encode(enc, x[:2].to(dev)).shape[1])


def encode(encoder: nn.Module, x: torch.Tensor, batch_size: int = 2048) -> torch.Tensor:
    """``f(x)`` in eval mode, batched (`metrics.classification.predict` on the encoder)."""
    return predict(encoder, x, batch_size)


def pretrain(x: torch.Tensor, *, dim: int = 64, hidden: int = 256, proj_dim: int = 32, steps: int = 300,
             batch_size: int = 256, lr: float = 1e-3, tau: float = 0.5, seed: int = 0,
             augment: Callable[..., torch.Tensor] | None = None, progress: bool = True) -> tuple[nn.Module, Any]:
    """SimCLR pretraining (shared `train.ssl.simclr_pretrain`) of `make_encoder` on images
    ``x (N, 1, H, W)``, labels unused. Returns ``(encoder, history)``."""
    from ..train.ssl import simclr_pretrain
    torch.manual_seed(seed)
    enc = make_encoder(int(np.prod(x.shape[1:])), hidden, dim)
    proj = ProjectionHead(dim, hidden=dim, out_dim=proj_dim, kind="mlp")
    hist = simclr_pretrain(enc, proj, x, steps=steps, batch_size=batch_size, lr=lr, tau=tau,
                           augment=augment or digit_augment, seed=seed, progress=progress,
                           desc="SimCLR pretraining")
    enc.eval()
    return enc, hist


# ---------------------------------------------------------------------------- step 1
def lof_keep(z, labels, num_classes: int, n_neighbors: int = 20,
             contamination: float | str = "auto") -> np.ndarray:
    """Boolean ``(N,)`` mask of samples kept after per-class LOF outlier removal.

    Within the samples carrying label ``c``, sklearn's `LocalOutlierFactor` (Breunig et al.
    2000; ``n_neighbors`` capped at ``n_c - 1``) flags outliers; classes with fewer than 3
    samples are kept whole."""
    from sklearn.neighbors import LocalOutlierFactor
    z = z.detach().cpu().numpy() if isinstance(z, torch.Tensor) else np.asarray(z)
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    keep = np.ones(len(labels), dtype=bool)
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        if len(idx) < 3:
            continue
        lof = LocalOutlierFactor(n_neighbors=min(n_neighbors, len(idx) - 1), contamination=contamination)
        keep[idx] = lof.fit_predict(z[idx]) == 1
    return keep


def lof_quality(keep: np.ndarray, noisy_positions: np.ndarray) -> dict[str, float]:
    """Precision and recall of the removed set at catching the truly mislabelled samples
    (NaN precision when nothing was removed, NaN recall without noise), and the removed fraction."""
    removed = ~np.asarray(keep, dtype=bool)
    is_noisy = np.zeros(len(removed), dtype=bool)
    is_noisy[np.asarray(noisy_positions, dtype=np.int64)] = True
    tp = float((removed & is_noisy).sum())
    return {"precision": tp / removed.sum() if removed.any() else float("nan"),
            "recall": tp / is_noisy.sum() if is_noisy.any() else float("nan"),
            "removed": float(removed.mean())}


def class_stats(z, labels, num_classes: int,
                keep: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Per-class mean ``(C, D)`` and Ledoit-Wolf covariance ``(C, D, D)`` (float64) of the kept
    representations, and the kept counts ``(C,)``. Classes with fewer than 2 kept samples get
    the pooled covariance of all kept samples (and the mean of what they have, or the global mean)."""
    z = torch.as_tensor(z).double().cpu()
    labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64)
    keep = np.ones(len(labels), dtype=bool) if keep is None else np.asarray(keep, dtype=bool)
    zk, yk = z[torch.as_tensor(keep)], labels[keep]
    _, pooled, _ = ledoit_wolf(zk)
    means, covs, counts = [], [], np.bincount(yk, minlength=num_classes)
    for c in range(num_classes):
        zc = zk[torch.as_tensor(yk == c)]
        if len(zc) >= 2:
            m, s, _ = ledoit_wolf(zc)
        else:
            m, s = (zc.mean(0) if len(zc) else zk.mean(0)), pooled
        means.append(m)
        covs.append(s)
    return torch.stack(means), torch.stack(covs), counts


# ---------------------------------------------------------------------------- step 2
def tail_mask(counts, fraction: float = 0.5) -> np.ndarray:
    """Tail classes: the ``fraction`` of classes with the fewest samples (ties by class index)."""
    counts = np.asarray(counts)
    order = np.argsort(counts, kind="stable")
    mask = np.zeros(len(counts), dtype=bool)
    mask[order[: int(round(fraction * len(counts)))]] = True
    return mask


def calibrate(means: torch.Tensor, covs: torch.Tensor, tail: np.ndarray, q: int = 2,
              alpha: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, dict[int, list[int]]]:
    r"""Borrow head-class statistics for the tail classes (module docstring, step 2).

    For each tail class ``t`` the ``q`` head classes with the nearest (Euclidean) means give
    :math:`\mu'_t = (\mu_t + \sum_h \mu_h)/(q+1)` and
    :math:`\Sigma'_t = (\Sigma_t + \sum_h \Sigma_h)/(q+1) + \alpha I`; head classes are unchanged.
    Returns the calibrated ``(means, covs)`` and the neighbours used, ``{t: [h, ...]}``."""
    tail = np.asarray(tail, dtype=bool)
    heads = np.flatnonzero(~tail)
    if q < 1 or len(heads) == 0:
        raise ValueError("calibrate needs q >= 1 and at least one head class")
    q = min(q, len(heads))
    new_m, new_s = means.clone(), covs.clone()
    eye = torch.eye(means.shape[1], dtype=covs.dtype)
    used: dict[int, list[int]] = {}
    for t in np.flatnonzero(tail):
        d = torch.linalg.vector_norm(means[heads] - means[t], dim=1)
        nn_ = heads[torch.argsort(d)[:q].numpy()]
        used[int(t)] = [int(h) for h in nn_]
        new_m[t] = (means[t] + means[nn_].sum(0)) / (q + 1)
        new_s[t] = (covs[t] + covs[nn_].sum(0)) / (q + 1) + alpha * eye
    return new_m, new_s, used


def sample_balanced(means: torch.Tensor, covs: torch.Tensor, counts, target: int | None = None,
                    seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``target - counts[c]`` points from :math:`\\mathcal N(\\mu_c, \\Sigma_c)` for every
    class (``target`` defaults to the largest count), so kept + sampled is balanced.
    Returns float32 ``(z (S, D), y (S,))``."""
    counts = np.asarray(counts, dtype=np.int64)
    target = int(counts.max()) if target is None else int(target)
    g = torch.Generator().manual_seed(int(seed))
    zs, ys = [], []
    d = means.shape[1]
    for c in range(len(counts)):
        n = max(0, target - int(counts[c]))
        if n == 0:
            continue
        cov = covs[c].double()
        cov = (cov + cov.T) / 2
        evals, evecs = torch.linalg.eigh(cov)
        root = evecs * evals.clamp(min=0).sqrt()                     # cov = root @ root.T
        eps = torch.randn(n, d, generator=g, dtype=torch.float64)
        zs.append(means[c].double() + eps @ root.T)
        ys.append(torch.full((n,), c, dtype=torch.long))
    if not zs:
        return torch.zeros(0, d), torch.zeros(0, dtype=torch.long)
    return torch.cat(zs).float(), torch.cat(ys)


# ---------------------------------------------------------------------------- training
def rcal_fit(encoder0: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int, *,
             z_sampled: torch.Tensor | None = None, y_sampled: torch.Tensor | None = None,
             beta: float = 1.0, steps: int = 300, batch_size: int = 128, lr: float = 1e-3,
             weight_decay: float = 5e-4, seed: int = 0, progress: bool = False) -> Classifier:
    r"""Step 4: fine-tune a copy of ``encoder0`` with a linear head on ``(x, y)`` (the kept
    samples), plus CE of the head on sampled representations (a batch of the same size per
    step) and :math:`\beta \lVert f(x) - f_0(x) \rVert^2` (squared distance, batch mean)."""
    torch.manual_seed(seed)
    dim = _out_dim(encoder0, x)
    model = Classifier(copy.deepcopy(encoder0), dim, num_classes)
    for p in model.parameters():             # encoder0 may come frozen; its copy f is trained
        p.requires_grad_(True)
    f0 = copy.deepcopy(encoder0).eval()
    for p in f0.parameters():
        p.requires_grad_(False)
    have_s = z_sampled is not None and len(z_sampled) > 0
    g = torch.Generator().manual_seed(int(seed) + 1)

    def loss_fn(m: Classifier, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        h = m.encoder(xb)
        loss = F.cross_entropy(m.head(h), yb)
        if beta > 0:
            loss = loss + beta * (h - f0(xb)).pow(2).sum(1).mean()
        if have_s:
            j = torch.randint(0, len(z_sampled), (len(xb),), generator=g)
            loss = loss + F.cross_entropy(m.head(z_sampled[j].to(xb.device)), y_sampled[j].to(xb.device))
        return loss

    fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        loss_fn=loss_fn, seed=seed, progress=progress, desc="RCAL")
    return model.eval()


def ce_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, hidden: int = 256, dim: int = 64,
           make: Callable[[], nn.Module] | None = None, steps: int = 300, batch_size: int = 128,
           lr: float = 1e-3, weight_decay: float = 5e-4, seed: int = 0, progress: bool = False) -> Classifier:
    """CE baseline: the same encoder + linear head trained from scratch on the noisy labels
    (``make()`` builds the encoder; default `make_encoder` with ``hidden`` / ``dim``)."""
    torch.manual_seed(seed)
    enc = make() if make is not None else make_encoder(int(np.prod(x.shape[1:])), hidden, dim)
    model = Classifier(enc, _out_dim(enc, x), num_classes)
    fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        seed=seed, progress=progress, desc="CE")
    return model.eval()


def probe_fit(z: torch.Tensor, y: torch.Tensor, num_classes: int, *, class_counts=None, tau: float = 1.0,
              steps: int = 300, batch_size: int = 128, lr: float = 1e-2, weight_decay: float = 5e-4,
              seed: int = 0, progress: bool = False) -> nn.Linear:
    """Linear classifier on frozen representations; with ``class_counts`` the loss uses the
    logit-adjusted logits (`losses.imbalanced.logit_adjust`, Menon et al. 2021) and the
    returned layer predicts with the raw logits."""
    from ..losses.imbalanced import logit_adjust
    torch.manual_seed(seed)
    head = nn.Linear(z.shape[1], num_classes)
    counts = None if class_counts is None else torch.as_tensor(np.asarray(class_counts), dtype=torch.float32)

    def loss_fn(m: nn.Module, zb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        logits = m(zb)
        if counts is not None:
            logits = logit_adjust(logits, counts.to(zb.device), tau=tau)
        return F.cross_entropy(logits, yb)

    fit(head, (z, y), steps=steps, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        loss_fn=loss_fn, seed=seed, progress=progress, desc="probe")
    return head.eval()


@dataclass
class CoteachingResult:
    model: Classifier
    peer: Classifier
    forget_rate: float


def coteaching_fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, *, forget_rate: float,
                   ramp: float = 0.2, hidden: int = 256, dim: int = 64,
                   make: Callable[[], nn.Module] | None = None, steps: int = 300,
                   batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 5e-4,
                   seed: int = 0) -> CoteachingResult:
    r"""Co-teaching-lite (Han et al. 2018): two networks (the CE architecture) see the same
    minibatch; each keeps the :math:`1 - R(t)` fraction of samples with the smallest loss
    under it and the **other** network is updated on them. :math:`R(t)` grows linearly from
    0 to ``forget_rate`` (the noise rate, assumed known as in the paper) over the first
    ``ramp`` fraction of the steps. Predictions use the first network."""
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(seed)
    in_dim = int(np.prod(x.shape[1:]))
    encs = [make() if make is not None else make_encoder(in_dim, hidden, dim) for _ in range(2)]
    nets = [Classifier(e, _out_dim(e, x), num_classes).to(x.device) for e in encs]
    opts = [torch.optim.Adam(n.parameters(), lr=lr, weight_decay=weight_decay) for n in nets]
    n = len(x)
    bs = min(batch_size, n)
    perm, pos = torch.randperm(n, generator=gen), 0
    for t in range(steps):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=gen), 0
        idx = perm[pos:pos + bs]
        pos += bs
        xb, yb = x[idx], y[idx]
        rate = forget_rate * min(1.0, (t + 1) / max(1.0, ramp * steps))
        n_keep = max(1, int(round((1 - rate) * bs)))
        for net in nets:
            net.train()
        losses = [F.cross_entropy(net(xb), yb, reduction="none") for net in nets]
        pick = [torch.argsort(l.detach())[:n_keep] for l in losses]
        for i in range(2):                     # net i learns from the peer's small-loss pick
            opts[i].zero_grad()
            losses[i][pick[1 - i]].mean().backward()
            opts[i].step()
    return CoteachingResult(nets[0].eval(), nets[1].eval(), forget_rate)


# ---------------------------------------------------------------------------- experiment
ARMS = ["CE", "Co-teaching-lite", "Probe", "LA probe", "RCAL", "RCAL w/o LOF",
        "RCAL w/o calibration", "RCAL w/o regulariser"]


class ResNetEncoder(nn.Module):
    """A CIFAR ResNet (``models.resnet.ResNetCIFAR``) without its classifier: pooled features."""

    def __init__(self, depth: int = 32, width: int = 16) -> None:
        super().__init__()
        from ..models.resnet import ResNetCIFAR
        self.net = ResNetCIFAR(depth=depth, num_classes=10, width=width)
        self.depth, self.dim = depth, 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.features(x)


def setting_name(noise: float) -> str:
    return f"noise {noise:g}"


@dataclass
class SeedRun:
    """What `run_seed` returns: per-(method, setting) metrics and per-class test accuracies,
    the SSL loss curve, and (for the figure) the class statistics of each noise level."""

    metrics: dict
    per_class: dict
    ssl_loss: list
    stats: dict
    counts: np.ndarray


def _encoder_for(cfg, in_shape) -> nn.Module:
    if cfg.get("encoder", "mlp") == "mlp":
        return make_encoder(int(np.prod(in_shape)), cfg["hidden"], cfg["dim"])
    depth = int(str(cfg["encoder"]).replace("resnet", ""))
    return ResNetEncoder(depth=depth)


def run_seed(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             cfg, seed: int, num_classes: int = 10, progress: bool = False) -> SeedRun:
    """One seed of the chapter: a long-tailed training subset (shared by the noise levels),
    SimCLR on its images (labels unused), then every arm in ``cfg["arms"]`` at every noise level.
    Metrics: balanced test accuracy ``acc`` and ``many`` / ``medium`` / ``few``-shot accuracy
    (by the clean class sizes of the subset); for RCAL also the LOF precision / recall."""
    from ..metrics.classification import predict, shot_accuracy, per_class_accuracy
    from ..train.ssl import simclr_pretrain

    arms = list(cfg.get("arms", ARMS))
    base = make_noisy_longtail(y_train, cfg["imbalance"], 0.0, seed=seed, num_classes=num_classes,
                               n_max=cfg.get("n_max"))
    x = x_train[torch.as_tensor(base.kept)]
    clean_y = np.asarray(y_train.cpu())[base.kept]
    counts = np.bincount(clean_y, minlength=num_classes)

    # --- unsupervised contrastive pretraining, shared by every arm and noise level of this seed
    torch.manual_seed(seed)
    enc0 = _encoder_for(cfg, x.shape[1:])
    dim = cfg["dim"] if cfg.get("encoder", "mlp") == "mlp" else enc0.dim
    proj = ProjectionHead(dim, hidden=dim, out_dim=cfg["proj_dim"], kind="mlp")
    aug = (lambda b, g: digit_augment(b, g)) if cfg.get("ssl_augment", "digits") == "digits" else None
    hist = simclr_pretrain(enc0, proj, x, steps=cfg["ssl_steps"], batch_size=cfg["ssl_batch"], lr=cfg["ssl_lr"],
                           tau=cfg["ssl_tau"], augment=aug, seed=seed, progress=progress,
                           desc=f"SimCLR seed {seed}")
    enc0.eval()
    for p in enc0.parameters():
        p.requires_grad_(False)
    z = encode(enc0, x)
    z_te = encode(enc0, x_test)
    ssl_loss = [float(v) for v in hist.train_loss]

    train_kw = dict(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    weight_decay=cfg["weight_decay"])
    metrics, per_class, stats = {}, {}, {}

    def score(name, setting, pred):
        sa = shot_accuracy(pred, y_test, counts, many=cfg["many"], few=cfg["few"])
        metrics[(name, setting)] = {"acc": sa["all"], "many": sa["many"], "medium": sa["medium"], "few": sa["few"]}
        per_class[(name, setting)] = per_class_accuracy(pred.cpu(), y_test.cpu(), num_classes)

    for noise in cfg["noises"]:
        setting = setting_name(noise)
        lt = make_noisy_longtail(y_train, cfg["imbalance"], noise, kind=cfg["noise_kind"], seed=seed,
                                 num_classes=num_classes, n_max=cfg.get("n_max"))
        yn = torch.as_tensor(lt.labels, dtype=torch.long, device=x.device)
        kw = dict(train_kw, seed=seed)
        make = lambda: _encoder_for(cfg, x.shape[1:])      # noqa: E731  (a fresh, untrained encoder)
        if "CE" in arms:
            m = ce_fit(x, yn, num_classes, make=make, **kw)
            score("CE", setting, predict(m, x_test).argmax(1))
        if "Co-teaching-lite" in arms:
            ct = coteaching_fit(x, yn, num_classes, forget_rate=noise, make=make, **kw)
            score("Co-teaching-lite", setting, predict(ct.model, x_test).argmax(1))
        noisy_counts = np.bincount(lt.labels, minlength=num_classes)
        pkw = dict(kw, lr=cfg["probe_lr"])
        if "Probe" in arms:
            head = probe_fit(z, yn, num_classes, **pkw)
            score("Probe", setting, predict(head, z_te).argmax(1))
        if "LA probe" in arms:
            head = probe_fit(z, yn, num_classes, class_counts=noisy_counts, **pkw)
            score("LA probe", setting, predict(head, z_te).argmax(1))

        cont = cfg["lof_contamination"]
        cont = (min(0.5, max(noise, 1e-3)) if noise > 0 else "auto") if cont == "noise" else cont
        keep = lof_keep(z, lt.labels, num_classes, n_neighbors=cfg["lof_neighbors"], contamination=cont)
        quality = lof_quality(keep, lt.noisy)
        variants = {"RCAL": (keep, True, cfg["beta"]),
                    "RCAL w/o LOF": (np.ones(len(keep), dtype=bool), True, cfg["beta"]),
                    "RCAL w/o calibration": (keep, False, cfg["beta"]),
                    "RCAL w/o regulariser": (keep, True, 0.0)}
        for name, (kp, cal, beta) in variants.items():
            if name not in arms:
                continue
            mu, cov, kept_counts = class_stats(z, lt.labels, num_classes, kp)
            tail = tail_mask(kept_counts, cfg["tail_fraction"])
            mu_c, cov_c, used = calibrate(mu, cov, tail, q=cfg["q"], alpha=cfg["alpha"]) if cal else (mu, cov, {})
            zs, ys = sample_balanced(mu_c, cov_c, kept_counts, seed=seed)
            kk = torch.as_tensor(kp, device=x.device)
            m = rcal_fit(enc0, x[kk], yn[kk], num_classes, z_sampled=zs.to(x.device), y_sampled=ys.to(x.device),
                         beta=beta, **kw)
            score(name, setting, predict(m, x_test).argmax(1))
            if name == "RCAL":
                metrics[(name, setting)].update(lof_precision=quality["precision"], lof_recall=quality["recall"],
                                                lof_removed=quality["removed"])
                stats[setting] = dict(z=z.cpu(), labels=lt.labels, clean=clean_y, means=mu, covs=cov,
                                      cal_means=mu_c, cal_covs=cov_c, tail=tail, neighbours=used)
    return SeedRun(metrics, per_class, ssl_loss, stats, counts)


# ---------------------------------------------------------------------------- figures
def _ellipse(ax, mean2, cov2, color, ls="-", lw=1.2) -> None:
    evals, evecs = np.linalg.eigh(cov2)
    t = np.linspace(0, 2 * np.pi, 100)
    circle = np.stack([np.cos(t), np.sin(t)])
    pts = (evecs * np.sqrt(np.clip(evals, 0, None))) @ circle + mean2[:, None]
    ax.plot(pts[0], pts[1], color=color, ls=ls, lw=lw)


def plot_gaussians(ax, stats: dict, max_points: int = 600, seed: int = 0) -> None:
    """Representations of the training subset on their first two principal components (dots
    coloured by the *clean* class), and for each tail class its Gaussian (1-sigma ellipse)
    before calibration (dashed) and after (solid), with an arrow from the old to the new mean."""
    import matplotlib.pyplot as plt
    z = stats["z"].double().numpy()
    mean = z.mean(0)
    _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
    p = vt[:2].T                                                    # (D, 2)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(z), size=min(max_points, len(z)), replace=False)
    colors = plt.get_cmap("tab10")
    z2 = (z[idx] - mean) @ p
    ax.scatter(z2[:, 0], z2[:, 1], c=[colors(int(c) % 10) for c in stats["clean"][idx]], s=5, alpha=0.35)
    for c in np.flatnonzero(stats["tail"]):
        m0 = (stats["means"][c].numpy() - mean) @ p
        m1 = (stats["cal_means"][c].numpy() - mean) @ p
        _ellipse(ax, m0, p.T @ stats["covs"][c].numpy() @ p, colors(c % 10), ls="--")
        _ellipse(ax, m1, p.T @ stats["cal_covs"][c].numpy() @ p, colors(c % 10))
        ax.annotate("", xy=m1, xytext=m0, arrowprops=dict(arrowstyle="->", color="k", lw=1))
        ax.text(m0[0], m0[1], str(c), fontsize=9, weight="bold")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")

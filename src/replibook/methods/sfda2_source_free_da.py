r"""SF(DA)^2: source-free domain adaptation through the lens of data augmentation (ch. 10).

Hwang, Lee, Shin, Yoon, ICLR 2024 (arXiv:2403.10834). A source model (feature extractor
:math:`f` = backbone + BN bottleneck, weight-normalised classifier :math:`g`) is adapted to an
unlabelled target set without the source data. Three losses:

- **SNC** (spectral neighbourhood clustering): pull each prediction towards the stored
  predictions of its :math:`K` nearest neighbours in a *feature bank*, and push the
  predictions of different samples of a batch apart (`snc_pos`, `snc_neg`).
- **IFA** (implicit feature augmentation): the ISDA closed-form upper bound of the
  expected cross-entropy under Gaussian feature augmentation with the class covariance
  of the sample's pseudo label (`ifa_loss`, covariances from
  `replibook.models.gaussian.OnlineClassCov`).
- **FD** (feature disentanglement): make the covariance matrices of classes whose mean
  predictions overlap dissimilar (`fd_loss`).

Baselines in the same loop: source-only (no update) and SHOT-IM (`shot_im`: entropy minus
the entropy of the mean prediction, classifier frozen, after Liang et al. 2020). "SNC" alone
is the AaD-style neighbourhood-clustering baseline.

Written from the paper and a reading of the official ``tar_adaptation.py``; the exact forms
(e.g. ``kl_div`` applied to probabilities, the ``2 *`` in IFA, the FD weights from the score
bank) follow that script.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.convnets import ConvNet
from ..models.gaussian import OnlineClassCov
from ..models.heads import WeightNormClassifier
from ..train import fit

__all__ = ["SourceModel", "FeatureBank", "snc_pos", "snc_neg", "ifa_loss", "fd_loss", "shot_im",
           "train_source", "AdaptConfig", "adapt", "METHODS", "evaluate", "neighbour_purity",
           "embed_features"]

# method name -> which loss terms are on
METHODS = {
    "SHOT-IM": dict(shot=True, snc=False, ifa=False, fd=False),
    "SNC": dict(shot=False, snc=True, ifa=False, fd=False),
    "SNC+IFA": dict(shot=False, snc=True, ifa=True, fd=False),
    "SF(DA)^2": dict(shot=False, snc=True, ifa=True, fd=True),
}


class SourceModel(nn.Module):
    """Backbone (`ConvNet`) -> Linear + BatchNorm bottleneck -> `WeightNormClassifier`.

    SHOT's source-model layout (``feat_bootleneck(type="bn")`` + ``feat_classifier(type="wn")``)
    with a small ConvNet in place of ResNet. ``features(x)`` is the bottleneck output, the
    space where banks, neighbours and covariances live.
    """

    def __init__(self, in_ch: int = 1, num_classes: int = 10, blocks: int = 3, width: int = 32,
                 bottleneck: int = 64):
        super().__init__()
        self.backbone = ConvNet(in_ch, blocks=blocks, width=width)
        self.bottleneck = nn.Sequential(nn.Linear(self.backbone.out_dim, bottleneck),
                                        nn.BatchNorm1d(bottleneck))
        self.classifier = WeightNormClassifier(bottleneck, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.backbone(x))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        z = self.features(x)
        logits = self.classifier(z)
        return (logits, z) if return_features else logits


def train_source(model: SourceModel, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 5,
                 batch_size: int = 64, lr: float = 2e-3, label_smoothing: float = 0.1, seed: int = 0,
                 progress: bool = False):
    """Supervised source training: cross-entropy with label smoothing 0.1 (as SHOT), Adam."""
    steps = epochs * max(1, len(x) // batch_size)

    def loss_fn(m, xb, yb):
        return F.cross_entropy(m(xb), yb, label_smoothing=label_smoothing)

    return fit(model, (x, y), steps=steps, batch_size=batch_size, lr=lr, opt="adam", loss_fn=loss_fn,
               seed=seed, progress=progress, desc="source")


# ---------------------------------------------------------------------------- banks and losses

class FeatureBank:
    """L2-normalised features ``feats`` (N, D), softmax scores ``scores`` (N, C) and pseudo
    labels ``pseudo`` (N,) of every target sample, filled by one pass of the model and
    overwritten batch by batch during adaptation."""

    def __init__(self, feats: torch.Tensor, scores: torch.Tensor):
        self.feats = F.normalize(feats.detach(), dim=1).clone()
        self.scores = scores.detach().clone()
        self.pseudo = self.scores.argmax(1)

    @classmethod
    def build(cls, model: SourceModel, x: torch.Tensor, batch_size: int = 1000) -> "FeatureBank":
        logits, z = _outputs(model, x, batch_size)
        return cls(z, logits.softmax(1))

    @torch.no_grad()
    def update(self, idx: torch.Tensor, feats: torch.Tensor, scores: torch.Tensor) -> None:
        self.feats[idx] = F.normalize(feats.detach(), dim=1)
        self.scores[idx] = scores.detach()
        self.pseudo[idx] = scores.detach().argmax(1)

    @torch.no_grad()
    def neighbours(self, feats: torch.Tensor, k: int) -> torch.Tensor:
        """Indices (B, k) of the ``k`` most cosine-similar bank entries, the best match (the
        sample itself, once the bank holds the batch) dropped."""
        sim = F.normalize(feats.detach(), dim=1) @ self.feats.t()
        return sim.topk(k + 1, dim=1).indices[:, 1:]


def snc_pos(p: torch.Tensor, score_near: torch.Tensor) -> torch.Tensor:
    r"""SNC attraction: :math:`\frac1B\sum_i\sum_{j\in N_K(i)}\sum_c S_{jc}\log S_{jc} - S_{jc}\,p_{ic}`.

    ``p`` (B, C) current softmax outputs, ``score_near`` (B, K, C) bank scores of the
    neighbours. This is the official ``F.kl_div(p, S).sum(-1).sum(1).mean()``: ``kl_div``
    receives the probabilities as its "log-input", so the term is a negative dot product
    plus a constant (an AaD-style attraction), not a true KL divergence.
    """
    s = score_near
    const = torch.xlogy(s, s).sum((1, 2))
    dot = (p[:, None, :] * s).sum((1, 2))
    return (const - dot).mean()


def snc_neg(p: torch.Tensor) -> torch.Tensor:
    r"""SNC repulsion: :math:`\frac1B\sum_i\sum_{j\neq i}(p_i^\top p_j)^2` over the batch."""
    g = p @ p.t()
    off = 1.0 - torch.eye(len(p), device=p.device, dtype=p.dtype)
    return ((g ** 2) * off).sum(1).mean()


def ifa_loss(weight: torch.Tensor, logits: torch.Tensor, cov: torch.Tensor, ratio: float) -> torch.Tensor:
    r"""Implicit feature augmentation (ISDA bound), per the official ``IFA``.

    For sample :math:`i` with pseudo label :math:`\hat y_i = \arg\max` ``logits``, and every
    class :math:`k` used as the target,

    .. math:: \tilde z^{(k)}_{ic} = z_{ic} + \tfrac{\lambda}{2}(w_c - w_k)^\top
              \Sigma_{\hat y_i} (w_c - w_k), \qquad
              L = \frac1B\sum_i\sum_k 2\,\mathrm{CE}(\tilde z^{(k)}_i, k),

    ``weight`` (C, D) the effective classifier rows, ``cov`` (C, D, D), ``ratio`` = :math:`\lambda`.
    """
    c = weight.shape[0]
    pseudo = logits.detach().argmax(1)
    # A_y = W Sigma_y W^T (C_y, C, C); (w_c - w_k)^T S (w_c - w_k) = A_cc + A_kk - 2 A_ck
    a = torch.einsum("cd,yde,ke->yck", weight, cov.to(weight.dtype), weight)
    diag = torch.diagonal(a, dim1=1, dim2=2)                                     # (C_y, C)
    quad = diag[:, None, :] + diag[:, :, None] - 2 * a                            # [y, k, c]
    sigma2 = ratio * quad[pseudo]                                                 # (B, K=C, C)
    aug = logits[:, None, :] + 0.5 * sigma2                                       # (B, k, c)
    target = torch.arange(c, device=logits.device).expand(len(logits), c)
    ce = F.cross_entropy(aug.reshape(-1, c), target.reshape(-1), reduction="none").view(-1, c)
    return (2 * ce).sum(1).mean()


def fd_loss(cov: torch.Tensor, scores: torch.Tensor, pseudo: torch.Tensor) -> torch.Tensor:
    r"""Feature disentanglement: :math:`-\tfrac12\sum_{c\neq k} W_{ck}\,(1 - \cos(\mathrm{vec}\,
    \Sigma_c, \mathrm{vec}\,\Sigma_k))`, with :math:`W_{ck} = m_c^\top m_k` (detached), :math:`m_c`
    the mean bank score of the samples pseudo-labelled :math:`c` (0 for an empty class)."""
    c = cov.shape[0]
    onehot = F.one_hot(pseudo, c).to(scores)
    counts = onehot.sum(0)
    mean_score = (onehot.t() @ scores) / counts.clamp_min(1)[:, None]             # (C, C)
    off = 1.0 - torch.eye(c, device=cov.device, dtype=scores.dtype)
    w = ((mean_score @ mean_score.t()) * off).detach().to(cov.dtype)
    v = cov.reshape(c, -1)
    norms = v.norm(dim=1)
    cos = (v @ v.t()) / (norms[:, None] * norms[None, :] + 1e-12)
    return -((1 - cos) * w).sum() / 2


def shot_im(logits: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    r"""SHOT's information maximisation: mean prediction entropy minus the entropy of the
    mean prediction, :math:`\frac1B\sum_i H(p_i) - H(\bar p)` (confident and diverse)."""
    p = logits.softmax(1)
    ent = -(p * torch.log(p + eps)).sum(1).mean()
    pm = p.mean(0)
    div = -(pm * torch.log(pm + eps)).sum()
    return ent - div


# ---------------------------------------------------------------------------- adaptation loop

@dataclass
class AdaptConfig:
    """Hyper-parameters of the adaptation loop (defaults: the official VisDA settings)."""

    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    lr_backbone: float = 0.1          # multiplier of the backbone's lr (bottleneck, classifier: x1)
    weight_decay: float = 1e-3
    k: int = 5
    alpha: float = 1.0
    beta: float = 5.0
    lambda_0: float = 5.0
    alpha_1: float = 1e-4
    alpha_2: float = 10.0
    eval_every_epoch: bool = True


@dataclass
class AdaptResult:
    history: object
    loss_terms: dict = field(default_factory=dict)   # mean |weighted term| over the run


def _optimizer(model: SourceModel, cfg: AdaptConfig, train_classifier: bool) -> torch.optim.Optimizer:
    groups = [{"params": list(model.backbone.parameters()), "lr": cfg.lr * cfg.lr_backbone},
              {"params": list(model.bottleneck.parameters()), "lr": cfg.lr}]
    if train_classifier:
        groups.append({"params": list(model.classifier.parameters()), "lr": cfg.lr})
    else:
        for p in model.classifier.parameters():
            p.requires_grad_(False)
    opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    for g in opt.param_groups:
        g["lr0"] = g["lr"]
    return opt


def adapt(model: SourceModel, x_target: torch.Tensor, method: str, cfg: AdaptConfig, *, seed: int = 0,
          eval_fn=None, progress: bool = False) -> AdaptResult:
    """Adapt ``model`` in place on the unlabelled ``x_target`` with one of `METHODS`.

    One loop for all methods (SGD, nesterov momentum 0.9, weight decay 1e-3, backbone lr x0.1,
    poly decay ``(1 + 10 t/T)^-0.75``; BatchNorm in train mode), run through
    `replibook.train.fit` over ``(x_target, index)`` minibatches. SHOT-IM freezes the
    classifier (as SHOT does); the SNC variants train it (as the official SF(DA)^2 code).
    ``eval_fn(model) -> dict`` is called at step 0 and after every epoch.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} ({', '.join(METHODS)})")
    terms = METHODS[method]
    n = len(x_target)
    steps_per_epoch = max(1, n // cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    bank = FeatureBank.build(model, x_target) if terms["snc"] else None
    num_classes = model.classifier.num_classes
    dim = model.classifier.in_dim
    stats = OnlineClassCov(num_classes, dim, device=x_target.device) if terms["ifa"] or terms["fd"] else None
    opt = _optimizer(model, cfg, train_classifier=not terms["shot"])
    state = {"t": 0}
    sums: dict[str, torch.Tensor] = {}

    def track(name, value):
        sums[name] = sums.get(name, 0.0) + value.detach().abs()

    def loss_fn(m, xb, idx):
        state["t"] += 1
        t = state["t"]
        decay = (1 + 10 * (t - 1) / total) ** (-0.75)           # poly decay for this step
        for g in opt.param_groups:
            g["lr"] = g["lr0"] * decay
        logits, z = m(xb, return_features=True)
        if terms["shot"]:
            loss = shot_im(logits)
            track("SHOT-IM", loss)
            return loss
        p = logits.softmax(1)
        bank.update(idx, z, p)
        near = bank.neighbours(z, cfg.k)
        pos = snc_pos(p, bank.scores[near])
        a_t = cfg.alpha * (1 + 10 * t / total) ** (-cfg.beta)
        neg = a_t * snc_neg(p)
        loss = pos + neg
        track("SNC pos", pos)
        track("SNC neg", neg)
        if stats is not None:
            cov = stats.update(z, p.detach().argmax(1))
            if terms["ifa"]:
                ratio = cfg.lambda_0 * t / total
                ifa = cfg.alpha_1 * ifa_loss(m.classifier.weight, logits, cov, ratio)
                loss = loss + ifa
                track("IFA", ifa)
            if terms["fd"]:
                fd = cfg.alpha_2 * fd_loss(cov, bank.scores, bank.pseudo)
                loss = loss + fd
                track("FD", fd)
        return loss

    index = torch.arange(n, device=x_target.device)
    hist = fit(model, (x_target, index), steps=total, batch_size=cfg.batch_size, opt=opt, loss_fn=loss_fn,
               eval_fn=eval_fn, eval_every=steps_per_epoch if cfg.eval_every_epoch else None, seed=seed,
               progress=progress, desc=method)
    return AdaptResult(hist, {k: float(v) / total for k, v in sums.items()})


# ---------------------------------------------------------------------------- evaluation helpers

@torch.no_grad()
def _outputs(model: SourceModel, x: torch.Tensor, batch_size: int = 1000):
    was = model.training
    model.eval()
    ls, zs = [], []
    for i in range(0, len(x), batch_size):
        logits, z = model(x[i:i + batch_size], return_features=True)
        ls.append(logits)
        zs.append(z)
    model.train(was)
    return torch.cat(ls), torch.cat(zs)


def evaluate(model: SourceModel, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Per-class mean accuracy (the VisDA metric) and plain accuracy, in eval mode."""
    from ..metrics.classification import balanced_accuracy
    logits, _ = _outputs(model, x)
    pred = logits.argmax(1)
    c = model.classifier.num_classes
    return {"per-class acc": 100 * balanced_accuracy(pred.cpu(), y.cpu(), c),
            "acc": 100 * float((pred == y).float().mean())}


def neighbour_purity(model: SourceModel, x: torch.Tensor, y: torch.Tensor, k: int = 5) -> float:
    """Fraction of each sample's ``k`` cosine nearest neighbours (bottleneck features, self
    excluded) that share its true label: how well the SNC graph matches the classes."""
    _, z = _outputs(model, x)
    zn = F.normalize(z, dim=1)
    near = (zn @ zn.t()).topk(k + 1, dim=1).indices[:, 1:]
    return float((y[near] == y[:, None]).float().mean())


def embed_features(model: SourceModel, x: torch.Tensor) -> np.ndarray:
    """Bottleneck features (N, D) as a NumPy array (for `analysis.latents.embed2d`)."""
    return _outputs(model, x)[1].cpu().numpy()


# ---------------------------------------------------------------------------- shift calibration

def calibrate_strength(preset: str, grid, *, base: str = "mnist5k", split=(2000, 2000, 1000), size: int = 16,
                       seed: int = 100, source_epochs: int = 5, width: int = 16, bottleneck: int = 64,
                       band=(40.0, 65.0)) -> tuple[float, dict[float, float]]:
    """Pick the shift strength once, on a calibration seed that no reported run uses.

    Trains the source model on the clean source split of seed ``seed`` and measures its
    per-class accuracy on the shifted target split for every strength in ``grid``
    (`replibook.data.shifts.shifted_digits(..., strength=s)`). Rule (fixed before any
    reported run): the **largest** strength whose source-only accuracy lies in ``band``;
    if none does, the strength whose accuracy is closest to the band (ties: the larger).
    Returns ``(strength, {strength: accuracy})``.
    """
    from .. import runtime
    from ..data.shifts import shifted_digits
    dev = runtime.device()
    d = shifted_digits(preset, base, split=split, size=size, seed=seed, strength=0.0, device=dev)
    runtime.seed_everything(seed)
    model = SourceModel(d.source.x.shape[1], len(d.classes), width=width, bottleneck=bottleneck).to(dev)
    train_source(model, d.source.x, d.source.y, epochs=source_epochs, seed=seed)
    accs = {}
    for s in grid:
        ds = shifted_digits(preset, base, split=split, size=size, seed=seed, strength=float(s), device=dev)
        accs[float(s)] = evaluate(model, ds.target.x, ds.target.y)["per-class acc"]
    return pick_strength(accs, band), accs


def pick_strength(accs: dict[float, float], band=(40.0, 65.0)) -> float:
    """The calibration rule of `calibrate_strength` on measured ``{strength: accuracy}``."""
    lo, hi = band
    inside = [s for s, a in accs.items() if lo <= a <= hi]
    if inside:
        return max(inside)
    gap = {s: (lo - a if a < lo else a - hi) for s, a in accs.items()}
    best = min(gap.values())
    return max(s for s, g in gap.items() if g == best)


__all__ += ["calibrate_strength", "pick_strength"]


@torch.no_grad()
def with_target_bn(model: SourceModel, x: torch.Tensor, batch_size: int = 64) -> SourceModel:
    """A copy of ``model`` whose BatchNorm running statistics are re-estimated on ``x``
    (cumulative averages over one pass of ``batch_size`` batches), no weight changed: how much
    of the shift is a change of feature statistics (AdaBN, Li et al. 2016)."""
    import copy
    m = copy.deepcopy(model)
    for mod in m.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    for i in range(0, len(x), batch_size):
        m(x[i:i + batch_size])
    return m.eval()


__all__ += ["with_target_bn"]

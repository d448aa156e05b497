r"""ConR: a contrastive regularizer for deep imbalanced regression (Keramati, Meng, Evans, ICLR 2024).

Paper: *ConR: Contrastive Regularizer for Deep Imbalanced Regression*, arXiv:2309.06651;
code: https://github.com/BorealisAI/ConR (loss in ``agedb-dir/loss.py``, trainer in
``agedb-dir/train.py``).

**Why.** In imbalanced regression the few-shot labels have few training samples, and a
regressor tends to map their features onto those of nearby *frequent* labels: tail
features collapse into the head, and the tail inherits head predictions. ConR adds a
supervised-contrastive term on the features that only fires where this happens.

**The loss.** For a batch of features :math:`f_i`, labels :math:`y_i` and (detached) predictions
:math:`\hat y_i`, with :math:`z_i = f_i / \lVert f_i\rVert` and :math:`s_{ij} = z_i\cdot z_j / t`,

- positives :math:`P_i = \{j \ne i : |y_i - y_j| \le w\}` (labels within the window),
- negatives :math:`N_i = \{j : |y_i - y_j| > w,\ |\hat y_i - \hat y_j| \le w\}` (labels far
  apart but *predicted* close: the anchor is being confused with them),
- pushing weights :math:`\rho_{ij} = \omega_i \exp(\eta\,|y_i - y_j|)`, larger for farther labels
  (:math:`\omega_i` a density weight of the anchor, 1 without reweighting),

.. math::
    L_i = -\frac{1}{|P_i|}\sum_{p\in P_i}
          \log\frac{\exp(s_{ip})}{\sum_{p'\in P_i}\exp(s_{ip'}) + \sum_{n\in N_i}\rho_{in}\exp(s_{in})},
    \qquad L_{ConR} = \frac{1}{2B}\sum_i \omega_i L_i ,

with :math:`L_i = 0` when :math:`N_i` is empty (no confusion, nothing to fix). The total loss is
:math:`\alpha L_{reg} + \beta L_{ConR}`. As in the official trainer, ConR sees a batch of
:math:`2B` features from two augmented views of each image, so every anchor has at least its
other view as a positive.

Everything paper-specific lives here: the loss, the two-view training step, the procedural
imbalanced-regression task (`replibook.data.procedural.dsprites` with a long-tailed
``label_sampler``), and the chapter's plots. Shared parts: `replibook.losses.contrastive.pair_masks`,
`replibook.losses.imbalanced` (LDS weights, Balanced MSE), `replibook.metrics.regression`,
`replibook.models.convnets.ConvNet`, `replibook.train.fit`.
"""
from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.procedural import dsprites
from ..losses.contrastive import pair_masks
from ..losses.imbalanced import balanced_mse, lds_weights
from ..metrics.regression import gmean_error, shot_region_mae, shot_regions
from ..models.convnets import ConvNet
from ..train import fit

__all__ = [
    "conr_loss", "conr_masks", "translate_noise", "RegressionNet", "build_model", "DIRData", "make_data",
    "make_dir_data",
    "ARMS", "arm_spec", "RunResult", "train_arm", "predict_features", "evaluate", "per_label_mae",
    "nearest_head_cosine", "plot_label_histogram", "plot_mae_vs_label",
]


# ----------------------------------------------------------------------------- the loss

def conr_masks(targets: torch.Tensor, preds: torch.Tensor, window: float = 1.0,
               select_by_prediction: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """ConR's pair masks ``(pos, neg)``, boolean ``(N, N)``, diagonal False.

    ``pos[i, j]``: ``|y_i - y_j| <= window``; ``neg[i, j]``: ``|y_i - y_j| > window`` **and**
    ``|yhat_i - yhat_j| <= window`` (far labels, close predictions). With
    ``select_by_prediction=False`` (an ablation) every far-label pair is a negative.
    """
    pos, far = pair_masks(targets.detach(), window)
    if not select_by_prediction:
        return pos, far
    pred_close, _ = pair_masks(preds.detach(), window)
    return pos, far & pred_close


def conr_loss(features: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor, *,
              window: float = 1.0, weights: torch.Tensor | None = None, temperature: float = 0.07,
              eta: float = 0.01, code_denominator: bool = False, select_by_prediction: bool = True,
              return_stats: bool = False):
    r"""The ConR loss of a batch (module docstring).

    Args:
        features: ``(N, D)`` features (normalised inside); the only input that gets a gradient.
        targets: ``(N,)`` or ``(N, 1)`` labels.
        preds: ``(N,)`` or ``(N, 1)`` predictions (used only to pick negatives; detached).
        window: the label-similarity window ``w`` (official default 1 label unit).
        weights: ``(N,)`` anchor weights :math:`\omega_i` (e.g. LDS weights); default 1.
        temperature: ``t`` (0.07, hard-coded in the official ``ConR``).
        eta: ``e`` in the pushing weight :math:`\exp(e|y_i - y_j|)` (official 0.01).
        code_denominator: reproduce the official code's denominator, which (because the
            positive term is formed as ``exp(s * mask)``) also adds ``exp(0) = 1`` for each of
            the ``N - |P_i|`` non-positive columns, the anchor's own included.
        select_by_prediction: False makes every far-label pair a negative (ablation).
        return_stats: also return ``{"n_pos", "n_neg", "active"}`` (batch means of
            :math:`|P_i|`, :math:`|N_i|` and the share of anchors with a loss).
    Returns:
        scalar loss (mean over all N anchors, inactive ones counting 0) [, stats].
    """
    n = features.shape[0]
    dt = features.dtype if features.is_floating_point() else torch.float32
    y = targets.reshape(n).to(dt)
    w = torch.ones(n, device=features.device, dtype=dt) if weights is None else weights.reshape(n).to(dt)
    pos, neg = conr_masks(y, preds.reshape(n), window, select_by_prediction)
    z = F.normalize(features.to(dt), dim=1)
    s = z @ z.T / temperature                                    # s_ij = z_i . z_j / t
    log_rho = torch.log(w)[:, None] + eta * (y[:, None] - y[None, :]).abs()   # log rho_ij
    neg_inf = torch.tensor(float("-inf"), device=s.device, dtype=dt)
    terms = [torch.where(pos, s, neg_inf), torch.where(neg, s + log_rho, neg_inf)]
    n_pos = pos.sum(1)
    if code_denominator:                                         # + (N - |P_i|) * exp(0)
        terms.append(torch.log((n - n_pos).to(dt)).unsqueeze(1))
    empty = ~(pos.any(1) | neg.any(1))                           # no term at all: keep logsumexp finite
    terms.append(torch.where(empty, torch.zeros_like(n_pos, dtype=dt), neg_inf).unsqueeze(1))
    log_denom = torch.logsumexp(torch.cat(terms, dim=1), dim=1)  # log(sum_p' e^s + sum_n rho e^s)
    active = neg.any(1) & (n_pos > 0)                            # L_i = 0 without negatives
    log_prob = torch.where(pos, s - log_denom[:, None], torch.zeros_like(s))
    per_anchor = -log_prob.sum(1) / n_pos.clamp(min=1)           # -1/|P_i| sum_p log(...)
    loss = (w * torch.where(active, per_anchor, torch.zeros_like(per_anchor))).mean()
    if not return_stats:
        return loss
    stats = {"n_pos": float(n_pos.float().mean()), "n_neg": float(neg.sum(1).float().mean()),
             "active": float(active.float().mean())}
    return loss, stats


# ----------------------------------------------------------------------------- views and model

def translate_noise(x: torch.Tensor, generator: torch.Generator, max_shift: int = 2,
                    noise: float = 0.05, flip: bool = False) -> torch.Tensor:
    """A label-preserving view of images ``x (B, C, H, W)``: each image shifted by a random
    whole number of pixels in ``[-max_shift, max_shift]`` per axis (zero fill, i.e. a random crop
    of the zero-padded image), plus Gaussian noise of std ``noise``. ``flip`` adds a random
    horizontal flip (for ages; never for the angle task, whose target a flip would change)."""
    b, _, h, wd = x.shape
    shift = torch.randint(-max_shift, max_shift + 1, (b, 2), generator=generator).to(x.device).float()
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, 0, 2] = -2 * shift[:, 0] / wd                       # sample at p - shift: image moves by +shift
    theta[:, 1, 2] = -2 * shift[:, 1] / h
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if flip:
        mirror = torch.rand(b, generator=generator).to(x.device) < 0.5
        out = torch.where(mirror[:, None, None, None], out.flip(-1), out)
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator).to(x.device)
    return out


class RegressionNet(nn.Module):
    """`ConvNet` features -> linear regressor. ``forward`` returns ``(pred (B,), features (B, D))``.

    Predictions are in label units: ``pred = offset + scale * head(f)`` with fixed ``offset``,
    ``scale`` (the training labels' mean and std), so an Adam step of 1e-3 moves the output by a
    sensible amount. ``noise_sigma`` is Balanced MSE's learnable noise scale (label units).
    """

    def __init__(self, blocks: int = 3, width: int = 16, stem_stride: int = 2, offset: float = 0.0,
                 scale: float = 1.0, noise_sigma: float | None = None, in_ch: int = 1,
                 backbone: str = "convnet"):
        super().__init__()
        if backbone == "convnet":
            self.encoder = ConvNet(in_ch, blocks=blocks, width=width, stem_stride=stem_stride)
            out_dim = self.encoder.out_dim
        elif backbone == "resnet50":                          # the DIR papers' backbone, from scratch
            from torchvision.models import resnet50
            self.encoder = resnet50(weights=None)
            out_dim = self.encoder.fc.in_features
            self.encoder.fc = nn.Identity()
        else:
            raise ValueError(f"unknown backbone {backbone!r}; known: convnet, resnet50")
        self.head = nn.Linear(out_dim, 1)
        self.register_buffer("offset", torch.tensor(float(offset)))
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.noise_sigma = None if noise_sigma is None else nn.Parameter(torch.tensor(float(noise_sigma)))

    def forward(self, x: torch.Tensor):
        f = self.encoder(x)
        return self.offset + self.scale * self.head(f).squeeze(-1), f


def build_model(arch: Mapping, y_train: torch.Tensor, noise_sigma: float | None = None) -> RegressionNet:
    return RegressionNet(**arch, offset=float(y_train.mean()), scale=float(y_train.std()),
                         noise_sigma=noise_sigma)


# ----------------------------------------------------------------------------- data

@dataclass
class DIRData:
    """Train (long-tailed labels), validation and test (uniform labels) images; labels in degrees."""
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    bin_edges: np.ndarray
    info: dict = field(default_factory=dict)

    def counts(self) -> np.ndarray:
        """Training images per label bin."""
        return np.histogram(self.y_train.cpu().numpy(), bins=self.bin_edges)[0]

    def card(self) -> dict:
        """A JSON-able summary for the ledger (`Chapter.use_data`)."""
        return {"name": self.info.get("name", "dsprites-arrow-angle-longtail"),
                "source": self.info.get("source", "replibook.data.procedural.dsprites"),
                "n_train": len(self.y_train), "n_val": len(self.y_val), "n_test": len(self.y_test),
                "x_shape": list(self.x_train.shape[1:]), **self.info}


def make_data(n_train: int, n_test: int, n_val: int = 0, *, decay: float = 15.0, max_label: int = 90,
              size: int = 32, scale_levels: int = 6, pos_levels: int = 8, seed: int = 0,
              device=None) -> DIRData:
    """The chapter's imbalanced angle regression: arrow sprites, target = orientation in whole
    degrees in ``[0, max_label)``; train labels ``p(y) ~ exp(-y / decay)``, validation and test
    labels uniform; scale and position uniform nuisances. Three independent generator seeds."""
    levels = (1, scale_levels, 360, pos_levels, pos_levels)
    common = dict(size=size, levels=levels, shapes=("arrow",), device=device)
    tail = dsprites.exponential_density(360, decay, support=max_label)
    flat = dsprites.uniform_density(360, support=max_label)

    def draw(n, p, s):
        b = dsprites.make(n, seed=s, label_sampler=p, **common)
        return b.x, b.factors[:, 2].float()                       # level index = degrees
    xtr, ytr = draw(n_train, tail, 3 * seed)
    xte, yte = draw(n_test, flat, 3 * seed + 1)
    xva, yva = draw(n_val, flat, 3 * seed + 2) if n_val else (xte[:0], yte[:0])
    return DIRData(xtr, ytr, xva, yva, xte, yte, np.arange(max_label + 1, dtype=float),
                   info=dict(decay=decay, max_label=max_label, size=size, levels=list(levels), seed=seed))


def make_dir_data(dataset: str = "agedb", *, size: int = 224, root=None, max_label: int = 121,
                  limit: int | None = None, device=None) -> DIRData:
    """AgeDB-DIR / IMDB-WIKI-DIR (`replibook.data.real_agedb`) as a `DIRData`: the benchmark's
    train / val / test splits, ages in years, 1-year bins over ``[0, max_label)`` (the DIR code's
    ``max_target = 121``). ``limit`` caps every split (quick looks only)."""
    from ..data.real_agedb import dir_split
    parts = [dir_split(dataset, s, root=root, size=size, limit=limit, device=device)
             for s in ("train", "val", "test")]
    tr, va, te = parts
    return DIRData(tr.x, tr.y, va.x, va.y, te.x, te.y, np.arange(max_label + 1, dtype=float),
                   info=dict(name=f"{dataset}-dir", source="replibook.data.real_agedb", size=size,
                             max_label=max_label))


# ----------------------------------------------------------------------------- arms and training

#: arm name -> (regression loss, uses ConR, overrides of the ConR settings)
ARMS = {
    "Vanilla": ("l1", False, {}), "Vanilla+ConR": ("l1", True, {}),
    "LDS": ("lds", False, {}), "LDS+ConR": ("lds", True, {}),
    "BalancedMSE": ("bmse", False, {}), "BalancedMSE+ConR": ("bmse", True, {}),
    # ablations: equal pushing weights; every far-label pair a negative (no prediction-based selection)
    "Vanilla+ConR (eta=0)": ("l1", True, {"eta": 0.0}),
    "Vanilla+ConR (all negatives)": ("l1", True, {"select_by_prediction": False}),
}


def arm_spec(arm: str) -> tuple[str, bool, dict]:
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; known: {list(ARMS)}")
    return ARMS[arm]


@dataclass
class RunResult:
    model: RegressionNet
    stats: list[dict]                     # per update: ConR batch statistics (ConR arms)
    steps_per_epoch: int
    wall_s: float

    def per_epoch(self, key: str) -> np.ndarray:
        if not self.stats:
            return np.array([])
        v = np.array([s[key] for s in self.stats])
        k = self.steps_per_epoch
        return np.array([v[i:i + k].mean() for i in range(0, len(v), k)])


def train_arm(arm: str, data: DIRData, cfg: Mapping, seed: int, *, beta: float | None = None,
              epochs: int | None = None, device=None, progress: bool = False) -> RunResult:
    """Train one arm. ``cfg`` keys: arch, epochs, batch_size, lr, window, temperature, eta, beta,
    max_shift, noise, lds (dict of lds_weights kwargs), bmse_sigma, code_denominator.

    Every arm trains on one augmented view per image for its regression loss (view 1); ConR arms
    add a second view and apply ConR to the 2B features with the model's own (detached)
    predictions, targets and anchor weights duplicated, as the official trainer does.
    """
    reg_kind, use_conr, over = arm_spec(arm)
    conr_kw = dict(window=cfg["window"], temperature=cfg["temperature"], eta=cfg["eta"],
                   code_denominator=cfg.get("code_denominator", False))
    conr_kw.update(over)
    beta = cfg["beta"] if beta is None else beta
    epochs = cfg["epochs"] if epochs is None else epochs
    torch.manual_seed(seed)
    model = build_model(cfg["arch"], data.y_train,
                        noise_sigma=cfg.get("bmse_sigma", 8.0) if reg_kind == "bmse" else None)
    n = len(data.y_train)
    if reg_kind == "lds":
        w = lds_weights(data.y_train, data.bin_edges, **cfg.get("lds", {}))
    else:
        w = torch.ones(n)
    gen = torch.Generator().manual_seed(10_000 + seed)
    stats: list[dict] = []

    def loss_fn(m, x, y, wb):
        flip = cfg.get("flip", False)
        v1 = translate_noise(x, gen, cfg["max_shift"], cfg["noise"], flip)
        if use_conr:
            v2 = translate_noise(x, gen, cfg["max_shift"], cfg["noise"], flip)
            pred2, feat2 = m(torch.cat([v1, v2]))
            pred = pred2[:len(x)]
        else:
            pred, _ = m(v1)
        if reg_kind == "bmse":
            reg = balanced_mse(pred, y, m.noise_sigma ** 2)
        else:
            reg = (wb * (pred - y).abs()).mean()                  # (weighted) L1
        if not use_conr:
            return reg
        c, st = conr_loss(feat2, torch.cat([y, y]), pred2.detach(),
                          weights=torch.cat([wb, wb]) if reg_kind == "lds" else None,
                          return_stats=True, **conr_kw)
        stats.append(st)
        return reg + beta * c

    steps_per_epoch = math.ceil(n / cfg["batch_size"])
    t0 = time.perf_counter()
    fit(model, (data.x_train, data.y_train, w), steps=epochs * steps_per_epoch, batch_size=cfg["batch_size"],
        lr=cfg["lr"], loss_fn=loss_fn, seed=seed, device=device, progress=progress, desc=arm,
        schedule=cfg.get("schedule"))
    return RunResult(model.eval(), stats, steps_per_epoch, time.perf_counter() - t0)


@torch.no_grad()
def predict_features(model: RegressionNet, x: torch.Tensor, batch_size: int = 250):
    model.eval()
    dev = next(model.parameters()).device
    preds, feats = [], []
    for i in range(0, len(x), batch_size):
        p, f = model(x[i:i + batch_size].to(dev))
        preds.append(p.cpu())
        feats.append(f.cpu())
    return torch.cat(preds), torch.cat(feats)


def per_label_mae(pred: torch.Tensor, y: torch.Tensor, bin_edges: np.ndarray) -> np.ndarray:
    """MAE per label bin (NaN for an empty bin)."""
    e = (pred - y).abs().numpy()
    idx = np.clip(np.digitize(y.numpy(), bin_edges) - 1, 0, len(bin_edges) - 2)
    sums = np.bincount(idx, weights=e, minlength=len(bin_edges) - 1)
    cnt = np.bincount(idx, minlength=len(bin_edges) - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / cnt


def nearest_head_cosine(features: torch.Tensor, y: torch.Tensor, head: np.ndarray, tail: np.ndarray) -> float:
    """Mean over tail samples of the cosine to their nearest head sample (feature collapse check:
    near 1 = tail features sit on top of head features)."""
    z = F.normalize(features, dim=1)
    zt, zh = z[torch.as_tensor(tail)], z[torch.as_tensor(head)]
    if len(zt) == 0 or len(zh) == 0:
        return float("nan")
    return float((zt @ zh.T).max(1).values.mean())


def evaluate(model: RegressionNet, data: DIRData, many: int = 100, few: int = 20, split: str = "test"
             ) -> tuple[dict, torch.Tensor]:
    """MAE over all / many / medium / few label regions, gmean error and the collapse check.
    Returns ``(metrics, predictions)``."""
    x, y = (data.x_test, data.y_test) if split == "test" else (data.x_val, data.y_val)
    pred, feat = predict_features(model, x)
    regions = shot_region_mae(pred, y, data.y_train, data.bin_edges, many=many, few=few)
    out = {f"mae_{k}": float(v) for k, v in regions.items()}
    out["gmean"] = float(gmean_error(pred, y))
    masks = shot_regions(y, data.y_train, data.bin_edges, many=many, few=few)
    out["tail_head_cos"] = nearest_head_cosine(feat, y, np.flatnonzero(masks["many"]),
                                               np.flatnonzero(masks["few"]))
    return out, pred


# ----------------------------------------------------------------------------- plots

def plot_label_histogram(ax, data: DIRData, many: int = 100, few: int = 20, unit: str = "degrees") -> None:
    counts = data.counts()
    centres = data.bin_edges[:-1]
    c_many, c_med, c_few = "#1f77b4", "#ff7f0e", "#d62728"
    colours = np.where(counts > many, c_many, np.where(counts < few, c_few, c_med))
    ax.bar(centres, counts, width=1.0, color=colours, align="edge")
    ax.axhline(many, color="k", lw=0.8, ls="--")
    ax.axhline(few, color="k", lw=0.8, ls=":")
    ax.set_xlabel(f"label ({unit})")
    ax.set_ylabel("training images per label bin")
    test_counts = np.histogram(data.y_test.numpy(), bins=data.bin_edges)[0]
    ax.step(centres, test_counts, where="post", color="k", lw=1, label="test (uniform)")
    ax.legend(handles=[plt_patch(c_many, f"many (> {many})"), plt_patch(c_med, "medium"),
                       plt_patch(c_few, f"few (< {few})")] + ax.get_legend_handles_labels()[0],
              fontsize=8)


def plt_patch(colour: str, label: str):
    from matplotlib.patches import Patch
    return Patch(color=colour, label=label)


def plot_mae_vs_label(ax, curves: Mapping[str, Sequence[np.ndarray]], bin_edges: np.ndarray,
                      smooth: int = 5, unit: str = "degrees") -> None:
    """Per-label test MAE (mean over seeds, moving average over ``smooth`` bins) per arm."""
    centres = bin_edges[:-1] + 0.5
    k = np.ones(smooth) / smooth
    for i, (arm, runs) in enumerate(curves.items()):
        with warnings.catch_warnings():                            # bins without test images: NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            m = np.nanmean(np.stack(runs), axis=0)
        m = np.convolve(np.nan_to_num(m, nan=np.nanmean(m)), k, mode="same")
        ax.plot(centres[smooth // 2: -(smooth // 2) or None], m[smooth // 2: -(smooth // 2) or None],
                label=arm, color=f"C{i // 2}", ls="--" if arm.endswith("ConR") else "-")
    ax.set_xlabel(f"label ({unit})")
    ax.set_ylabel(f"test MAE ({unit}, {smooth}-bin average)")
    ax.legend(fontsize=8)

r"""Chapter `gaussian-ad-pretrained-features`: Rippel, Mertens & Merhof (ICPR 2020), *Modeling the
Distribution of Normal Data in Pre-Trained Deep Features for Anomaly Detection*, arXiv:2005.14140.

The method has no training step. A frozen ImageNet classifier maps every image to the
global-average-pooled outputs :math:`f_l` of its nine levels (stem, seven MBConv stages,
head conv); per level a Gaussian :math:`\mathcal N(\mu_l, \Sigma_l)` is fitted to the
normal training images (Ledoit-Wolf shrinkage), and a test image scores

.. math:: s(x) = \sum_{l} M_l(x), \qquad M_l(x) = \sqrt{(f_l - \mu_l)^\top \Sigma_l^{-1} (f_l - \mu_l)} .

The official code averages the per-level distances (``maha.mean(dim=0)``), which ranks
images identically. The paper's per-level table also reports two simpler distances on
the same features, which this module provides under the same names as the official
``--l2`` / ``--sed`` flags: **Euclidean** (``"euclidean"``, the root-mean-square deviation
from the mean, :math:`\lVert f_l - \mu_l\rVert / \sqrt{D_l}`) and **SED** (``"sed"``,
per-feature standardised, :math:`\lVert (f_l - \mu_l) / \sigma_l\rVert / \sqrt{D_l}`).

Shared pieces: `models.backbones` (Lite0 levels, feature cache), `models.gaussian.MVG`
(Ledoit-Wolf, PCA/NPCA, chi-squared thresholds), `data.procedural.defect_textures`
(MVTec-like data), `models.vae.AE` (the from-scratch baseline), `metrics.anomaly`.
This module holds the chapter's glue: data per category, level-wise fitting and
scoring, the component sweep, the AE baseline, the contrast calibration and the MVTec
AD split of the `full` preset (the reader itself is the shared `data.real.mvtec_ad`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..data.procedural import Bundle
from ..data.procedural import defect_textures
from ..data.real import MVTEC_CATEGORIES, mvtec_ad
from ..models import backbones
from ..models.gaussian import MVG, pca

__all__ = ["DISTANCES", "LEVELS", "VARIANTS", "category_data", "features", "fit_levels", "level_scores",
           "sum_scores", "fit_variants", "evaluate_variants", "evaluate_split", "auroc", "component_sweep", "train_ae", "ae_scores", "achieved_fpr",
           "calibrate_contrast", "choose_contrast", "mvtec_category", "MVTEC_CATEGORIES"]

LEVELS = tuple(range(len(backbones.LEVEL_NAMES)))
# distance name -> MVG covariance (and whether the official code divides by sqrt(D))
DISTANCES = {"mahalanobis": ("ledoit-wolf", False), "sed": ("diag", True), "euclidean": ("identity", True)}


def auroc(scores, labels) -> float:
    """Image-level AUROC (``replibook.metrics.anomaly.auroc``)."""
    from ..metrics.anomaly import auroc as _auroc
    return float(_auroc(scores, labels))


# ----------------------------------------------------------------------------- data

def category_data(category: str, *, n_train: int, n_test_normal: int, n_test_defective: int, seed: int,
                  contrast: float, size: int = 64, train_seed: int = 0,
                  kinds: Sequence[str] = defect_textures.DEFECT_KINDS, device=None) -> tuple[Bundle, Bundle]:
    """One category's normal training crops (fixed draw ``train_seed``) and a test draw ``seed``.

    Train crops come from the white checkerboard tiles, test crops from the black ones
    (`defect_textures`), so the two never share a pixel.
    """
    train = defect_textures.make(n_train, seed=train_seed, size=size, category=category,
                                 defective_fraction=0.0, contrast=contrast, kinds=kinds, split="train",
                                 device=device)
    n_test = n_test_normal + n_test_defective
    test = defect_textures.make(n_test, seed=seed, size=size, category=category,
                                defective_fraction=n_test_defective / n_test, contrast=contrast,
                                kinds=kinds, split="test", device=device)
    return train, test


def features(images: torch.Tensor, backbone: str = "lite0", size: int | None = 128, init_seed: int = 0,
             levels: Sequence[int] = LEVELS, cache: bool = True, device=None) -> dict[int, torch.Tensor]:
    """Pooled level features ``{level: (N, C)}``: ``backbone="lite0"`` (ImageNet weights),
    ``"lite0-random"`` (same architecture, timm's random init ``init_seed``) or ``"effnet_b4"``
    (the paper's EfficientNet-B4, timm ``tf_efficientnet_b4`` weights; `full` size; ``"effnet_b4-random"``
    its random init). Cached on disk."""
    if backbone in ("effnet_b4", "effnet_b4-random"):
        return backbones.timm_features("tf_efficientnet_b4", images, size=size, stages=levels,
                                       pretrained=backbone == "effnet_b4", init_seed=init_seed, cache=cache,
                                       device=device)
    if backbone not in ("lite0", "lite0-random"):
        raise ValueError(f"unknown backbone {backbone!r} (lite0, lite0-random, effnet_b4, effnet_b4-random)")
    return backbones.lite0_features(images, pretrained=backbone == "lite0", init_seed=init_seed, size=size,
                                    stages=levels, cache=cache, device=device)


# ----------------------------------------------------------------------------- the method

def fit_levels(train_feats: Mapping[int, torch.Tensor], distance: str = "mahalanobis",
               project: str | None = None, var: float | None = None,
               n_components: int | None = None) -> dict[int, MVG]:
    r"""One Gaussian per level, fitted on the normal training features ``{level: (N, D_l)}``."""
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose from {list(DISTANCES)}")
    covariance, _ = DISTANCES[distance]
    return {lv: MVG(covariance=covariance, project=project, var=var, n_components=n_components).fit(f)
            for lv, f in train_feats.items()}


def level_scores(models: Mapping[int, MVG], feats: Mapping[int, torch.Tensor],
                 distance: str = "mahalanobis") -> dict[int, torch.Tensor]:
    r"""Per-level anomaly scores ``{level: (N,)}``: :math:`M_l`, or the RMS-normalised SED /
    Euclidean distance (divided by :math:`\sqrt{D_l}`, as the official code)."""
    _, rms = DISTANCES[distance]
    out = {}
    for lv, model in models.items():
        d = model.mahalanobis(feats[lv])
        out[lv] = d / math.sqrt(model.dim) if rms else d
    return out


def sum_scores(scores: Mapping[int, torch.Tensor], levels: Iterable[int] | None = None) -> torch.Tensor:
    r"""The image score :math:`s(x) = \sum_l M_l(x)` over ``levels`` (default: all given)."""
    levels = list(scores) if levels is None else list(levels)
    return torch.stack([scores[lv] for lv in levels]).sum(0)


# the model variants of the paper's tables: its three distances on all features (per-level table)
# and the two principal-subspace variants (PCA/NPCA table), all per level
VARIANTS: dict[str, dict] = {
    "MVG": dict(distance="mahalanobis"),
    "SED": dict(distance="sed"),
    "Euclidean": dict(distance="euclidean"),
    "PCA 99%": dict(distance="mahalanobis", project="pca", var=0.99),
    "NPCA 1%": dict(distance="mahalanobis", project="npca", var=0.01),
}


def fit_variants(train_feats: Mapping[int, torch.Tensor],
                 variants: Mapping[str, Mapping] | Sequence[str] = tuple(VARIANTS)) -> dict[str, dict[int, MVG]]:
    """`fit_levels` for every named variant (names from `VARIANTS`, or ``{name: fit_levels kwargs}``)."""
    specs = {v: VARIANTS[v] for v in variants} if not isinstance(variants, Mapping) else dict(variants)
    return {name: fit_levels(train_feats, **spec) for name, spec in specs.items()}


def evaluate_variants(fitted: Mapping[str, Mapping[int, MVG]], test_feats: Mapping[int, torch.Tensor], labels,
                      variants: Mapping[str, Mapping] | None = None) -> dict[tuple[str, str], float]:
    """AUROC of every fitted variant on every level and on the level sum:
    ``{(variant, "level l" | "sum"): auroc}``."""
    specs = dict(VARIANTS) if variants is None else dict(variants)
    out = {}
    for name, models in fitted.items():
        scores = level_scores(models, test_feats, specs[name].get("distance", "mahalanobis"))
        for lv, s in scores.items():
            out[(name, f"level {lv}")] = auroc(s, labels)
        out[(name, "sum")] = auroc(sum_scores(scores), labels)
    return out


def component_sweep(train_f: torch.Tensor, test_f: torch.Tensor, labels, counts: Sequence[int],
                    mode: str) -> list[float]:
    """AUROC of an MVG fitted on the top (``mode="pca"``) or bottom (``"npca"``) ``k``
    principal components of one level, for every ``k`` in ``counts``."""
    out = []
    for k in counts:
        model = MVG(project=mode, n_components=int(k)).fit(train_f)
        out.append(auroc(model.mahalanobis(test_f), labels))
    return out


def achieved_fpr(model: MVG, normal_feats: torch.Tensor, target: float) -> float:
    r"""Share of normal test samples above the :math:`\chi^2_{D}` threshold set for FPR ``target``."""
    from ..metrics.anomaly import fpr_at_threshold
    scores = model.mahalanobis(normal_feats)
    return float(fpr_at_threshold(scores, torch.zeros(len(scores), dtype=torch.long), model.threshold(target)))


def evaluate_split(train_x: torch.Tensor, test_x: torch.Tensor, labels, *, backbone: str = "lite0",
                   feature_size: int | None = 128, levels: Sequence[int] = LEVELS,
                   variants: Sequence[str] = tuple(VARIANTS),
                   random_backbone: bool = True, init_seed: int = 0, sweep_level: int | None = 8,
                   sweep_counts: Sequence[int] = (), fpr_targets: Sequence[float] = (0.05,),
                   ae: Mapping | None = None, seed: int = 0, fit_cache: dict | None = None,
                   device=None) -> dict[str, dict]:
    """Everything the chapter measures on one (normal training set, test set) pair.

    - ``"auroc"``: ``{(method, setting): AUROC}`` for every variant of `VARIANTS` on the
      pretrained ``backbone`` (settings ``"level l"`` for each of ``levels``, and their ``"sum"``), ``"MVG random-init"``
      (the same architecture untrained, ``init_seed``) and ``"Conv AE"`` (setting ``"image"``;
      ``ae`` holds `train_ae` keywords, None skips it; its init is ``seed``);
    - ``"sweep"``: ``{(mode, k): AUROC}`` at ``sweep_level`` for the top (``"pca"``) or bottom
      (``"npca"``) ``k`` components (counts above the number of components with non-zero
      variance are skipped);
    - ``"fpr"``: ``{(level, target): achieved FPR}`` of the full MVG's chi-squared threshold
      on the normal test images;
    - ``"shrinkage"``, ``"dims"``: Ledoit-Wolf rho per level, dimensions per (variant, level).

    ``fit_cache`` (a dict) memoises fitted models per (backbone, init, training images).
    """
    if random_backbone and backbone.endswith("-random"):
        raise ValueError("random_backbone=True compares against the random init of a pretrained backbone; "
                         f"got backbone {backbone!r}")
    labels = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    cache = {} if fit_cache is None else fit_cache
    train_hash = backbones.data_hash(train_x)

    def fitted_for(bb: str, names: Sequence[str]):
        key = (bb, init_seed, feature_size, train_hash, tuple(levels), tuple(names))
        if key not in cache:
            cache[key] = fit_variants(features(train_x, bb, feature_size, init_seed, levels, device=device), names)
        return cache[key]

    out: dict[str, dict] = {"auroc": {}, "sweep": {}, "fpr": {}, "shrinkage": {}, "dims": {}}
    fitted = fitted_for(backbone, variants)
    test_f = features(test_x, backbone, feature_size, init_seed, levels, device=device)
    out["auroc"].update(evaluate_variants(fitted, test_f, labels))
    for name, models in fitted.items():
        for lv, m in models.items():
            out["dims"][(name, lv)] = m.dim
    if "MVG" in fitted:
        out["shrinkage"] = {lv: m.shrinkage_ for lv, m in fitted["MVG"].items()}
        normal = labels == 0
        for lv, m in fitted["MVG"].items():
            for t in fpr_targets:
                out["fpr"][(lv, float(t))] = achieved_fpr(m, test_f[lv][normal.to(test_f[lv].device)], t)
    if random_backbone:
        rand_bb = f"{backbone}-random"
        rand = fitted_for(rand_bb, ["MVG"])
        rand_scores = evaluate_variants(rand, features(test_x, rand_bb, feature_size, init_seed, levels,
                                                       device=device), labels)
        out["auroc"].update({("MVG random-init", s): v for (_, s), v in rand_scores.items()})
    if sweep_level is not None and sweep_counts:
        if sweep_level not in levels:
            raise ValueError(f"sweep_level {sweep_level} is not among the levels {list(levels)}")
        train_f = features(train_x, backbone, feature_size, init_seed, levels, device=device)[sweep_level]
        n_max = len(pca(train_f)[2])                       # components with non-zero variance
        counts = [int(k) for k in sweep_counts if int(k) <= n_max]
        for mode in ("pca", "npca"):
            for k, a in zip(counts, component_sweep(train_f, test_f[sweep_level], labels, counts, mode)):
                out["sweep"][(mode, k)] = a
    if ae is not None:
        model = train_ae(train_x, seed=seed, **dict(ae))
        out["auroc"][("Conv AE", "image")] = auroc(ae_scores(model, test_x), labels)
    return out


# ----------------------------------------------------------------------------- AE baseline

def train_ae(x_train: torch.Tensor, *, latent_dim: int = 32, epochs: int = 15, batch_size: int = 16,
             lr: float = 1e-3, widths: Sequence[int] = (32, 32, 64, 64), seed: int = 0,
             progress: bool = False):
    """A convolutional autoencoder trained from scratch on normal images (MSE loss).

    ``models.vae.AE`` with a Gaussian likelihood (unit variance: the loss is half the
    summed squared error); ``epochs`` passes over ``x_train``.
    """
    from ..models.vae import AE
    from ..train import fit
    torch.manual_seed(seed)
    model = AE(x_train.shape[1], x_train.shape[-1], latent_dim, widths=widths, likelihood="gaussian")
    steps = max(1, math.ceil(epochs * len(x_train) / batch_size))

    def loss_fn(m, x):
        return 0.5 * ((m(x).out - x) ** 2).flatten(1).sum(1).mean()

    fit(model, (x_train,), steps=steps, batch_size=batch_size, lr=lr, loss_fn=loss_fn, seed=seed,
        progress=progress, desc="conv AE")
    model.eval()
    return model


@torch.no_grad()
def ae_scores(model, x: torch.Tensor, maps: bool = False, batch_size: int = 256) -> torch.Tensor:
    """Reconstruction error: per image (mean squared error, ``(N,)``) or per pixel
    (squared error summed over channels, ``(N, 1, H, W)``) when ``maps``."""
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size].to(dev)
        err = ((model(xb).out - xb) ** 2).sum(1, keepdim=True)
        outs.append((err if maps else err.flatten(1).mean(1)).to(x.device))
    return torch.cat(outs)


# ----------------------------------------------------------------------------- calibration

def calibrate_contrast(contrasts: Sequence[float], *, categories: Sequence[str] = defect_textures.CATEGORIES,
                       seed: int = 100, n_train: int = 120, n_test_normal: int = 40, n_test_defective: int = 40,
                       size: int = 64, feature_size: int | None = 128, target: float = 0.97,
                       device=None) -> dict:
    """Pick the defect ``contrast`` once, on a calibration draw that no reported seed uses.

    For every contrast, the paper's method (Lite0 ImageNet features, Mahalanobis, all
    levels summed) is scored on test draw ``seed``; the chosen contrast is the **largest**
    one whose category-mean AUROC stays below ``target`` (the ceiling guard of the spec).
    Returns ``{"contrast": chosen, "table": {contrast: mean AUROC}}``.
    """
    table = {}
    for c in contrasts:
        aurocs = []
        for cat in categories:
            train, test = category_data(cat, n_train=n_train, n_test_normal=n_test_normal,
                                        n_test_defective=n_test_defective, seed=seed, contrast=c, size=size,
                                        device=device)
            models = fit_levels(features(train.x, "lite0", feature_size))
            s = sum_scores(level_scores(models, features(test.x, "lite0", feature_size)))
            aurocs.append(auroc(s, test.y))
        table[float(c)] = float(np.mean(aurocs))
    return {"contrast": choose_contrast(table, target), "table": table, "seed": seed, "target": target}


def choose_contrast(table: Mapping[float, float], target: float = 0.97) -> float:
    """The largest contrast whose AUROC is below ``target`` (the smallest contrast if none is)."""
    below = [c for c, a in table.items() if a < target]
    return float(max(below) if below else min(table))


# ----------------------------------------------------------------------------- MVTec AD (full size)

def mvtec_category(root: str | Path, category: str, size: int = 380, fold: int | None = 0,
                   n_folds: int = 5) -> dict[str, torch.Tensor]:
    """One MVTec AD category, split as the official code does: the shared reader
    `replibook.data.real.mvtec_ad` with this chapter's defaults (380 px, fold 0 of 5 held out;
    ``fold=None`` keeps all normal training images)."""
    return mvtec_ad(root, category, size=size, fold=fold, n_folds=n_folds)

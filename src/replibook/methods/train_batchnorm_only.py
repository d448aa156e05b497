r"""Chapter `train-batchnorm-only`: Frankle, Schwab & Morcos (2021), *Training BatchNorm and Only
BatchNorm: On the Expressive Power of Random Features in CNNs*, ICLR 2021, arXiv:2003.00152.

The method is a choice of which parameters train: the shared blocks do the
work (`models.resnet.ResNetCIFAR` with option-B shortcuts, `train.freeze` for the
trainable subsets, `analysis.bn` for the gamma statistics). This module holds
the chapter's glue: the OpenLTH-style BatchNorm initialisation, the variants of
the paper's Sec. 3-5 by name, the data per size, one training run, and the figures.
"""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import plots
from ..analysis import bn as bn_analysis
from ..data import Dataset, bundled
from ..metrics.classification import accuracy, nll, predict
from ..models.resnet import ResNetCIFAR
from ..train import History, fit
from ..train.freeze import (count_parameters, freeze_all_but, freeze_all_but_bn,
                            random_k_per_channel)

__all__ = ["init_bn_affine", "VARIANTS", "apply_variant", "build_model", "load_data",
           "train_variant",
           "bn_channel_count", "plot_depth_trend", "plot_variant_bars", "plot_gamma_histograms",
           "gamma_table", "augmented_loss", "pretrained_reference"]

_BN = nn.modules.batchnorm._BatchNorm


def init_bn_affine(model: nn.Module, scheme: str = "uniform", seed: int = 0) -> nn.Module:
    r"""Initialise every BatchNorm's :math:`\gamma, \beta` as OpenLTH does.

    ``"uniform"`` (OpenLTH's default ``batchnorm_init``): :math:`\gamma \sim U[0, 1]`,
    :math:`\beta = 0`. ``"fixed"``: :math:`\gamma = 1, \beta = 0` (torch's default).
    The draw uses its own generator (``seed``), in module order.
    """
    if scheme not in ("uniform", "fixed"):
        raise ValueError(f"unknown BatchNorm init '{scheme}' (uniform, fixed)")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN) and m.affine:
                if scheme == "uniform":
                    m.weight.copy_(torch.rand(m.weight.shape, generator=gen))
                else:
                    m.weight.fill_(1.0)
                m.bias.zero_()
    return model


def bn_channel_count(model: nn.Module) -> int:
    """Total number of BatchNorm channels (each has one gamma and one beta)."""
    return sum(m.num_features for m in model.modules() if isinstance(m, _BN))


_OUTPUT = r"^linear\."

# The paper's trainable subsets (Sec. 3-5, Figs. 2-5): name -> how to pick them.
VARIANTS: dict[str, Callable[[nn.Module, int], list[str]]] = {
    "All": lambda m, s: freeze_all_but(m, r".*"),
    "BN-only": lambda m, s: freeze_all_but_bn(m),
    "Output-only": lambda m, s: freeze_all_but(m, _OUTPUT),
    "BN+Output": lambda m, s: freeze_all_but_bn(m, also=_OUTPUT),
    "Random-2/channel": lambda m, s: random_k_per_channel(m, k=2, seed=s),
    "Gamma-only": lambda m, s: freeze_all_but_bn(m, beta=False),
    "Beta-only": lambda m, s: freeze_all_but_bn(m, gamma=False),
}


def apply_variant(model: nn.Module, variant: str, seed: int = 0) -> int:
    """Freeze ``model`` as ``variant`` (a key of `VARIANTS`); return its trainable count."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant '{variant}' ({', '.join(VARIANTS)})")
    VARIANTS[variant](model, seed)
    return count_parameters(model)


def build_model(depth: int, width: int, dim: int, in_channels: int, num_classes: int = 10,
                bn_init: str = "uniform", seed: int = 0) -> nn.Module:
    """OpenLTH's CIFAR ResNet: `ResNetCIFAR` with 1x1-conv + BN shortcuts (option B), Kaiming-normal
    weights (seeded by ``seed``) and the chosen BatchNorm init."""
    torch.manual_seed(seed)
    model = ResNetCIFAR(depth=depth, num_classes=num_classes, width=width, dim=dim,
                        in_channels=in_channels, norm="batch", act="relu", shortcut="B")
    return init_bn_affine(model, bn_init, seed=seed + 10_000)


def load_data(name: str, seed: int = 0, n_train: int | None = 4000, n_test: int | None = 1000,
              device=None) -> Dataset:
    """``mnist1d`` as ``(N, 1, 40)`` signals (smoke, small), or CIFAR-10 (full; mirror or
    torchvision)."""
    if name == "mnist1d":
        ds = bundled.mnist1d(n_train=n_train or 4000, n_test=n_test or 1000, seed=seed,
                             device=device)
        ds.train.x, ds.test.x = ds.train.x[:, None, :], ds.test.x[:, None, :]
        ds.info["layout"] = "(N, 1, 40): one input channel"
        return ds
    if name == "cifar10":
        from ..data import real
        return real.cifar10(n_train=n_train, n_test=n_test, seed=seed, device=device)
    raise ValueError(f"unknown dataset '{name}' (mnist1d, cifar10)")


def augmented_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on `random_crop_flip`-augmented images (a `fit` ``loss_fn``; full tier)."""
    from ..data.augment import random_crop_flip
    return nn.functional.cross_entropy(model(random_crop_flip(x)), y)


def train_variant(data: Dataset, variant: str, *, depth: int, width: int, steps: int,
                  batch_size: int, lr: float, seed: int, opt: str = "adam",
                  weight_decay: float = 0.0, schedule: str | None = None, bn_init: str = "uniform",
                  eval_every: int | None = None,
                  augment: bool = False, device=None,
                  progress: bool = False) -> tuple[nn.Module, History, int]:
    """Build a ResNet, freeze it as ``variant``, train the rest with `train.fit`.

    The same seed gives the same random weights in every variant, so the variants
    differ only in what trains. Returns ``(model, history, trainable parameter count)``;
    the history has ``test_acc`` and ``test_nll`` (eval mode) at each eval point.
    """
    x_tr = data.train.x
    model = build_model(depth, width, x_tr.dim() - 2, x_tr.shape[1], bn_init=bn_init, seed=seed)
    n_trainable = apply_variant(model, variant, seed=seed)
    x_te, y_te = data.test.x, data.test.y

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, x_te, batch_size=500)
        return {"test_acc": accuracy(logits, y_te), "test_nll": nll(logits, y_te)}

    hist = fit(model, (x_tr, data.train.y), steps=steps, batch_size=batch_size, lr=lr, opt=opt,
               weight_decay=weight_decay, schedule=schedule, eval_fn=evaluate,
               loss_fn=augmented_loss if augment else None,
               eval_every=eval_every or steps, seed=seed, device=device, progress=progress,
               desc=f"{variant} d{depth} s{seed}")
    return model, hist, n_trainable


def pretrained_reference(n_test: int = 2000, device=None) -> tuple[float, dict]:
    """Test accuracy of the published ResNet-20 CIFAR-10 weights (`zoo` entry ``resnet20_cifar10``,
    all parameters trained) on ``n_test`` CIFAR-10 test images (mirror or torchvision copy).

    Returns ``(accuracy, dataset card)``. Needs ``$REPLIBOOK_DATA``; never used at smoke size.
    """
    from .. import zoo
    from ..data import real
    ds = real.cifar10(n_train=10, n_test=n_test, device=device)
    model = zoo.load("resnet20_cifar10", device=device)
    logits = predict(model, zoo.preprocess("resnet20_cifar10", ds.test.x), batch_size=500)
    return accuracy(logits, ds.test.y), ds.card()


# ---------------------------------------------------------------------------- figures

COLOURS = {"All": plots.PALETTE[0], "BN-only": plots.PALETTE[1], "Output-only": plots.PALETTE[6],
           "BN+Output": plots.PALETTE[4], "Random-2/channel": plots.PALETTE[3],
           "Gamma-only": plots.PALETTE[2], "Beta-only": plots.PALETTE[5], "init": plots.PALETTE[7]}


def plot_depth_trend(ax, depths: Sequence[int],
                     per_variant: Mapping[str, Mapping[int, Sequence[float]]],
                     chance: float = 0.1) -> None:
    """Test accuracy (mean ± std over seeds, each seed a dot) against depth, one line per variant.

    ``per_variant[variant][depth] = [acc per seed]``; depths a variant lacks are skipped.
    """
    for variant, by_depth in per_variant.items():
        ds = [d for d in depths if d in by_depth]
        vals = [np.asarray(by_depth[d], dtype=float) for d in ds]
        mean = np.array([v.mean() for v in vals])
        std = np.array([v.std(ddof=1) if v.size > 1 else 0.0 for v in vals])
        colour = COLOURS.get(variant)
        ax.errorbar(ds, mean, yerr=std, marker="o", capsize=3, label=variant, color=colour)
        for d, v in zip(ds, vals):
            ax.scatter(np.full(v.size, d), v, s=10, color=colour, alpha=0.5)
    ax.axhline(chance, color="0.5", ls=":", lw=1, label="chance")
    ax.set_xticks(list(depths))
    ax.set_xlabel("ResNet depth")
    ax.set_ylabel("test accuracy")
    ax.legend()


def plot_variant_bars(ax, variants: Sequence[str], runs: Sequence[Sequence[float]],
                      counts: Sequence[int]) -> None:
    """Bars of test accuracy per variant (each seed a dot), labelled with its trainable count."""
    labels = [f"{v}\n({c:,} params)" for v, c in zip(variants, counts)]
    plots.bar_with_seeds(ax, labels, runs, "test accuracy",
                         colors=[COLOURS.get(v, plots.PALETTE[0]) for v in variants])


def plot_gamma_histograms(ax, groups: Mapping[str, np.ndarray], bins: np.ndarray,
                          threshold: float | None = 0.05) -> None:
    r"""Overlaid density histograms of :math:`|\gamma|` per group (values pooled over seeds).

    ``groups[label] = |gamma| values``; the threshold of the "disabled" count is a dashed line.
    """
    for label, vals in groups.items():
        counts, edges = bn_analysis.gamma_histogram(vals, bins=bins, density=True)
        colour = COLOURS.get(label.split(" ")[0])
        ax.stairs(counts, edges, label=label, color=colour, fill=False, lw=1.5)
    if threshold is not None:
        ax.axvline(threshold, color="0.3", ls="--", lw=1, label=f"|gamma| = {threshold:g}")
    ax.set_xlabel("|gamma|")
    ax.set_ylabel("density")
    ax.legend()


def gamma_table(models: Mapping[str, Sequence[nn.Module]], threshold: float = 0.05) -> pd.DataFrame:
    r"""Per layer: the fraction of :math:`|\gamma| <` ``threshold``, mean over the seeds' models,
    one column per variant (the paper's Fig. 7 per-layer view)."""
    cols = {}
    for variant, ms in models.items():
        frames = [bn_analysis.per_layer_fraction_below(m, threshold)["fraction_below"] for m in ms]
        cols[variant] = pd.concat(frames, axis=1).mean(axis=1)
    return pd.DataFrame(cols)

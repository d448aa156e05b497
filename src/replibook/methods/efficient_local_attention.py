r"""Chapter `efficient-local-attention`: Xu & Wan (2024), *ELA: Efficient Local Attention for
Deep Convolutional Neural Networks*, arXiv:2403.01123 (no official code; implemented from
the paper's description).

Why it exists. Coordinate Attention (CA, Hou et al. 2021) showed that pooling a feature map
along each spatial axis separately ("strip pooling") keeps *where* along that axis a channel
responds, which a global pool (SE) throws away. ELA keeps CA's strip pooling but replaces
its generation step: no channel reduction (CA squeezes C to C/r with a 1x1 convolution),
no BatchNorm (the paper argues BN generalises poorly inside the attention branch), no
concatenation of the two strips. Each strip goes through a shared 1-D convolution along
its own axis, GroupNorm and a sigmoid:

.. math::
    z_h = \frac{1}{W}\sum_{w} X_{:, :, :, w} \in \mathbb{R}^{B\times C\times H},\qquad
    z_w = \frac{1}{H}\sum_{h} X_{:, :, h, :} \in \mathbb{R}^{B\times C\times W}

.. math::
    y_h = \sigma(\mathrm{GN}(F_k * z_h)),\qquad y_w = \sigma(\mathrm{GN}(F_k * z_w)),\qquad
    Y = X \odot y_h \odot y_w

with :math:`F_k` a grouped 1-D convolution of kernel :math:`k` (no bias) shared by the two
strips. The paper's four versions differ in :math:`k`, the convolution's groups and the
GroupNorm groups (T, B for small networks; S, L for ResNets).

The baselines of the paper's comparison live here too (they are generic channel/spatial
attention blocks, candidates for a shared ``models`` module): `SE` (Hu et al. 2018),
`ECA` (Wang et al. 2020) and `CoordAttention` (Hou et al. 2021). Every block maps
``(B, C, H, W) -> (B, C, H, W)`` and plugs into ``ResNetCIFAR(attn=...)``, which applies it
to each residual branch just before the addition.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
import torch.nn.functional as F

from .. import plots
from ..data.augment import random_crop_flip
from ..data import Dataset, Split
from ..errors import DatasetMissing
from ..metrics.classification import accuracy, nll, predict
from ..models.resnet import ResNetCIFAR
from ..train import History, fit

__all__ = [
    "ELA", "SE", "ECA", "CoordAttention", "ELA_VARIANTS", "ela", "ATTENTIONS", "attention_factory",
    "make_resnet", "random_crop_flip", "attention_params", "cpu_latency_ms", "train_classifier",
    "ela_maps",
    "load_cifar100", "load_data", "map_inside_ratio",
]


# ------------------------------------------------------------------------------ ELA

# (kernel size, conv groups as a function of C, GroupNorm groups) of the paper's four versions
# (Sec. 3; values as in the widely used ports of the paper's listing, see the chapter).
ELA_VARIANTS: dict[str, tuple[int, Callable[[int], int], int]] = {
    "T": (5, lambda c: c, 32),
    "B": (7, lambda c: c, 16),
    "S": (5, lambda c: max(1, c // 8), 16),
    "L": (7, lambda c: max(1, c // 8), 16),
}


class ELA(nn.Module):
    r"""Efficient Local Attention: strip pooling, a shared 1-D conv, GroupNorm, sigmoid.

    Args:
        channels: C.
        kernel_size: k of the 1-D convolution (padding k // 2, so the strip length is kept).
        conv_groups: groups of the 1-D convolution (C: depthwise; C // 8: ELA-S/L).
        norm: ``"gn"`` (the paper) or ``"bn"`` (the ablation: BatchNorm1d, as CA uses).
        gn_groups: GroupNorm groups. The paper uses 16 or 32; at the book's widths (16-64
            channels) that would leave 1-2 channels per group, so the default is
            ``min(16, C // 4)`` (4 channels per group at C = 16).

    Shapes: ``x: (B, C, H, W) -> (B, C, H, W)``. ``last_maps`` keeps the last
    ``(y_h (B, C, H), y_w (B, C, W))`` when ``keep_maps`` is True (for the chapter's figure).
    """

    def __init__(self, channels: int, kernel_size: int = 5, conv_groups: int | None = None,
                 norm: str = "gn", gn_groups: int | None = None):
        super().__init__()
        conv_groups = max(1, channels // 8) if conv_groups is None else conv_groups
        if channels % conv_groups:
            raise ValueError(f"ELA: {channels} channels not divisible into {conv_groups} "
                             "conv groups")
        self.conv = nn.Conv1d(channels, channels, kernel_size, padding=kernel_size // 2,
                              groups=conv_groups, bias=False)
        if norm == "gn":
            groups = gn_groups if gn_groups is not None else min(16, max(1, channels // 4))
            self.norm: nn.Module = nn.GroupNorm(groups, channels)
        elif norm == "bn":
            self.norm = nn.BatchNorm1d(channels)
        else:
            raise ValueError(f"ELA: norm must be 'gn' or 'bn', got {norm!r}")
        self.keep_maps = False
        self.last_maps: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z_h = x.mean(dim=3)                                       # strip pool along W: (B, C, H)
        z_w = x.mean(dim=2)                                       # strip pool along H: (B, C, W)
        y_h = torch.sigmoid(self.norm(self.conv(z_h)))            # sigma(GN(F_k * z_h))
        y_w = torch.sigmoid(self.norm(self.conv(z_w)))            # same F_k and GN for z_w
        if self.keep_maps:
            self.last_maps = (y_h.detach(), y_w.detach())
        return x * y_h[..., :, None] * y_w[..., None, :]          # Y = X . y_h . y_w


def ela(variant: str = "S", norm: str = "gn", kernel_size: int | None = None,
        gn_groups: int | None = None) -> Callable[[int], ELA]:
    """``channels -> ELA`` factory for one of the paper's versions ("T", "B", "S", "L").

    GroupNorm groups are capped at ``C // 4`` (see `ELA`); ``kernel_size`` overrides the
    version's kernel (the kernel ablation).
    """
    if variant not in ELA_VARIANTS:
        raise ValueError(f"unknown ELA version {variant!r}; choose from {list(ELA_VARIANTS)}")
    k, groups_of, gn = ELA_VARIANTS[variant]

    def make(channels: int) -> ELA:
        groups = gn_groups if gn_groups is not None else min(gn, max(1, channels // 4))
        return ELA(channels, kernel_size or k, groups_of(channels), norm, groups)

    return make


# ------------------------------------------------------------------------ baselines

class SE(nn.Module):
    r"""Squeeze-and-Excitation (Hu, Shen & Sun 2018): global average pool, two 1x1 layers
    :math:`C \to C/r \to C` with ReLU, sigmoid gate per channel.

    ``hidden = max(min_hidden, C // reduction)``: at the book's widths ``C // 16`` would be
    1-4 units, so a floor of 8 is used (timm does the same by rounding to multiples of 8).
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 8):
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)                          # squeeze: (B, C, 1, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))   # excite: channel gates


class ECA(nn.Module):
    r"""Efficient Channel Attention (Wang et al. 2020): global average pool, a 1-D conv across
    channels with adaptive kernel :math:`k = |\log_2(C)/\gamma + b/\gamma|_{odd}`, sigmoid."""

    def __init__(self, channels: int, gamma: float = 2.0, b: float = 1.0,
                 kernel_size: int | None = None):
        super().__init__()
        if kernel_size is None:
            t = int(abs((math.log2(channels) + b) / gamma))
            kernel_size = t if t % 2 else t + 1
        self.kernel_size = kernel_size
        self.conv = nn.Conv1d(1, 1, kernel_size, padding=kernel_size // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3))[:, None, :]                            # (B, 1, C): channels in a row
        g = torch.sigmoid(self.conv(s))[:, 0, :, None, None]      # local cross-channel interaction
        return x * g


class CoordAttention(nn.Module):
    r"""Coordinate Attention (Hou, Zhou & Feng 2021).

    Strip-pool along W and along H, concatenate the two strips, a shared 1x1 conv
    :math:`C \to m` with ``m = max(min_hidden, C // reduction)``, BatchNorm, h-swish, split,
    and one 1x1 conv :math:`m \to C` + sigmoid per direction:
    :math:`Y = X \odot g_h \odot g_w`.
    """

    def __init__(self, channels: int, reduction: int = 32, min_hidden: int = 8):
        super().__init__()
        hidden = max(min_hidden, channels // reduction)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn = nn.BatchNorm2d(hidden)
        self.conv_h = nn.Conv2d(hidden, channels, 1)
        self.conv_w = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        z_h = x.mean(dim=3, keepdim=True)                           # (B, C, H, 1)
        z_w = x.mean(dim=2, keepdim=True).transpose(2, 3)           # (B, C, W, 1)
        y = F.hardswish(self.bn(self.conv1(torch.cat([z_h, z_w], dim=2))))   # shared transform
        y_h, y_w = torch.split(y, [h, w], dim=2)
        g_h = torch.sigmoid(self.conv_h(y_h))                       # (B, C, H, 1)
        g_w = torch.sigmoid(self.conv_w(y_w.transpose(2, 3)))       # (B, C, 1, W)
        return x * g_h * g_w


# ``channels -> module`` factories by name, as chapters' presets refer to them
ATTENTIONS: dict[str, Callable[[int], nn.Module] | None] = {
    "none": None,
    "SE": SE,
    "ECA": ECA,
    "CA": CoordAttention,
    "ELA-T": ela("T"),
    "ELA-B": ela("B"),
    "ELA-S": ela("S"),
    "ELA-L": ela("L"),
    "ELA-S (BN)": ela("S", norm="bn"),
    "ELA-S (k=3)": ela("S", kernel_size=3),
    "ELA-S (k=7)": ela("S", kernel_size=7),
}


def attention_factory(name: str) -> Callable[[int], nn.Module] | None:
    """The ``channels -> module`` factory registered under ``name`` (None for "none")."""
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; choose from {list(ATTENTIONS)}")
    return ATTENTIONS[name]


# --------------------------------------------------------------------------- network

def make_resnet(attn: str | Callable[[int], nn.Module] | None = None, depth: int = 8,
                width: int = 16, in_channels: int = 1, num_classes: int = 10,
                stem_stride: int = 2) -> ResNetCIFAR:
    """The chapter's network: ``ResNetCIFAR(depth)`` (a 3x3 stem, three stages of basic blocks
    with widths w, 2w, 4w and strides 1, 2, 2) whose stem convolution has stride
    ``stem_stride``; ``attn`` on every residual branch before the addition. ``depth=8``
    (one block per stage) is the small tier's net."""
    factory = attention_factory(attn) if isinstance(attn, str) else attn
    model = ResNetCIFAR(depth=depth, num_classes=num_classes, width=width, in_channels=in_channels,
                        attn=factory)
    if stem_stride != 1:
        model.conv1 = nn.Conv2d(in_channels, width, 3, stride=stem_stride, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight)
    return model


def attention_params(model: nn.Module) -> int:
    """Parameters inside the residual branches' attention modules (0 without attention)."""
    return sum(p.numel() for name, p in model.named_parameters() if ".attn." in name)


@torch.no_grad()
def cpu_latency_ms(model: nn.Module, x: torch.Tensor, repeats: int = 5, warmup: int = 1) -> float:
    """Best-of-``repeats`` wall time (ms) of one eval-mode forward pass on ``x`` (on x's device),
    timed with `replibook.metrics.efficiency.cpu_benchmark`."""
    from ..metrics.efficiency import cpu_benchmark
    was_training = model.training
    model.eval()
    try:
        timing = cpu_benchmark(model, x, repeats=repeats, warmup=warmup)
    finally:
        model.train(was_training)
    return 1000 * timing["min_s"]


def train_classifier(data: Dataset, attn: str, *, steps: int, batch_size: int, lr: float,
                     weight_decay: float, seed: int, depth: int = 8, width: int = 16,
                     stem_stride: int = 2, augment: bool = False, eval_every: int | None = None,
                     device: Any = None, progress: bool = False) -> tuple[nn.Module, History]:
    """One arm: ``make_resnet(attn)`` trained with AdamW (cosine schedule) for ``steps``
    updates; test accuracy and NLL every ``eval_every`` updates. ``augment``: random crops
    (padding 4) and flips per batch (`random_crop_flip`, the CIFAR recipe of the full tier)."""
    torch.manual_seed(seed)
    model = make_resnet(attn, depth=depth, width=width, in_channels=data.train.x.shape[1],
                        num_classes=len(data.classes or range(10)), stem_stride=stem_stride)
    x_te, y_te = data.test.x, data.test.y
    gen = torch.Generator().manual_seed(20_000 + seed)

    def loss_fn(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if augment:
            x = random_crop_flip(x, 4, gen)
        return F.cross_entropy(m(x), y)

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, x_te, batch_size=1000)
        return {"test_acc": accuracy(logits, y_te), "test_nll": nll(logits, y_te)}

    hist = fit(model, (data.train.x, data.train.y), steps=steps, batch_size=batch_size, lr=lr,
               opt="adamw", weight_decay=weight_decay, schedule="cosine", loss_fn=loss_fn,
               eval_fn=evaluate, eval_every=eval_every, seed=seed, device=device,
               progress=progress, desc=f"{attn} s{seed}")
    return model, hist


@torch.no_grad()
def ela_maps(model: nn.Module, x: torch.Tensor, stage: str = "layer1") -> torch.Tensor:
    """Spatial attention ``y_h y_w^T`` of the first ELA block of ``stage``, averaged over
    channels and upsampled to the input size: ``(B, H, W)``."""
    block = getattr(model, stage)[0].attn
    if not isinstance(block, ELA):
        raise ValueError(f"{stage} has no ELA block")
    was_training = model.training
    model.eval()
    block.keep_maps = True
    try:
        model(x)
    finally:
        block.keep_maps = False
        model.train(was_training)
    y_h, y_w = block.last_maps
    maps = (y_h[..., :, None] * y_w[..., None, :]).mean(1, keepdim=True)     # (B, 1, h, w)
    return F.interpolate(maps, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]


# ---------------------------------------------------------------------------- data

def load_data(name: str, *, split: tuple[int, int] = (4000, 1000), canvas: int = 24,
              digit_size: int = 12, epochs: int = 1, seed: int = 0, device: Any = None
              ) -> tuple[Dataset, torch.Tensor | None]:
    """The chapter's classification data and, for cluttered digits, the test digits' top-left
    corners (None otherwise).

    - ``"mnist5k"`` / ``"digits"``: `replibook.data.shifts.cluttered` with 3 clutter crops of
      5 px, noise 0.1 and ``digit_size`` px digits on a ``canvas`` px canvas; ``epochs`` fresh
      placements of every training digit.
    - ``"cifar100"``: CIFAR-100 from disk (`load_cifar100`; full tier).
    """
    if name in ("mnist5k", "digits"):
        from ..data import shifts
        ds, pos = shifts.cluttered(name, canvas=canvas, n_clutter=3, noise=0.1,
                                   digit_size=digit_size, clutter_size=5, split=split,
                                   epochs=epochs, seed=seed, device=device,
                                   return_positions=True)
        return ds, pos["test"]
    if name == "cifar100":
        return load_cifar100(device=device), None
    raise ValueError(f"unknown dataset {name!r} (mnist5k, digits, cifar100)")


# ---------------------------------------------------------------------------- full tier

def load_cifar100(root: str | Path | None = None, device: Any = None) -> Dataset:
    """CIFAR-100 (fine labels), all 50,000/10,000 images: `replibook.data.real.cifar100`."""
    from ..data import real
    return real.cifar100(root=root, device=device)


# ---------------------------------------------------------------------------- reporting

COLOURS = {"none": plots.PALETTE[6], "SE": plots.PALETTE[0], "ECA": plots.PALETTE[5],
           "CA": plots.PALETTE[1], "ELA-S": plots.PALETTE[2], "ELA-S (BN)": plots.PALETTE[3],
           "ELA-T": plots.PALETTE[4]}


def results_table(ch, arms: Sequence[str], params: Mapping[str, int], latency: Mapping[str, float],
                  setting: str) -> pd.DataFrame:
    """Test accuracy (%) mean ± std over seeds, attention parameters and latency per arm."""
    from ..chapter import format_mean_std
    rows = []
    for a in arms:
        acc = ch.values("test_acc", a, setting)
        rows.append({"attention": a,
                     "test accuracy (%)": format_mean_std(acc, 2, 100.0),
                     "test NLL": format_mean_std(ch.values("test_nll", a, setting), 3),
                     "attention params": params[a],
                     "ms / batch of 128": f"{latency[a]:.1f}"})
    return pd.DataFrame(rows).set_index("attention")


def plot_curves(histories: Mapping[str, list[History]], metric: str = "test_acc"):
    """Test accuracy against updates, mean ± std over seeds, one curve per arm."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.8, 3.4))
    for arm, runs in histories.items():
        plots.band(ax, runs[0].steps, [np.asarray(h.metrics[metric]) * 100 for h in runs],
                   label=arm, color=COLOURS.get(arm))
    ax.set_xlabel("parameter updates")
    ax.set_ylabel("test accuracy (%)")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_maps(images: torch.Tensor, maps: torch.Tensor, top_left: torch.Tensor, digit_size: int,
              labels: torch.Tensor, n: int = 8):
    """Cluttered canvases (top) and ELA's y_h y_w map (bottom), the true digit boxed."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    fig, axes = plt.subplots(2, n, figsize=(1.45 * n, 3.1), squeeze=False)
    for i in range(n):
        r, c = (int(v) for v in top_left[i])
        for row, (img, cmap) in enumerate(((images[i, 0], "gray"), (maps[i], "magma"))):
            ax = axes[row, i]
            ax.imshow(img.detach().cpu().numpy(), cmap=cmap)
            ax.add_patch(Rectangle((c - 0.5, r - 0.5), digit_size, digit_size, fill=False,
                                   edgecolor="#66a182", lw=1.4))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
        axes[0, i].set_title(f"label {int(labels[i])}", fontsize=8)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("ELA y_h y_w", fontsize=8)
    fig.tight_layout()
    return fig


def map_inside_ratio(maps: torch.Tensor, top_left: torch.Tensor, digit_size: int) -> float:
    """Mean attention inside the true digit's box divided by the mean outside it (1 = no
    preference for the digit's location), averaged over images."""
    b, h, w = maps.shape
    rows = torch.arange(h, device=maps.device)[None, :, None]
    cols = torch.arange(w, device=maps.device)[None, None, :]
    r0, c0 = top_left[:, 0, None, None], top_left[:, 1, None, None]
    inside = (rows >= r0) & (rows < r0 + digit_size) & (cols >= c0) & (cols < c0 + digit_size)
    m_in = (maps * inside).sum((1, 2)) / inside.sum((1, 2))
    m_out = (maps * ~inside).sum((1, 2)) / (~inside).sum((1, 2)).clamp_min(1)
    return float((m_in / m_out).mean())

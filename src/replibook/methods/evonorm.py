r"""Chapter `evonorm`: Liu, Brock, Simonyan & Le (2020), *Evolving Normalization-Activation Layers*,
NeurIPS 2020, arXiv:2004.02967.

The paper searches a space of small computation graphs (adds, products, square
roots, sigmoids, moments over chosen axes, ...) for a layer that replaces the
usual "normalization followed by ReLU" pair, and finds two layers that it
names EvoNorm-B0 (uses batch statistics) and EvoNorm-S0 (per-example
statistics only). Each layer replaces *both* the norm and the activation.

This module holds the two layers (dimension-agnostic: ``(B, C, *spatial)``
with any number of spatial dims, so a 1-D ResNet can use them), registers them
in :mod:`replibook.models.norm` as ``"evonorm_b0"`` and ``"evonorm_s0"``
(norm-activation layers, ``includes_activation=True``), and the chapter's
experiment glue: data, one training run per (layer, batch size, seed), the
train/eval-mode gap, and the figures.

Where a network has a norm *without* a following activation (the second norm of
a residual block, the projection shortcut), ResNet code asks for the layer with
``apply_act=False``. Following the authors' reference code (tensorflow/tpu,
``resnet_model.evonorm``: "if False, apply an affine transform only"), that
position is then the affine map :math:`\gamma x + \beta` alone, with no
normalization; timm's ``EvoNorm2dB0/S0`` do the same.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import plots
from ..data import Dataset, Split, bundled
from ..metrics.classification import accuracy, nll, predict
from ..models import norm as norm_registry
from ..models.norm import default_num_groups
from ..models.resnet import ResNetCIFAR
from ..train import History, fit

__all__ = ["EvoNormB0", "EvoNormS0", "evonorm_b0_reference", "evonorm_s0_reference", "LAYERS",
           "load_data", "build_model", "scaled_lr", "train_run", "plot_loss_curves",
           "accuracy_table", "LAYER_GRAPHS", "LAYER_LAYOUT", "plot_layer_graph"]


# ----------------------------------------------------------------------------- layers

def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() < 3:
        raise ValueError(f"EvoNorm expects (B, C, *spatial) with at least one spatial dim, "
                         f"got shape {tuple(x.shape)}")
    return tuple(range(2, x.dim()))


def _for_stats(x: torch.Tensor) -> torch.Tensor:
    """``x`` in at least float32: variances of half-precision activations (mixed precision on a
    GPU) are computed in float32, as timm does; float32/float64 inputs are used as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _per_channel(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-channel vector (C,) shaped to broadcast against ``x: (B, C, *S)``."""
    return p.view(1, -1, *([1] * (x.dim() - 2)))


class EvoNormB0(nn.Module):
    r"""EvoNorm-B0 (Liu et al. 2020), batch-dependent; replaces BN + ReLU.

    .. math::
        y = \frac{x}{\max\big(\sqrt{s^2_{b,w,h}(x) + \epsilon},\;
                              v_1 x + \sqrt{s^2_{w,h}(x) + \epsilon}\big)}\,\gamma + \beta

    :math:`s^2_{b,w,h}`: the variance of each channel over the batch and all
    positions (as BatchNorm's); at evaluation its running average is used.
    :math:`s^2_{w,h}`: the variance of each channel of *one* example over its
    positions (instance variance). :math:`v_1, \gamma, \beta` are per channel,
    initialised to 1, 1, 0. There is no separate activation: where
    :math:`v_1 x + \sqrt{\cdot}` wins the max, large negative inputs are
    damped, which acts as the nonlinearity.

    Running variance: ``r <- (1 - momentum) r + momentum * s^2_{b,w,h}`` with the
    *biased* batch variance, as the authors' TF code (``decay = 1 - momentum``,
    0.9 there; torch's BatchNorm convention is ``momentum = 0.1``). timm's
    ``EvoNorm2dB0`` applies the unbiased correction ``n / (n - 1)`` instead;
    ``unbiased_running_var=True`` reproduces that.

    Args:
        num_features: channels C.
        apply_act: False gives the affine map ``gamma x + beta`` only (the
            reference code's ``nonlinearity=False``; used before a residual addition).
        momentum: weight of the new batch variance in the running average.
        eps: added to both variances (1e-5 as the paper's code).

    Shapes: ``x: (B, C, *spatial) -> y: same``; at least one spatial dim.
    """

    includes_activation = True

    def __init__(self, num_features: int, apply_act: bool = True, momentum: float = 0.1,
                 eps: float = 1e-5, unbiased_running_var: bool = False):
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features, self.apply_act = num_features, apply_act
        self.momentum, self.eps, self.unbiased_running_var = momentum, eps, unbiased_running_var
        self.weight = nn.Parameter(torch.ones(num_features))     # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))      # beta
        if apply_act:
            self.v = nn.Parameter(torch.ones(num_features))      # v_1
            self.register_buffer("running_var", torch.ones(num_features))
        else:
            self.register_parameter("v", None)
            self.register_buffer("running_var", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_features:
            raise ValueError(f"EvoNormB0 expects {self.num_features} channels, "
                             f"got {tuple(x.shape)}")
        dims = _reduce_dims(x)
        if self.apply_act:
            xf = _for_stats(x)
            if self.training:
                # s^2_{b,w,h}: per channel, over the batch and all positions (biased)
                batch_var = xf.var(dim=(0, *dims), unbiased=False)
                with torch.no_grad():
                    new = batch_var
                    if self.unbiased_running_var:       # timm's convention: n / (n - 1)
                        n = x.numel() / x.shape[1]
                        new = batch_var * (n / max(n - 1, 1))
                    # r <- (1 - momentum) r + momentum s^2_{b,w,h}
                    self.running_var.lerp_(new.to(self.running_var.dtype), self.momentum)
            else:
                batch_var = self.running_var
            left = torch.sqrt(_per_channel(batch_var, x) + self.eps).to(x.dtype)
            # v_1 x + sqrt(s^2_{w,h} + eps): per example and channel, over positions
            instance_std = torch.sqrt(xf.var(dim=dims, unbiased=False, keepdim=True) + self.eps)
            right = _per_channel(self.v, x) * x + instance_std.to(x.dtype)
            # x / max(left, right)
            x = x / torch.maximum(left, right)
        # y = gamma * (.) + beta
        return x * _per_channel(self.weight, x) + _per_channel(self.bias, x)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, apply_act={self.apply_act}, momentum={self.momentum}, "
                f"eps={self.eps}")


class EvoNormS0(nn.Module):
    r"""EvoNorm-S0 (Liu et al. 2020, its computation graph is the paper's Fig. 1, left),
    batch-independent; replaces GN + ReLU.

    .. math::
        y = \frac{x\,\sigma(v_1 x)}{\sqrt{s^2_{w,h,c/g}(x) + \epsilon}}\,\gamma + \beta

    :math:`s^2_{w,h,c/g}`: the variance over all positions and the channels of a
    group, per example (GroupNorm's statistic, without subtracting the mean from
    :math:`x`). :math:`x\,\sigma(v_1 x)` is a Swish/SiLU with a learnable
    per-channel slope. Every example is normalised on its own, so the output of
    one example never depends on the rest of the batch, and training and
    evaluation compute the same function.

    Args:
        num_features: channels C.
        apply_act: False gives the affine map ``gamma x + beta`` only.
        groups: number of channel groups; None uses
            :func:`replibook.models.norm.default_num_groups` (the largest divisor of C
            that is at most ``min(8, C // 4)``), the same rule as the book's GroupNorm.
            The paper uses 32 groups on ImageNet-width networks.
        eps: added to the group variance.

    Shapes: ``x: (B, C, *spatial) -> y: same``.
    """

    includes_activation = True

    def __init__(self, num_features: int, apply_act: bool = True, groups: int | None = None,
                 eps: float = 1e-5):
        super().__init__()
        groups = default_num_groups(num_features) if groups is None else int(groups)
        if groups < 1 or num_features % groups:
            raise ValueError(f"EvoNormS0: {num_features} channels are not divisible into "
                             f"{groups} groups")
        self.num_features, self.apply_act = num_features, apply_act
        self.groups, self.eps = groups, eps
        self.weight = nn.Parameter(torch.ones(num_features))     # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))      # beta
        if apply_act:
            self.v = nn.Parameter(torch.ones(num_features))      # v_1
        else:
            self.register_parameter("v", None)

    def group_std(self, x: torch.Tensor) -> torch.Tensor:
        """sqrt(s^2_{w,h,c/g} + eps), broadcast back to ``x``'s shape ``(B, C, *S)``."""
        b, c = x.shape[:2]
        grouped = _for_stats(x).reshape(b, self.groups, -1)      # (B, G, C/G * prod(S))
        var = grouped.var(dim=2, unbiased=False, keepdim=True)   # per example and group
        std = torch.sqrt(var + self.eps).to(x.dtype)
        return std.expand(b, self.groups, grouped.shape[2]).reshape(x.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.num_features:
            raise ValueError(f"EvoNormS0 expects {self.num_features} channels, "
                             f"got {tuple(x.shape)}")
        _reduce_dims(x)
        if self.apply_act:
            # x * sigmoid(v_1 x) / sqrt(s^2_{w,h,c/g} + eps)
            x = x * torch.sigmoid(_per_channel(self.v, x) * x) / self.group_std(x)
        # y = gamma * (.) + beta
        return x * _per_channel(self.weight, x) + _per_channel(self.bias, x)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, apply_act={self.apply_act}, groups={self.groups}, "
                f"eps={self.eps}")


def evonorm_b0_reference(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, v: torch.Tensor,
                         batch_var: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """EvoNorm-B0 written out element by element from the paper's equation (tests, the chapter).

    ``x: (B, C, L)``; ``batch_var: (C,)`` to use instead of the batch's own variance (eval mode).
    Slow loops over channels and examples on purpose: an independent check of `EvoNormB0`.
    """
    B, C, L = x.shape
    y = torch.empty_like(x)
    for c in range(C):
        xc = x[:, c, :]
        s2_bwh = ((xc - xc.mean()) ** 2).mean() if batch_var is None else batch_var[c]
        for b in range(B):
            s2_wh = ((xc[b] - xc[b].mean()) ** 2).mean()
            den = torch.maximum(torch.sqrt(s2_bwh + eps), v[c] * xc[b] + torch.sqrt(s2_wh + eps))
            y[b, c] = xc[b] / den * gamma[c] + beta[c]
    return y


def evonorm_s0_reference(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, v: torch.Tensor,
                         groups: int, eps: float = 1e-5) -> torch.Tensor:
    """EvoNorm-S0 written out group by group from the paper's equation (tests, the chapter).

    ``x: (B, C, L)``; channels ``[g C/G, (g+1) C/G)`` form group ``g``.
    """
    B, C, L = x.shape
    per = C // groups
    y = torch.empty_like(x)
    for b in range(B):
        for g in range(groups):
            block = x[b, g * per:(g + 1) * per, :]
            s2 = ((block - block.mean()) ** 2).mean()
            for j in range(per):
                c = g * per + j
                swish = x[b, c] * torch.sigmoid(v[c] * x[b, c])
                y[b, c] = swish / torch.sqrt(s2 + eps) * gamma[c] + beta[c]
    return y


norm_registry.register("evonorm_b0", EvoNormB0, aliases=("evonormb0",), includes_activation=True)
norm_registry.register("evonorm_s0", EvoNormS0, aliases=("evonorms0",), includes_activation=True)

# The chapter's four layers: display name -> (registry name, keyword arguments).
# BN and B0 use the same running-average momentum, so the comparison is fair at batch 8 too.
LAYERS: dict[str, tuple[str, dict[str, Any]]] = {
    "BN-ReLU": ("batch", {"momentum": 0.1}),
    "GN-ReLU": ("group", {}),
    "EvoNorm-B0": ("evonorm_b0", {"momentum": 0.1}),
    "EvoNorm-S0": ("evonorm_s0", {}),
}


# ------------------------------------------------------------------------------- data

def load_data(name: str, seed: int = 0, n_train: int = 4000, n_test: int = 1000,
              device=None) -> Dataset:
    """The chapter's data as channel-first tensors for a ResNet.

    ``mnist1d``: MNIST-1D signals ``(N, 1, 40)`` (smoke and small). ``cifar10``:
    CIFAR-10 through `replibook.data.real` (mirror or torchvision). ``cifar100``:
    CIFAR-100 in torchvision's layout (full).
    """
    if name == "mnist1d":
        ds = bundled.mnist1d(n_train=n_train, n_test=n_test, seed=seed, device=device)
        ds.train.x, ds.test.x = ds.train.x[:, None, :], ds.test.x[:, None, :]
        ds.info["layout"] = "(N, 1, 40): one input channel"
        return ds
    if name == "cifar10":
        from ..data import real
        return real.cifar10(n_train=n_train, n_test=n_test, seed=seed, device=device)
    if name == "cifar100":
        from ..data import real
        return real.cifar100(n_train=n_train, n_test=n_test, seed=seed, device=device)
    raise ValueError(f"unknown dataset '{name}' (mnist1d, cifar10, cifar100)")


# --------------------------------------------------------------------------- training

def build_model(layer: str, depth: int, width: int, dim: int, in_channels: int,
                num_classes: int) -> nn.Module:
    """`ResNetCIFAR` with every "norm + ReLU" pair replaced by ``layer`` (a key of `LAYERS`).

    Option-B shortcuts (1x1 conv + the layer without activation), as the paper's ResNets.
    """
    if layer not in LAYERS:
        raise ValueError(f"unknown layer '{layer}' ({', '.join(LAYERS)})")
    name, kwargs = LAYERS[layer]
    return ResNetCIFAR(depth=depth, num_classes=num_classes, width=width, dim=dim,
                       in_channels=in_channels,
                       norm_act=name, act="relu", shortcut="B", norm_kwargs=kwargs)


def scaled_lr(base_lr: float, batch_size: int, floor: float = 0.005, ref_batch: int = 128) -> float:
    """Linear scaling rule: ``base_lr * batch_size / ref_batch``, not below ``floor``."""
    return max(base_lr * batch_size / ref_batch, floor)


def train_run(data: Dataset, layer: str, *, depth: int, width: int, batch_size: int, steps: int,
              base_lr: float, seed: int, eval_every: int, weight_decay: float = 0.0,
              augment: bool = False, device=None,
              progress: bool = False) -> tuple[nn.Module, History]:
    """One (layer, batch size, seed) run: SGD (momentum 0.9), linearly scaled lr, cosine decay.

    ``augment``: random crop + flip of 2-D images (full tier; see
    `replibook.data.augment.random_crop_flip`).
    Returns the trained model (eval mode) and its `History` (``test_acc``, ``test_nll``).
    """
    from .train_batchnorm_only import augmented_loss
    torch.manual_seed(seed)
    x_tr = data.train.x
    dim = x_tr.dim() - 2
    num_classes = int(data.train.y.max()) + 1
    model = build_model(layer, depth, width, dim, x_tr.shape[1], max(num_classes, 10))
    x_te, y_te = data.test.x, data.test.y

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits = predict(m, x_te, batch_size=500)
        return {"test_acc": accuracy(logits, y_te), "test_nll": nll(logits, y_te)}

    hist = fit(model, (x_tr, data.train.y), steps=steps, batch_size=batch_size,
               lr=scaled_lr(base_lr, batch_size), opt="sgd", weight_decay=weight_decay,
               schedule="cosine", eval_fn=evaluate, eval_every=eval_every, seed=seed, device=device,
               loss_fn=augmented_loss if augment else None,
               progress=progress, desc=f"{layer} bs{batch_size} s{seed}")
    return model, hist


# ---------------------------------------------------------------------------- figures

COLOURS = {"BN-ReLU": plots.PALETTE[1], "GN-ReLU": plots.PALETTE[0], "EvoNorm-B0": plots.PALETTE[3],
           "EvoNorm-S0": plots.PALETTE[2]}


def _smooth(values: Sequence[float], width: int) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if width <= 1 or arr.size < width:
        return arr
    return np.convolve(arr, np.ones(width) / width, mode="valid")


def plot_loss_curves(histories: Mapping[tuple[str, str], list[History]], settings: Sequence[str],
                     titles: Mapping[str, str] | None = None):
    """Training loss (mean over each eval interval) against updates, one panel per batch size,
    one mean ± std band per layer over seeds."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 3.4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for (layer, s), runs in histories.items():
            if s != setting:
                continue
            steps = runs[0].steps[1:]                          # step 0 has no training loss
            plots.band(ax, steps, [h.train_loss[1:] for h in runs], label=layer,
                       color=COLOURS.get(layer))
        ax.set_xlabel("parameter updates")
        ax.set_ylabel("training loss (nats)")
        ax.set_yscale("log")
        ax.set_title((titles or {}).get(setting, setting))
        ax.legend()
    fig.tight_layout()
    return fig


def accuracy_table(ch, layers: Sequence[str], settings: Sequence[str], metric: str = "test_acc",
                   scale: float = 100.0, digits: int = 1) -> pd.DataFrame:
    """``mean ± std`` of ``metric`` over seeds: one row per layer, one column per setting."""
    from ..chapter import format_mean_std
    from ..errors import ReplibookError
    rows = {}
    for layer in layers:
        row = {}
        for s in settings:
            try:
                row[s] = format_mean_std(ch.values(metric, layer, s), digits, scale)
            except ReplibookError:
                row[s] = ""
        rows[layer] = row
    return pd.DataFrame(rows).T


# ------------------------------------------------------------------- computation graphs

# Each layer as a small DAG of the primitive ops of the paper's search space:
# node -> (label, inputs). Drawn by `plot_layer_graph`; the nodes mirror the forward passes above.
LAYER_GRAPHS: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "EvoNorm-B0": {
        "x": ("x", ()), "v1": ("v1", ()),
        "sb": ("sqrt(s2_bwh + eps)", ("x",)),
        "vx": ("v1 * x", ("v1", "x")),
        "si": ("sqrt(s2_wh + eps)", ("x",)),
        "add": ("+", ("vx", "si")),
        "max": ("max", ("sb", "add")),
        "div": ("x / .", ("x", "max")),
        "y": ("gamma * . + beta", ("div",)),
    },
    "EvoNorm-S0": {
        "x": ("x", ()), "v1": ("v1", ()),
        "vx": ("v1 * x", ("v1", "x")),
        "sig": ("sigmoid", ("vx",)),
        "mul": ("x * .", ("x", "sig")),
        "sg": ("sqrt(s2_whc/g + eps)", ("x",)),
        "div": ("/", ("mul", "sg")),
        "y": ("gamma * . + beta", ("div",)),
    },
}


# Hand-placed node positions (x, y in [0, 1]) that keep the drawn edges from crossing boxes.
LAYER_LAYOUT: dict[str, dict[str, tuple[float, float]]] = {
    "EvoNorm-B0": {"x": (0.12, 1.0), "v1": (0.62, 1.0), "sb": (0.33, 0.78), "vx": (0.62, 0.78),
                   "si": (0.9, 0.78), "add": (0.76, 0.58), "max": (0.5, 0.4), "div": (0.12, 0.22),
                   "y": (0.12, 0.02)},
    "EvoNorm-S0": {"x": (0.12, 1.0), "v1": (0.5, 1.0), "vx": (0.5, 0.78), "sg": (0.88, 0.78),
                   "sig": (0.5, 0.58), "mul": (0.25, 0.4), "div": (0.5, 0.22), "y": (0.5, 0.02)},
}


def _depths(graph: Mapping[str, tuple[str, tuple[str, ...]]]) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node: str) -> int:
        if node not in depth:
            parents = graph[node][1]
            depth[node] = 0 if not parents else 1 + max(visit(p) for p in parents)
        return depth[node]

    for node in graph:
        visit(node)
    return depth


def plot_layer_graph(ax, name: str) -> None:
    """Draw ``LAYER_GRAPHS[name]`` top to bottom: inputs at the top, the output at the bottom."""
    graph = LAYER_GRAPHS[name]
    pos = dict(LAYER_LAYOUT.get(name, {}))
    if set(pos) != set(graph):       # no layout: one row per depth, evenly spaced
        depth = _depths(graph)
        levels: dict[int, list[str]] = {}
        for node, d in depth.items():
            levels.setdefault(d, []).append(node)
        for d, nodes in levels.items():
            for i, node in enumerate(nodes):
                pos[node] = ((i + 1) / (len(nodes) + 1), 1 - d / max(max(levels), 1))
    for node, (_, parents) in graph.items():
        for p in parents:
            ax.annotate("", xy=pos[node], xytext=pos[p],
                        arrowprops=dict(arrowstyle="->", color="0.5", shrinkA=12, shrinkB=12))
    for node, (label, parents) in graph.items():
        kind = "input" if not parents else ("output" if node == "y" else "op")
        face = {"input": "#e8f1f8", "op": "#fdf3e1", "output": "#e6f4ea"}[kind]
        ax.text(*pos[node], label, ha="center", va="center", fontsize=8,
                bbox=dict(boxstyle="round,pad=0.3", fc=face, ec="0.4"))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.1, 1.1)
    ax.set_title(name)
    ax.axis("off")

r"""CIFAR-style residual networks (He, Zhang, Ren & Sun 2016, arXiv:1512.03385, Sec. 4.2), 1-D or 2-D.

The CIFAR ResNet of depth :math:`6n+2`: a 3x3 stem convolution with ``w``
channels, three stages of :math:`n` basic blocks with ``w, 2w, 4w`` channels
(the first block of stages 2 and 3 halves the resolution with stride 2), global
average pooling and a linear classifier. A basic block computes

.. math:: y = \mathrm{act}\big(\mathcal{F}(x) + \mathrm{shortcut}(x)\big), \qquad
          \mathcal{F}(x) = \mathrm{N}_2(W_2 * \mathrm{act}(\mathrm{N}_1(W_1 * x)))

where N is the chosen normalization (BatchNorm in the paper). Where the shape
changes, the shortcut is

- option **A** (the paper's CIFAR choice, parameter-free): subsample by 2 and pad
  the new channels with zeros, half of them before and half after the old ones
  (the layout of the published akamaster weights, so they load and work);
- option **B**: 1x1 convolution with stride 2 followed by a norm (OpenLTH, ch. 21).

Parameter names match the akamaster CIFAR-10 checkpoints after stripping
``module.``: ``conv1``, ``bn1``, ``layer{1,2,3}.{k}.{conv1,bn1,conv2,bn2}``,
``layer*.0.shortcut.{0,1}`` (option B) and ``linear``. With ``dim=1`` every
Conv2d becomes Conv1d, so the same network reads sequences ``(B, C, L)``.

``norm`` is any channel-first name of :mod:`replibook.models.norm` (a
norm-activation layer such as EvoNorm replaces each "norm + act" pair; the
activation after the residual addition stays ``act``). ``attn(channels)`` (SE,
ELA, ...) is applied to the residual branch just before the addition.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from .norm import is_channels_last, is_norm_activation, make_act, make_norm

__all__ = ["ResNetCIFAR", "BasicBlock", "TinyResNet", "ShortcutA", "StageResNet", "resnet18_cifar"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d}


def _conv(dim: int, c_in: int, c_out: int, kernel_size: int, stride: int = 1) -> nn.Module:
    if dim not in _CONV:
        raise ValueError(f"dim must be 1 (sequences) or 2 (images), got {dim}")
    return _CONV[dim](c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)


class _NormAct:
    """Builds the (norm, activation) pair at one place of a network, handling norm-activation layers."""

    def __init__(self, norm: Any, act: Any, norm_kwargs: dict[str, Any] | None):
        if norm is not None and is_channels_last(norm):
            raise ValueError(f"norm {norm!r} normalises the last dim (channels-last tokens); conv feature "
                             "maps are channel-first (B, C, *): use 'layer2d', 'group', 'instance' or 'batch'")
        self.norm, self.act, self.kwargs = norm, act, dict(norm_kwargs or {})
        self.fused = is_norm_activation(norm)

    def norm_layer(self, channels: int, with_act: bool) -> nn.Module:
        kw = {"apply_act": with_act, **self.kwargs} if self.fused else self.kwargs
        return make_norm(self.norm, channels, **kw)

    def act_layer(self) -> nn.Module:
        # a norm-activation layer already applied its nonlinearity
        return nn.Identity() if self.fused else make_act(self.act)


class ShortcutA(nn.Module):
    """Option-A shortcut: stride-2 subsampling plus zero channel padding (no parameters).

    ``(B, C_in, *S) -> (B, C_out, *S/stride)``; the ``C_out - C_in`` zero channels are split
    evenly before and after the input channels (the publisher's layout; a pretrained
    network relies on which channels carry the identity).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dim: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError("option-A shortcut cannot reduce channels")
        self.stride, self.dim = stride, dim
        extra = out_channels - in_channels
        self.pad_before, self.pad_after = extra // 2, extra - extra // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[(slice(None), slice(None)) + (slice(None, None, self.stride),) * self.dim]
        if self.pad_before or self.pad_after:
            # F.pad lists dims from the last backwards: (spatial pairs..., channel pair)
            x = F.pad(x, (0, 0) * self.dim + (self.pad_before, self.pad_after))
        return x

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad=({self.pad_before}, {self.pad_after})"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with norms, an optional attention on the branch, and a shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dim: int, norm_act: _NormAct,
                 attn: Callable[[int], nn.Module] | None = None, shortcut: str = "A"):
        super().__init__()
        self.conv1 = _conv(dim, in_channels, out_channels, 3, stride)
        self.bn1 = norm_act.norm_layer(out_channels, with_act=True)
        self.act1 = norm_act.act_layer()
        self.conv2 = _conv(dim, out_channels, out_channels, 3, 1)
        self.bn2 = norm_act.norm_layer(out_channels, with_act=False)
        self.attn = attn(out_channels) if attn is not None else nn.Identity()
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        elif shortcut == "A":
            self.shortcut = ShortcutA(in_channels, out_channels, stride, dim)
        elif shortcut == "B":
            self.shortcut = nn.Sequential(_conv(dim, in_channels, out_channels, 1, stride),
                                          norm_act.norm_layer(out_channels, with_act=False))
        else:
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        # the activation after the addition is always a plain one (not part of any norm layer)
        self.act2 = make_act(norm_act.act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.act1(self.bn1(self.conv1(x)))       # act(N1(W1 * x))
        branch = self.bn2(self.conv2(branch))             # N2(W2 * .)
        branch = self.attn(branch)                        # attention re-weights the branch
        return self.act2(branch + self.shortcut(x))       # act(F(x) + shortcut(x))


class ResNetCIFAR(nn.Module):
    """He et al. (2016) CIFAR ResNet of depth 6n+2 (20, 32, 44, 56, 110, ...).

    Args:
        depth: 6n + 2; n basic blocks per stage.
        num_classes: outputs of the final linear layer.
        width: channels of the first stage (stages have width, 2 width, 4 width).
        dim: 2 for images ``(B, C, H, W)``, 1 for sequences ``(B, C, L)``.
        in_channels: input channels.
        norm: norm name / class / partial (channel-first; see ``models.norm``); None for no norm.
        act: activation name.
        attn: ``callable(channels) -> nn.Module`` applied to each block's residual branch.
        shortcut: "A" (zero-padding, parameter-free) or "B" (1x1 conv + norm).
        norm_kwargs: extra arguments for every norm (e.g. ``{"num_groups": 4}``).
        norm_act: alias of ``norm`` used by the specs (chapters 21, 28): the layer placed at every
            "norm + act" position; a norm-activation layer (EvoNorm) also takes over ``act`` there.

    Init: Kaiming-normal convolution and linear weights, norms at their defaults.

    ``forward(x) -> logits (B, num_classes)``; ``forward(x, return_features=True)`` ->
    ``(logits, features (B, 4 width))``; :meth:`features` gives the pooled features;
    :meth:`stage_outputs` the maps after the stem and after each stage.
    """

    def __init__(self, depth: int = 20, num_classes: int = 10, width: int = 16, dim: int = 2,
                 in_channels: int = 3, norm: str | Callable[..., nn.Module] | None = "batch",
                 act: str | Callable[[], nn.Module] | None = "relu",
                 attn: Callable[[int], nn.Module] | None = None, shortcut: str = "A",
                 norm_kwargs: dict[str, Any] | None = None, norm_act: str | Callable[..., nn.Module] | None = None):
        super().__init__()
        if norm_act is not None:   # the specs' name (components.md): the layer at every "norm + act" place
            norm = norm_act
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), "
                             f"got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        self.depth, self.dim, self.width = depth, dim, width
        self.blocks_per_stage = (depth - 2) // 6
        norm_act = _NormAct(norm, act, norm_kwargs)
        self.conv1 = _conv(dim, in_channels, width, 3)
        self.bn1 = norm_act.norm_layer(width, with_act=True)
        self.act1 = norm_act.act_layer()
        channels = width
        for stage, (out_channels, stride) in enumerate(((width, 1), (2 * width, 2), (4 * width, 2)), start=1):
            blocks = []
            for k in range(self.blocks_per_stage):
                blocks.append(BasicBlock(channels, out_channels, stride if k == 0 else 1, dim, norm_act,
                                         attn=attn, shortcut=shortcut))
                channels = out_channels
            self.add_module(f"layer{stage}", nn.Sequential(*blocks))
        self.num_features = channels
        self.linear = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def stage_outputs(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """Feature maps after the stem and after each stage: ``stem (B,w,*S)``, ``layer1 (B,w,*S)``,
        ``layer2 (B,2w,*S/2)``, ``layer3 (B,4w,*S/4)``."""
        outs: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.act1(self.bn1(self.conv1(x)))
        outs["stem"] = x
        for name in ("layer1", "layer2", "layer3"):
            x = getattr(self, name)(x)
            outs[name] = x
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled last-stage features ``(B, 4 width)``."""
        return self.stage_outputs(x)["layer3"].flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.linear(feats)
        return (logits, feats) if return_features else logits


class StageResNet(nn.Module):
    """He et al.'s ImageNet ResNet layout with a CIFAR stem: stages of basic blocks, the first
    block of every stage after the first halving the resolution, option-B shortcuts (a learned
    projection suits training from scratch), one 3x3 stride-1 stem convolution and no max-pool
    (as in the SimCLR / SupCon CIFAR code).

    ``blocks`` gives the basic blocks per stage; ``widths`` their channels (default
    ``width * 2**i``: 64-128-256-512 for ResNet-18). ``forward(x) -> logits (B, num_classes)``,
    ``forward(x, return_features=True)`` -> ``(logits, features (B, widths[-1]))``;
    :meth:`features` gives the pooled features and :meth:`stage_outputs` the maps after the stem
    and after each stage. ``dim=1`` makes it read sequences ``(B, C, L)``; ``attn(channels)``
    is applied to each residual branch. Randomly initialised (Kaiming-normal convolutions and
    linear layers); there are no pretrained weights.
    """

    def __init__(self, blocks: Sequence[int] = (2, 2, 2, 2), width: int = 64, num_classes: int = 10,
                 in_channels: int = 3, norm: str | Callable[..., nn.Module] | None = "batch",
                 act: str | None = "relu", norm_kwargs: dict[str, Any] | None = None,
                 widths: Sequence[int] | None = None, dim: int = 2, attn: Callable[[int], nn.Module] | None = None):
        super().__init__()
        if not blocks or any(int(b) < 1 for b in blocks):
            raise ValueError(f"blocks must be positive counts per stage, got {tuple(blocks)}")
        widths = [width * 2 ** i for i in range(len(blocks))] if widths is None else list(widths)
        if len(widths) != len(blocks):
            raise ValueError(f"need {len(blocks)} widths, got {widths}")
        self.dim = dim
        norm_act = _NormAct(norm, act, norm_kwargs)
        self.conv1 = _conv(dim, in_channels, widths[0], 3)          # CIFAR stem: 3x3, stride 1
        self.bn1 = norm_act.norm_layer(widths[0], with_act=True)
        self.act1 = norm_act.act_layer()
        channels = widths[0]
        self.num_stages = len(blocks)
        for i, (n, out) in enumerate(zip(blocks, widths), start=1):
            layers = [BasicBlock(channels if k == 0 else out, out, (1 if i == 1 else 2) if k == 0 else 1, dim,
                                 norm_act, attn=attn, shortcut="B") for k in range(int(n))]
            self.add_module(f"layer{i}", nn.Sequential(*layers))
            channels = out
        self.num_features = channels
        self.linear = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def stage_outputs(self, x: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        outs: OrderedDict[str, torch.Tensor] = OrderedDict()
        x = self.act1(self.bn1(self.conv1(x)))
        outs["stem"] = x
        for i in range(1, self.num_stages + 1):
            x = getattr(self, f"layer{i}")(x)
            outs[f"layer{i}"] = x
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage_outputs(x)[f"layer{self.num_stages}"].flatten(2).mean(dim=2)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.linear(feats)
        return (logits, feats) if return_features else logits


class TinyResNet(StageResNet):
    """A small ResNet for patches and small images: one basic block per stage, each stage after
    the first halving the size; ``widths`` default 16, 32, 64, 128 (a `StageResNet` with
    ``blocks = (1,) * stages``). Same interface as :class:`ResNetCIFAR`.
    """

    def __init__(self, stages: int = 4, widths: Sequence[int] | None = None, num_classes: int = 10,
                 dim: int = 2, in_channels: int = 3, norm: str | Callable[..., nn.Module] | None = "batch",
                 act: str | None = "relu", attn: Callable[[int], nn.Module] | None = None,
                 norm_kwargs: dict[str, Any] | None = None):
        widths = list(widths) if widths is not None else [16 * 2 ** i for i in range(stages)]
        if len(widths) != stages:
            raise ValueError(f"need {stages} widths, got {widths}")
        super().__init__(blocks=(1,) * stages, widths=widths, num_classes=num_classes, in_channels=in_channels,
                         norm=norm, act=act, norm_kwargs=norm_kwargs, dim=dim, attn=attn)


def resnet18_cifar(num_classes: int = 10, width: int = 64, in_channels: int = 3, blocks: Sequence[int] = (2, 2, 2, 2),
                   norm: str | Callable[..., nn.Module] | None = "batch") -> StageResNet:
    """ResNet-18 for 32x32 images (11.2 M parameters at ``width=64``, 512-d features): four
    stages of two basic blocks, 3x3 stride-1 stem, no max-pool. ``width`` / ``blocks`` shrink it
    for tests (e.g. ``width=4, blocks=(1, 1)``)."""
    return StageResNet(blocks=blocks, width=width, num_classes=num_classes, in_channels=in_channels, norm=norm)

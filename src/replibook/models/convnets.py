"""Small convolutional networks shared by chapters and zoo entries.

- `DigitsCNN`: a fixed two-block CNN for 28x28 digits (the zoo's digit classifier).
- `ConvNet`: the book's generic small CNN (components.md, section 5), for images
  (``dim=2``) and signals (``dim=1``): ``blocks`` stages of conv3x3 -> norm -> ReLU ->
  max-pool 2, the width doubling at each stage, then a global average pool to a
  feature vector of ``out_dim = width * 2**(blocks - 1)``. It is a feature extractor
  (no classifier): chapters put a head from `replibook.models.heads` on top.
- `NIN`: a Network-in-Network (Lin et al. 2014) feature extractor as RotNet (Gidaris et
  al. 2018) uses it: blocks of conv kxk + conv1x1 + conv1x1, each BN + ReLU, pooling
  after the first two blocks, every block's map available for block-wise probes.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .norm import make_norm

__all__ = ["DigitsCNN", "ConvNet", "NIN"]


class DigitsCNN(nn.Module):
    """Small CNN for 28x28 digits: two conv blocks, a 32-d embedding, a linear classifier (about 55k params).

    block = 3x3 conv with stride 2 -> BatchNorm -> ReLU (a strided conv instead of conv +
    max-pool: 4x fewer activations to normalise, which dominates CPU time at this size);
    then flatten -> Linear -> ReLU (the ``features``) -> Linear (logits). Inputs are images in
    [0, 1] ``(B, 1, S, S)``; the fixed MNIST standardisation (mean 0.1307, std 0.3081)
    is part of the model so callers never have to remember it.
    """

    def __init__(self, image_size: int = 28, width: int = 16, feature_dim: int = 32, num_classes: int = 10):
        super().__init__()
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size}")
        self.register_buffer("input_mean", torch.tensor(0.1307))
        self.register_buffer("input_std", torch.tensor(0.3081))

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                                 nn.BatchNorm2d(c_out), nn.ReLU())

        self.block1 = block(1, width)
        self.block2 = block(width, 2 * width)
        self.embed = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim),
                                   nn.ReLU())
        self.linear = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding ``(B, feature_dim)`` (FID-lite features)."""
        x = (x - self.input_mean) / self.input_std
        return self.embed(self.block2(self.block1(x)))

    def forward(self, x: torch.Tensor, return_features: bool = False):
        feats = self.features(x)
        logits = self.linear(feats)
        return (logits, feats) if return_features else logits


class ConvNet(nn.Module):
    """Stacked conv -> norm -> ReLU -> max-pool blocks and a global average pool.

    Block ``i`` (0-based) has ``width * 2**i`` channels::

        x (B, C, S[, S]) --[conv k3 p1 (stride stem_stride in block 0) -> norm -> ReLU
                            -> max-pool 2 (ceil mode)] x blocks--> (B, out_dim, S', [S'])
                         --global average pool--> (B, out_dim)

    Args:
        in_ch: input channels.
        blocks: number of conv blocks (>= 1).
        width: channels of the first block; each later block doubles them.
        dim: 2 for images ``(B, C, H, W)``, 1 for signals ``(B, C, L)``.
        norm: any name of `replibook.models.norm` (``"bn"``, ``"gn"``, ``"ln2d"``, ``"none"``, ...),
            a class or a callable ``(channels) -> module``. Convolutions followed by a norm
            have no bias (the norm's shift replaces it).
        stem_stride: stride of the first convolution (2 halves the input once more, for large
            inputs).
        return_blocks: if True, ``forward`` returns ``(features, [block outputs])``, the
            per-block maps after pooling (for hooks, CAMs, stitching, layer-wise probes).

    Pooling uses ``ceil_mode=True`` so an odd or 1-pixel side never makes a map vanish.
    ``out_dim`` is the feature size.
    """

    def __init__(self, in_ch: int, blocks: int = 3, width: int = 32, dim: int = 2,
                 norm: str | Callable[..., nn.Module] | None = "bn", stem_stride: int = 1,
                 return_blocks: bool = False):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"ConvNet needs at least one block, got {blocks}")
        if dim not in (1, 2):
            raise ValueError(f"dim must be 1 or 2, got {dim}")
        if stem_stride < 1:
            raise ValueError(f"stem_stride must be >= 1, got {stem_stride}")
        conv = nn.Conv2d if dim == 2 else nn.Conv1d
        pool = nn.MaxPool2d if dim == 2 else nn.MaxPool1d
        has_norm = not (norm is None or (isinstance(norm, str) and norm.lower() in ("none", "identity")))
        self.dim, self.return_blocks = dim, return_blocks
        self.widths = [width * 2 ** i for i in range(blocks)]
        stages = []
        c_in = in_ch
        for i, c_out in enumerate(self.widths):
            stages.append(nn.Sequential(
                conv(c_in, c_out, 3, stride=stem_stride if i == 0 else 1, padding=1, bias=not has_norm),
                make_norm(norm, c_out), nn.ReLU(), pool(2, ceil_mode=True)))
            c_in = c_out
        self.blocks = nn.ModuleList(stages)
        self.out_dim = self.widths[-1]

    def forward(self, x: torch.Tensor):
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        features = x.flatten(2).mean(-1)               # global average pool: (B, out_dim)
        return (features, maps) if self.return_blocks else features


class NIN(nn.Module):
    """Network-in-Network blocks with per-block outputs (RotNet's backbone, simplified).

    Block ``i`` (0-based)::

        conv kxk (k = kernel[i]) -> norm -> ReLU -> conv1x1 -> norm -> ReLU
        -> conv1x1 -> norm -> ReLU [-> pool 2x2 stride 2, only after blocks 0 and 1]

    All blocks have ``width`` channels (the official CIFAR NIN uses 192, with 160/96 in the
    1x1 convs of block 0; ``first_widths`` sets those). The paper's network pools 3x3 with
    stride 2 (max after block 1, average after block 2); here ``pool="max"|"avg"|"official"``
    picks 2x2 max pooling for both, 2x2 average for both, or the official max/avg pair with
    3x3 windows (stride 2, padding 1: 32 -> 16 -> 8 px). ``pool_blocks`` (0-based) says which blocks pool
    (default the first two; ``()`` for a single-block conv head on a feature map).

    ``forward`` returns ``(features, [block maps])`` when ``return_blocks`` (the default:
    block-wise probes are what this net is for), else the features: the global average
    pool of the last block ``(B, width)``. Block maps are taken *after* the block's pooling,
    as in the official code's feature taps (``conv1`` .. ``conv4``).

    Args:
        in_ch: input channels.
        blocks: number of NIN blocks (>= 1).
        width: channels of every conv (except ``first_widths``).
        kernel: spatial kernel of each block's first conv, an int or a per-block sequence
            (official CIFAR NIN: 5, 5, 3, 3, ...).
        first_widths: ``(c_1x1_a, c_1x1_b)`` channels of block 0's 1x1 convs (None: width).
        norm: any `replibook.models.norm` name; convs followed by a norm have no bias.
        pool: ``"max"``, ``"avg"`` or ``"official"`` (see above).
        pool_blocks: 0-based indices of the blocks followed by pooling.
        num_classes: if given, a linear classifier on the pooled features is added and
            ``forward`` returns logits in place of the features (the pretext head).
    """

    def __init__(self, in_ch: int, blocks: int = 4, width: int = 32, kernel: int | Sequence[int] = 3,
                 first_widths: tuple[int, int] | None = None,
                 norm: str | Callable[..., nn.Module] | None = "bn", pool: str = "max",
                 num_classes: int | None = None, return_blocks: bool = True,
                 pool_blocks: Sequence[int] = (0, 1)):
        super().__init__()
        if blocks < 1:
            raise ValueError(f"NIN needs at least one block, got {blocks}")
        if pool not in ("max", "avg", "official"):
            raise ValueError(f"pool must be 'max', 'avg' or 'official', got {pool!r}")
        kernels = [kernel] * blocks if isinstance(kernel, int) else list(kernel)
        if len(kernels) != blocks or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernel must be an odd int or {blocks} odd ints, got {kernel!r}")
        has_norm = not (norm is None or (isinstance(norm, str) and norm.lower() in ("none", "identity")))

        def unit(c_in: int, c_out: int, k: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=not has_norm), make_norm(norm, c_out), nn.ReLU()]

        stages, c_in = [], in_ch
        self.widths = []
        for i in range(blocks):
            c_a, c_b = first_widths if (i == 0 and first_widths is not None) else (width, width)
            layers = unit(c_in, width, kernels[i]) + unit(width, c_a, 1) + unit(c_a, c_b, 1)
            if i in tuple(pool_blocks):
                if pool == "official":
                    cls = nn.MaxPool2d if i == 0 else nn.AvgPool2d
                    layers.append(cls(3, stride=2, padding=1))
                else:
                    layers.append((nn.MaxPool2d if pool == "max" else nn.AvgPool2d)(2, ceil_mode=True))
            stages.append(nn.Sequential(*layers))
            self.widths.append(c_b)
            c_in = c_b
        self.blocks = nn.ModuleList(stages)
        self.out_dim = self.widths[-1]
        self.return_blocks = return_blocks
        self.classifier = nn.Linear(self.out_dim, num_classes) if num_classes is not None else None

    def block_maps(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """The maps of blocks ``1..upto`` (1-based; None: all), computing no further block."""
        maps = []
        for block in self.blocks[: len(self.blocks) if upto is None else upto]:
            x = block(x)
            maps.append(x)
        return maps

    def forward(self, x: torch.Tensor):
        maps = self.block_maps(x)
        out = maps[-1].flatten(2).mean(-1)             # global average pool: (B, out_dim)
        if self.classifier is not None:
            out = self.classifier(out)
        return (out, maps) if self.return_blocks else out

"""Image augmentations as batched tensor ops that run on the device."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["random_crop_flip", "patch_mask"]


def random_crop_flip(x: torch.Tensor, pad: int = 4, generator: torch.Generator | None = None) -> torch.Tensor:
    """The standard CIFAR augmentation on a batch ``(B, C, H, W)``: reflect-pad by ``pad``,
    crop back to the original size at a random offset per image, and flip half of the
    images left-right. Random numbers come from ``generator`` (CPU) or torch's global
    generator; 1-D signals ``(B, C, L)`` are returned unchanged.
    """
    if x.dim() != 4:
        return x
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect") if pad else x
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(x.device)
    flip = torch.rand(b, generator=generator).to(x.device) < 0.5
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]        # (B, 1, H, 1)
    cols = dx[:, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]         # (B, 1, 1, W)
    idx = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx, chans, rows, cols]


def patch_mask(x: torch.Tensor, ratio: float, patch: int, generator: torch.Generator | None = None,
               fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random patch masking (MAE-style) of a batch of images, independently per image.

    The image is cut into non-overlapping ``patch`` x ``patch`` squares; in every image
    exactly ``floor(ratio * n_patches)`` of them, drawn uniformly without replacement, are
    set to ``fill`` in all channels (the masking of MRDD's masked cross-view prediction,
    ch. 03, and of masked-image modelling).

    Args:
        x: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``patch``.
        ratio: fraction of patches to mask, in [0, 1].
        patch: side of a square patch in pixels.
        generator: CPU generator for the draw (default: torch's global one).
        fill: value written into masked patches.
    Returns:
        ``(masked x (B, C, H, W), mask (B, H // patch, W // patch) bool, True = masked)``.
        ``mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)`` is the pixel mask.
    """
    if x.dim() != 4:
        raise ValueError(f"patch_mask expects (B, C, H, W), got shape {tuple(x.shape)}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    b, _, h, w = x.shape
    if patch < 1 or h % patch or w % patch:
        raise ValueError(f"patch {patch} does not tile a {h}x{w} image")
    gh, gw = h // patch, w // patch
    n = gh * gw
    k = int(math.floor(ratio * n + 1e-9))               # exact count per image
    order = torch.rand(b, n, generator=generator).argsort(dim=1)   # a random permutation per row
    mask = torch.zeros(b, n, dtype=torch.bool)
    mask.scatter_(1, order[:, :k], True)
    mask = mask.view(b, gh, gw).to(x.device)
    pixels = mask.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, None]   # (B, 1, H, W)
    return torch.where(pixels, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x), mask

"""Image augmentations as batched tensor ops that run on the device."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["random_crop_flip"]


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

r"""Masked autoencoder (He et al. 2022, "Masked Autoencoders Are Scalable Vision Learners") on `TinyViT`.

The encoder sees only the *visible* patches: a random ``mask_ratio`` of the patch tokens is
dropped per image before the transformer runs (their Sec. 3, "MAE encoder"). A light decoder
gets the encoded visible tokens plus a shared learned mask token at every dropped position,
adds its own position embeddings, and predicts the pixels of every patch; the loss is the
mean squared error over the *masked* patches only, optionally against per-patch normalised
pixels (``norm_pix``, their default for the best representations)::

    loss = sum_{masked i} mean_j (pred_ij - target_ij)^2 / #masked

`encode_visible` can stop after ``upto`` blocks: the partial teacher execution of DMAE
(ch. 66), where a teacher only runs up to the block it is aligned at.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .vit import TinyViT, TransformerBlock, _init_weights

__all__ = ["MAE", "MAEOutput", "patchify", "unpatchify", "random_masking", "encode_visible"]


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, C, H, W) -> (B, N, patch*patch*C)`` in the raster order of `PatchEmbed` (row by row);
    each row lists a patch's pixels row-major with channels last."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image {(h, w)} is not divisible by the patch size {patch}")
    gh, gw = h // patch, w // patch
    x = x.reshape(b, c, gh, patch, gw, patch).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(b, gh * gw, patch * patch * c)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of `patchify`: ``(B, N, patch*patch*C) -> (B, C, H, W)``."""
    b = tokens.shape[0]
    gh, gw = grid
    x = tokens.reshape(b, gh, gw, patch, patch, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * patch, gw * patch)


def random_masking(batch: int, num_patches: int, ratio: float, generator: torch.Generator | None = None,
                   device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random subset of patches per image to keep, by argsort of uniform noise (MAE's shuffle).

    Keeps ``round(num_patches * (1 - ratio))`` patches (at least 1). Returns ``(ids_keep (B, K),
    ids_restore (B, N), mask (B, N) float, 1 = masked)``; ``ids_restore`` undoes the shuffle
    (``ids_shuffle.gather(1, ids_restore) == arange``).
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    keep = max(1, int(round(num_patches * (1 - ratio))))
    noise = torch.rand(batch, num_patches, generator=generator).to(device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    ids_keep = ids_shuffle[:, :keep]
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    return ids_keep, ids_restore, mask.gather(1, ids_restore)


def encode_visible(vit: TinyViT, x: torch.Tensor, ids_keep: torch.Tensor | None = None,
                   upto: int | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``vit``'s encoder on the kept patches only (all patches when ``ids_keep`` is None).

    Position embeddings are added *before* dropping tokens, so a kept patch carries its true
    position; the CLS token (if any) is always kept. ``upto``: run only the first ``upto``
    blocks (and skip the final norm). Returns ``(tokens (B, prefix + K, dim), [block outputs])``
    — tokens after the final norm when every block ran.
    """
    tokens = vit.patch_embed(x)                                     # (B, N, D)
    prefix = vit.num_prefix_tokens
    if vit.pos_embed is not None:
        tokens = tokens + vit.pos_embed[:, prefix:prefix + tokens.shape[1]]
    if ids_keep is not None:
        tokens = tokens.gather(1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
    if vit.cls_token is not None:
        cls = vit.cls_token + (vit.pos_embed[:, :1] if vit.pos_embed is not None else 0)
        tokens = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    blocks = vit.encoder.blocks
    n = len(blocks) if upto is None else upto
    if not 0 <= n <= len(blocks):
        raise ValueError(f"upto must be in [0, {len(blocks)}], got {upto}")
    layers = []
    for block in blocks[:n]:
        tokens, _ = block(tokens)
        layers.append(tokens)
    if n == len(blocks):
        tokens = vit.encoder.norm(tokens)
    return tokens, layers


@dataclass
class MAEOutput:
    loss: torch.Tensor                 # scalar: MSE over masked patches
    pred: torch.Tensor                 # (B, N, patch*patch*C) predicted (normalised) pixels
    mask: torch.Tensor                 # (B, N), 1 = masked
    ids_keep: torch.Tensor             # (B, K)
    latent: torch.Tensor               # (B, prefix + K, dim) encoder output
    layers: list[torch.Tensor]         # encoder block outputs on the visible tokens


class MAE(nn.Module):
    """A masked autoencoder around a `TinyViT` encoder (its classification head is unused).

    Args:
        encoder: the `TinyViT` to pre-train (``cls=True`` recommended, as in MAE).
        dec_dim, dec_depth, dec_heads: the decoder transformer (MAE uses a narrow, shallow one).
        mask_ratio: fraction of patches dropped per image (0.75 in the paper).
        norm_pix: predict per-patch standardised pixels (mean 0, variance 1 within each patch).
    ``forward(x, mask_ratio=None, generator=None, ids_keep=None)`` -> `MAEOutput`.
    """

    def __init__(self, encoder: TinyViT, dec_dim: int = 64, dec_depth: int = 1, dec_heads: int = 4,
                 mask_ratio: float = 0.75, norm_pix: bool = True, mlp_ratio: float = 2.0):
        super().__init__()
        self.encoder, self.mask_ratio, self.norm_pix = encoder, mask_ratio, norm_pix
        self.patch = encoder.patch_embed.patch
        self.grid = encoder.grid
        self.num_patches = self.grid[0] * self.grid[1]
        self.in_chans = encoder.patch_embed.proj.in_channels
        prefix = encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder.dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, prefix + self.num_patches, dec_dim))
        self.decoder_blocks = nn.ModuleList(TransformerBlock(dec_dim, dec_heads, mlp_ratio)
                                            for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, self.patch * self.patch * self.in_chans)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            module.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """The per-patch regression target ``(B, N, patch*patch*C)``."""
        t = patchify(x, self.patch)
        if self.norm_pix:
            mean, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True)
            t = (t - mean) / (var + 1e-6).sqrt()
        return t

    def decode(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Encoded visible tokens + mask tokens at the dropped positions -> per-patch predictions."""
        prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        b, kept = x.shape[0], x.shape[1] - prefix
        fill = self.mask_token.expand(b, self.num_patches - kept, -1)
        body = torch.cat([x[:, prefix:], fill], dim=1)
        body = body.gather(1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))   # back to raster order
        x = torch.cat([x[:, :prefix], body], dim=1) + self.decoder_pos
        for block in self.decoder_blocks:
            x, _ = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, prefix:]

    def forward(self, x: torch.Tensor, mask_ratio: float | None = None,
                generator: torch.Generator | None = None,
                masking: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> MAEOutput:
        """``masking`` reuses a `random_masking` draw (DMAE's teacher and student share one)."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        ids_keep, ids_restore, mask = masking or random_masking(x.shape[0], self.num_patches, ratio,
                                                                generator, x.device)
        latent, layers = encode_visible(self.encoder, x, ids_keep)
        pred = self.decode(latent, ids_restore)
        per_patch = ((pred - self.target(x)) ** 2).mean(-1)                     # (B, N)
        loss = (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
        return MAEOutput(loss, pred, mask, ids_keep, latent, layers)

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

`sincos_pos_embed` gives MAE's fixed 2-D sine-cosine position embeddings (``MAE(..., pos="sincos")``),
and `load_official_vit` reads a checkpoint of the official MAE code (timm ViT keys) into a `TinyViT`.
"""
from __future__ import annotations

from dataclasses import dataclass

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .vit import TinyViT, TransformerBlock, _init_weights

__all__ = ["MAE", "MAEOutput", "patchify", "unpatchify", "random_masking", "encode_visible",
           "sincos_pos_embed", "official_to_tinyvit", "load_official_vit"]


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
                 mask_ratio: float = 0.75, norm_pix: bool = True, mlp_ratio: float = 2.0,
                 pos: str = "learned", norm_eps: float = 1e-5):
        super().__init__()
        if pos not in ("learned", "sincos"):
            raise ValueError(f"pos must be 'learned' or 'sincos', got {pos!r}")
        self.encoder, self.mask_ratio, self.norm_pix = encoder, mask_ratio, norm_pix
        self.patch = encoder.patch_embed.patch
        self.grid = encoder.grid
        self.num_patches = self.grid[0] * self.grid[1]
        self.in_chans = encoder.patch_embed.proj.in_channels
        prefix = encoder.num_prefix_tokens
        self.decoder_embed = nn.Linear(encoder.dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.decoder_pos = nn.Parameter(torch.zeros(1, prefix + self.num_patches, dec_dim))
        self.decoder_blocks = nn.ModuleList(TransformerBlock(dec_dim, dec_heads, mlp_ratio,
                                                             norm_kwargs={"eps": norm_eps})
                                            for _ in range(dec_depth))
        self.decoder_norm = nn.LayerNorm(dec_dim, eps=norm_eps)
        self.decoder_pred = nn.Linear(dec_dim, self.patch * self.patch * self.in_chans)
        for module in (self.decoder_embed, self.decoder_blocks, self.decoder_pred):
            module.apply(_init_weights)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos, std=0.02)
        if pos == "sincos":
            # MAE's fixed (not learned) embeddings, encoder and decoder; fine-tuning may unfreeze them
            if encoder.pos_embed is None:
                raise ValueError("pos='sincos' needs an encoder with position embeddings")
            with torch.no_grad():
                encoder.pos_embed.copy_(sincos_pos_embed(encoder.dim, self.grid, prefix))
                self.decoder_pos.copy_(sincos_pos_embed(dec_dim, self.grid, prefix))
            encoder.pos_embed.requires_grad_(False)
            self.decoder_pos.requires_grad_(False)

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


# --------------------------------------------------------------------------- fixed positions, official checkpoints

def sincos_pos_embed(dim: int, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    r"""MAE's 2-D sine-cosine position embeddings ``(1, prefix + H W, dim)`` (prefix rows are zero).

    Half the channels encode the column, half the row of a patch (raster order), each as
    :math:`[\sin(p\,\omega_k), \cos(p\,\omega_k)]` with :math:`\omega_k = 10000^{-k/(D/4)}`,
    :math:`k = 0..D/4-1` (the Transformer's encoding per axis).
    """
    if dim % 4:
        raise ValueError(f"sincos position embeddings need dim divisible by 4, got {dim}")
    gh, gw = grid
    rows, cols = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def axis(p: torch.Tensor) -> torch.Tensor:
        angles = p.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([axis(cols), axis(rows)], dim=1)
    emb = torch.cat([torch.zeros(prefix, dim, dtype=torch.float64), emb], dim=0)
    return emb.float().unsqueeze(0)


_BLOCK_RENAMES = {"mlp.fc1.": "mlp.0.", "mlp.fc2.": "mlp.3."}


def official_to_tinyvit(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the encoder keys of an official MAE / timm ViT state dict to `TinyViT`'s.

    ``blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`` -> ``encoder.blocks.i.{..., mlp.0,
    mlp.3}``, ``norm`` -> ``encoder.norm``; ``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``fc_norm``
    and ``head`` keep their names (qkv is fused in both, same q/k/v order). The MAE decoder
    (``decoder_*``, ``mask_token``) and anything else is dropped.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in ("cls_token", "pos_embed") or key.startswith(("patch_embed.proj.", "fc_norm.", "head.")):
            out[key] = value
        elif key.startswith("norm."):
            out["encoder." + key] = value
        elif re.match(r"blocks\.\d+\.", key):
            new = key
            for old, rep in _BLOCK_RENAMES.items():
                new = new.replace(old, rep)
            out["encoder." + new] = value
    return out


#: the official MAE checkpoints this book can read (https://github.com/facebookresearch/mae)
OFFICIAL_CHECKPOINTS = {
    "mae_pretrain_vit_base.pth": "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
    "mae_pretrain_vit_large.pth": "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_large.pth",
    "mae_visualize_vit_large.pth": "https://dl.fbaipublicfiles.com/mae/visualize/mae_visualize_vit_large.pth",
    "mae_finetuned_vit_large.pth": "https://dl.fbaipublicfiles.com/mae/finetune/mae_finetuned_vit_large.pth",
}


def _checkpoint_path(name: str | Path, root: str | Path | None) -> Path:
    from ..errors import DatasetMissing
    from ..runtime import data_dir
    path = Path(name).expanduser()
    if not path.is_absolute():
        base = Path(root).expanduser() if root is not None else data_dir()
        if base is None:
            raise DatasetMissing(f"MAE checkpoint {name} not found: REPLIBOOK_DATA is not set; put it at "
                                 f"$REPLIBOOK_DATA/mae/{path.name} ({_how(path.name)})")
        path = base / "mae" / path
    if not path.is_file():
        raise DatasetMissing(f"MAE checkpoint {path.name} not found at {path} (REPLIBOOK_DATA/mae/{path.name}); "
                             f"{_how(path.name)}")
    return path


def _how(name: str) -> str:
    url = OFFICIAL_CHECKPOINTS.get(name)
    where = f"download it from {url}" if url else "see https://github.com/facebookresearch/mae for the checkpoints"
    return f"{where} (official MAE release, https://github.com/facebookresearch/mae)"


_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def load_official_vit(name: str | Path, *, root: str | Path | None = None, heads: int | None = None,
                      map_location: Any = "cpu", **kwargs: Any) -> TinyViT:
    """A `TinyViT` holding the encoder of an official MAE checkpoint (``{"model": state_dict}``).

    ``name``: a file name looked up as ``<root or $REPLIBOOK_DATA>/mae/<name>``, or a path. The
    architecture is read off the weights (width, depth, patch, image size, channels, MLP ratio,
    qkv bias, classifier); ``heads`` is not stored and defaults to ViT's (12 for B, 16 for L/H).
    A fine-tuned checkpoint (``fc_norm`` present: global average pooling) gives ``pool="mean"``,
    no final norm and ``fc_norm``; a pre-trained one gives CLS pooling and no head. LayerNorm eps
    is 1e-6 and GELU exact, as in the official models. Missing file: `DatasetMissing` naming it,
    ``REPLIBOOK_DATA`` and the download link. ``kwargs`` override the TinyViT arguments.
    """
    path = _checkpoint_path(name, root)
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, Mapping) else ckpt
    state = official_to_tinyvit(state)
    w = state["patch_embed.proj.weight"]
    dim, in_chans, patch = w.shape[0], w.shape[1], w.shape[-1]
    depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.blocks."))
    n_tokens = state["pos_embed"].shape[1] - 1
    side = int(round(n_tokens ** 0.5))
    hidden = state["encoder.blocks.0.mlp.0.weight"].shape[0]
    global_pool = "fc_norm.weight" in state
    num_classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    arch = dict(img_size=side * patch, patch=patch, in_chans=in_chans, num_classes=num_classes, dim=dim,
                depth=depth, heads=heads or _HEADS.get(dim, max(1, dim // 64)), mlp_ratio=hidden / dim,
                norm_kwargs={"eps": 1e-6}, qkv_bias="encoder.blocks.0.attn.qkv.bias" in state,
                pool="mean" if global_pool else "cls", final_norm=not global_pool, fc_norm=global_pool)
    arch.update(kwargs)
    vit = TinyViT(**arch)
    if not arch["final_norm"]:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.norm.")}
    vit.load_state_dict(state, strict=True)
    return vit.eval()
